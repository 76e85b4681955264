"""The ``captioning`` task of `mmw2s eval`: a captioner captions a benchmark's images and is scored
the way captioning papers score it (`caption_metrics`: COCO metrics, CLIPScore, CHAIR).

Any captioner kind works (BLIP, VisionEncoderDecoder, prompted VLMs, trained captioning students):
the task calls ``write_captions(images, **decoding)`` with the recorded decoding of
``captioning.*`` (beam search by default, as captioning papers decode).

Resumable: images are captioned in chunks of ``captioning.chunk_size``; each finished chunk is
written atomically to ``OUT/MODEL__BENCH.chunks/NNNNN.json`` with its captions and CLIP cosines,
stamped with a fingerprint of the model, decoding, CLIP model and image ids. A killed eval, run
again, reuses every chunk whose fingerprint matches and captions the rest. The predictions file
``OUT/MODEL__BENCH.predictions.json`` is the COCO results format (``[{image_id, caption}]``), so
any stock scorer can recompute the metrics.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from mmw2s.data_pipelines.benchmark_types import Benchmark, Example
from mmw2s.data_pipelines.caption_benchmarks import COCO_SYNONYMS, CaptionBenchmark, CaptionItem
from mmw2s.data_pipelines import write_json_atomic
from mmw2s.evaluate import caption_metrics as CM
from mmw2s.evaluate.common import Skipped, batched
from mmw2s.evaluate.config import CaptioningConfig
from mmw2s.evaluate.scorers import Scorer

log = logging.getLogger(__name__)
SHOWN = 5  # (prediction, references) examples kept in the result's details


def decoding_of(cfg: CaptioningConfig) -> dict[str, Any]:
    """The generate() arguments the captions are written with (recorded in the result)."""
    out: dict[str, Any] = {"method": cfg.method, "max_new_tokens": cfg.max_new_tokens,
                           "min_new_tokens": cfg.min_new_tokens}
    if cfg.method == "beam":
        out["num_beams"] = cfg.num_beams
    if cfg.method == "nucleus":
        out["top_p"] = cfg.top_p
    return out


def evaluate_captioning(scorer: Scorer, bench: Benchmark, examples: Iterable[Example], settings) -> tuple[dict, dict]:
    """Caption every image (resuming finished chunks), write the predictions, compute the metrics.

    Reads ``bench.items`` (the first ``settings.limit``) rather than ``examples``, so that finished
    chunks are skipped without decoding their images.
    """
    if not isinstance(bench, CaptionBenchmark):
        raise ValueError(f"{bench.name}: the captioning task needs a caption benchmark (world:captioning, "
                         "coco:..., wds-captions:...)")
    if not getattr(scorer, "can_caption", False):
        raise Skipped(f"{type(scorer).__name__} does not write captions")
    cfg = settings.captioning or CaptioningConfig()
    items = bench.items[:settings.limit] if settings.limit else bench.items
    clip, clip_note = clip_model(cfg, settings.device)
    base = Path(settings.result_file).with_suffix("") if settings.result_file else None
    stamp = {"model": scorer.pretrained, "decoding": decoding_of(cfg), "clip": clip_note, "prefix": cfg.clip_prefix}
    chunks, reused = [], 0
    for k, start in enumerate(range(0, len(items), cfg.chunk_size)):
        part = list(range(start, min(start + cfg.chunk_size, len(items))))
        chunk, was_done = run_chunk(scorer, bench, part, k, cfg, clip, stamp, settings.batch_size,
                                    base.with_name(base.name + ".chunks") if base else None)
        chunks.append(chunk)
        reused += was_done
    predictions = [p for c in chunks for p in c["predictions"]]
    if base is not None:
        write_json_atomic(base.with_name(base.name + ".predictions.json"), predictions)
    metrics, details = score(items, chunks, cfg, bench)
    details.update(decoding=decoding_of(cfg), clip_model=clip_note, chunks=len(chunks), chunks_reused=reused,
                   predictions_file=str(base.with_name(base.name + ".predictions.json")) if base else None)
    return metrics, details


def run_chunk(scorer: Scorer, bench: CaptionBenchmark, part: list[int], k: int, cfg: CaptioningConfig,
              clip: Any, stamp: dict, batch_size: int, folder: Path | None) -> tuple[dict, bool]:
    """One chunk's captions and CLIP cosines: read back when done with the same fingerprint, else made
    and written atomically. Returns (chunk, was it reused)."""
    ids = [bench.items[i].image_id for i in part]
    fingerprint = hashlib.sha256(json.dumps({**stamp, "ids": ids}, sort_keys=True, default=str).encode()).hexdigest()
    path = folder / f"{k:05d}.json" if folder else None
    if path is not None and path.is_file():
        done = json.loads(path.read_text())
        if done.get("fingerprint") == fingerprint:
            return done, True
        log.warning("%s was made with other settings: captioned again", path)
    captions, image_cos, ref_cos = [], [], []
    for batch in batched(bench.images(part), batch_size):
        indices, images = [i for i, _ in batch], [im for _, im in batch]
        written = write_captions(scorer, images, cfg, seed=cfg.seed + k)
        captions += written
        if clip is not None:
            cos = clip_cosines(clip, images, written, [bench.items[i].references for i in indices], cfg.clip_prefix)
            image_cos += cos["image_cos"].tolist()
            ref_cos += cos["ref_cos"].tolist()
    chunk = {"fingerprint": fingerprint, "predictions": [{"image_id": i, "caption": c} for i, c in zip(ids, captions)],
             "image_cos": image_cos, "ref_cos": ref_cos}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, chunk)
    return chunk, False


def write_captions(scorer: Scorer, images: list, cfg: CaptioningConfig, seed: int) -> list[str]:
    """One caption per image with the recorded decoding (a scorer without ``write_captions``
    writes its own default captions)."""
    writer = getattr(scorer, "write_captions", None)
    if writer is None:
        return scorer.caption(images)
    decoding = decoding_of(cfg)
    return writer(images, **decoding, seed=seed if cfg.method == "nucleus" else None)


# --------------------------------------------------------------------------------------------
# CLIPScore model


def clip_model(cfg: CaptioningConfig, device: str = "auto") -> tuple[Any, str]:
    """The open_clip model of CLIPScore and its description; (None, why) when there is none."""
    if cfg.clip is None and not cfg.clip_path:
        return None, "none (captioning.clip=null)"
    arch = cfg.clip.arch if cfg.clip else None
    pretrained = cfg.clip.pretrained if cfg.clip else None
    note = cfg.clip_path or f"{arch}" + (f" ({pretrained})" if pretrained else " (random weights)")
    try:
        return _load_clip(arch, pretrained, cfg.clip_path, device), note
    except Exception as exn:  # noqa: BLE001 - offline hubs raise many kinds; the result says why
        log.warning("CLIPScore model %s could not be loaded: %s", note, exn)
        return None, f"unavailable: {note} could not be loaded ({type(exn).__name__}: {str(exn)[:200]})"


@functools.lru_cache(maxsize=2)
def _load_clip(arch: str | None, pretrained: str | None, path: str | None, device: str) -> Any:
    """Built once per process and reused by every (captioner, benchmark) pair."""
    from mmw2s.evaluate.adapters import resolve_device
    from mmw2s.models.dual_encoders import DualEncoder, build_dual_encoder
    from mmw2s.models.specs import DualEncoderSpec

    dual = DualEncoder.load(path, arch=arch) if path else build_dual_encoder(DualEncoderSpec(arch=arch, pretrained=pretrained))
    dual.model.to(resolve_device(device)).eval()
    return dual


@torch.no_grad()
def clip_cosines(dual: Any, images: list, captions: list[str], refs: list[list[str]], prefix: str) -> dict:
    """Clipped cosines of each image and of its references with its caption (`caption_metrics.clip_scores`)."""
    img = dual.encode_image(dual.preprocess(images)).float().cpu()  # (B, D)
    cand = dual.encode_text([prefix + c for c in captions]).float().cpu()  # (B, D)
    flat = [r for rs in refs for r in rs]
    ref = dual.encode_text([prefix + r for r in flat]).float().cpu().split([len(rs) for rs in refs])
    return CM.clip_scores(img, cand, list(ref))


# --------------------------------------------------------------------------------------------
# Metrics


def score(items: list[CaptionItem], chunks: list[dict], cfg: CaptioningConfig,
          bench: CaptionBenchmark) -> tuple[dict, dict]:
    """COCO metrics, CLIPScore / RefCLIPScore, CHAIR over every image; what is missing says why."""
    preds = {p["image_id"]: p["caption"] for c in chunks for p in c["predictions"]}
    refs = {it.image_id: it.references for it in items}
    coco = CM.coco_caption_scores(refs, preds, spice=cfg.spice)
    metrics: dict[str, Any] = dict(coco.metrics)
    unavailable = dict(coco.unavailable)
    image_cos = torch.tensor([v for c in chunks for v in c["image_cos"]])
    if len(image_cos) == len(items):
        ref_cos = torch.tensor([v for c in chunks for v in c["ref_cos"]])
        clip_s = CM.CLIP_W * image_cos
        metrics["clip_score"] = clip_s.mean().item()
        metrics["ref_clip_score"] = CM.harmonic_mean(clip_s, ref_cos).mean().item()
    else:
        metrics["clip_score"] = metrics["ref_clip_score"] = None
        unavailable["clip_score"] = "no CLIP model (see clip_model)"
    details: dict[str, Any] = {"images": len(items), "tokenizer": coco.tokenizer, "unavailable": unavailable}
    chair_counts = chair_of(items, preds, bench, cfg)
    if chair_counts is None:
        metrics["chair_i"] = metrics["chair_s"] = None
        unavailable["chair"] = "the benchmark has no object annotations (COCO instances file, the world's truth)"
    else:
        metrics["chair_i"], metrics["chair_s"] = chair_counts.pop("chair_i"), chair_counts.pop("chair_s")
        details["chair"] = chair_counts
    details["examples"] = [{"image_id": it.image_id, "prediction": preds[it.image_id], "references": it.references[:3]}
                           for it in items[:SHOWN]]
    return metrics, details


def chair_of(items: list[CaptionItem], preds: dict, bench: CaptionBenchmark, cfg: CaptioningConfig) -> dict | None:
    """CHAIR where objects are annotated. An image's truth is its annotated objects plus the objects
    its references name (Rohrbach et al.'s rule: a reference-confirmed object is no hallucination)."""
    if not bench.categories or any(it.objects is None for it in items):
        return None
    synonyms = Path(cfg.chair_synonyms) if cfg.chair_synonyms else COCO_SYNONYMS
    vocab = CM.ChairVocab.from_file(synonyms, bench.categories)
    truths = [set(it.objects) | {o for r in it.references for o in vocab.objects(r)} for it in items]
    counts = CM.chair([preds[it.image_id] for it in items], truths, vocab)
    return {**counts, "synonyms": str(synonyms), "categories": len(bench.categories)}
