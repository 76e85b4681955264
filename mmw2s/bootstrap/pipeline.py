"""CapFilt as generator stages over a stream of shard events (webdataset's style).

The stream holds `Batch` objects (`BatchEvent`), then `OutputSample`s (`DecidedEvent`), plus the
`Skip` and `ShardEnd` records of shard I/O, which every stage passes through unchanged so that the
writer can count each shard exactly:

    events -> batch_stage (in data-loader workers: PIL -> tensors, batches within one shard)
           -> caption_stage (captioner)  -> score_stage (filter)  -> decide_stage (thresholds)
           -> `OutputSample`s, written per shard by `mmw2s.bootstrap.writer`

Each stage takes plain callables, so its logic is testable on `iter([...])` with fakes.

Determinism: a batch never crosses a shard boundary and a shard is always cut into batches the
same way (its samples arrive in tar order, from one worker), so a batch is identified by its
shard and its first key. Sampling for a batch is seeded from (seed, shard, first key): a sample's
synthetic captions do not depend on worker count, rank count or the resume point.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from mmw2s.data_pipelines import Event, ShardEnd, Skip, shard_name
from mmw2s.models.captioners.protocol import MARKUP, EncodedImage

from mmw2s.bootstrap.thresholds import Thresholds

Preprocess = Callable[[list], dict]  # PIL images -> model inputs (tensors) for the batch
CaptionFn = Callable[[dict, int], list[list[str]]]  # (inputs, seed) -> captions per image
ScoreFn = Callable[[dict, list[list[str]]], list[list[float]]]  # (inputs, texts per image) -> scores


@dataclass
class Batch:
    """Consecutive good samples of ONE input shard, with what the stages add to them."""

    url: str
    samples: list[dict]  # shard I/O's `DecodedSample`s, without the decoded PIL image
    inputs: dict = field(default_factory=dict)  # preprocessed tensors, e.g. {"captioner": (B,C,H,W)}
    curation: list[dict] | None = None  # per sample: its `curation.py` verdict (curated runs only)
    synthetic: list[list[str]] | None = None  # per sample: N synthetic captions
    web_scores: list[float] | None = None
    synthetic_scores: list[list[float]] | None = None
    truncated: list[list[bool]] | None = None  # per sample: [web, *synthetic] cut by the filter

    @property
    def keys(self) -> list[str]:
        return [s["__key__"] for s in self.samples]

    def pin_memory(self) -> "Batch":
        """Page-locked input tensors (the DataLoader calls this with `pin_memory=True`)."""
        self.inputs = {k: _pinned(v) for k, v in self.inputs.items()}
        return self

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class OutputSample:
    """One decided sample: what `writer.ShardOutputs` counts, records in the parquet and, unless
    `drop`, writes (as `members()`)."""

    key: str
    url: str  # its input shard
    drop: bool  # nothing kept and `nothing_kept == "drop"`: counted and recorded, never written
    image_ext: str
    image_bytes: bytes
    json: dict  # the input's JSON plus the `mmw2s` block
    txt: str  # the chosen caption, or the web caption of a flagged sample

    def members(self) -> dict:
        """The webdataset sample `ShardWriter` writes: `__key__` and the members by extension."""
        return {"__key__": self.key, self.image_ext: self.image_bytes, "json": self.json, "txt": self.txt}


# What the stages pass on: before the decisions, and after them.
BatchEvent = Batch | Skip | ShardEnd
DecidedEvent = OutputSample | Skip | ShardEnd


def _pinned(value: Any) -> Any:
    """A tensor, or a dict of them (a prompted VLM's processor output), in page-locked memory."""
    if isinstance(value, dict):
        return {k: _pinned(v) for k, v in value.items()}
    return value.pin_memory() if hasattr(value, "pin_memory") else value


# --------------------------------------------------------------------------------------------
# In the data-loader workers


def batch_stage(events: Iterable[Event], batch_size: int, preprocess: Preprocess) -> Iterator[BatchEvent]:
    """Group good samples into `Batch`es of one shard each and preprocess their images.

    A shard's last batch is flushed when its `ShardEnd` arrives, before the `ShardEnd` itself.
    A sample whose image the preprocessor rejects becomes a `Skip("preprocess_error")`.
    """
    pending: list[dict] = []
    for item in events:
        if isinstance(item, dict) and pending and item["__url__"] != pending[0]["__url__"]:
            yield from _flush(pending, preprocess)  # not expected from shard I/O, but never mix
            pending = []
        if isinstance(item, dict):
            pending.append(item)
            if len(pending) >= batch_size:
                yield from _flush(pending, preprocess)
                pending = []
            continue
        if isinstance(item, ShardEnd) and pending:
            yield from _flush(pending, preprocess)
            pending = []
        yield item
    if pending:
        yield from _flush(pending, preprocess)


def _flush(samples: list[dict], preprocess: Preprocess) -> Iterator[Batch | Skip]:
    """Preprocess a batch; on failure retry one by one so that one bad image costs one sample."""
    try:
        inputs = preprocess([s["image"] for s in samples])
        yield Batch(samples[0]["__url__"], [_without_image(s) for s in samples], inputs)
        return
    except Exception:  # noqa: BLE001 - decoded images can still be unusable (e.g. 1x1 pixels)
        if len(samples) == 1:
            s = samples[0]
            yield Skip(s["__url__"], s["__key__"], "preprocess_error")
            return
    good = []
    for s in samples:
        try:
            preprocess([s["image"]])
            good.append(s)
        except Exception as exn:  # noqa: BLE001 - see above
            yield Skip(s["__url__"], s["__key__"], "preprocess_error", f"{type(exn).__name__}: {exn}")
    if good:
        # The survivors still form one batch, so batch boundaries stay a function of the shard.
        yield Batch(good[0]["__url__"], [_without_image(s) for s in good],
                    preprocess([s["image"] for s in good]))


def _without_image(sample: dict) -> dict:
    # The PIL image is not needed after preprocessing; dropping it keeps worker->main IPC small.
    return {k: v for k, v in sample.items() if k != "image"}


# --------------------------------------------------------------------------------------------
# In the main process (the models)


def batch_seed(seed: int, batch: Batch) -> int:
    """The sampling seed of a batch: a hash of (run seed, shard name, first key), 63 bits."""
    text = f"{seed}:{shard_name(batch.url)}:{batch.samples[0]['__key__']}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def sample_seed(seed: int, url: str, key: str) -> int:
    """One sample's own sampling seed, a hash of (run seed, shard name, key), 31 bits (what every
    OpenAI-compatible server takes as `seed`)."""
    text = f"{seed}:{shard_name(url)}:{key}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**31 - 1)


class EncodedImages(Sequence):
    """The batch's images as their original bytes, each with its own seed (what an endpoint
    captioner reads), made on access: captioners that read tensors never pay for them."""

    def __init__(self, seed: int, batch: Batch) -> None:
        self.seed, self.batch, self.name = seed, batch, shard_name(batch.url)

    def __len__(self) -> int:
        return len(self.batch.samples)

    def __getitem__(self, i: int) -> EncodedImage:  # type: ignore[override]
        s = self.batch.samples[i]
        return EncodedImage(s["__key__"], self.name, s["image_bytes"], s["image_ext"],
                            sample_seed(self.seed, self.batch.url, s["__key__"]))


class WebCaptions(Sequence):
    """The batch's web captions, read on access (a LaCLIP-style rewriter rewrites them)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch.samples)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self.batch.samples[i]["caption"]


def caption_batch(caption: CaptionFn, batch: Batch, seed: int) -> list[list[str]]:
    """The captioner's captions of one batch: its inputs plus, under `images`, the original bytes
    with per-sample seeds (references into the batch: no copy) and, under `web_captions`, the web
    captions (for LaCLIP-style rewrites), seeded per batch."""
    batch.inputs["images"] = EncodedImages(seed, batch)
    batch.inputs["web_captions"] = WebCaptions(batch)  # what a rewriter rewrites
    return [list(caps) for caps in caption(batch.inputs, batch_seed(seed, batch))]


def caption_stage(items: Iterable[BatchEvent], caption: CaptionFn, seed: int) -> Iterator[BatchEvent]:
    """Add `batch.synthetic`: the captioner's captions for every image, seeded per batch."""
    for item in items:
        if isinstance(item, Batch):
            item.synthetic = caption_batch(caption, item, seed)
            if len(item.synthetic) != len(item):
                raise RuntimeError(f"captioner returned {len(item.synthetic)} rows for {len(item)} images")
        yield item


def score_stage(items: Iterable[BatchEvent], score: ScoreFn) -> Iterator[BatchEvent]:
    """Add filter scores of the web caption and of every synthetic caption of each image."""
    for item in items:
        if isinstance(item, Batch):
            texts = [[s["caption"], *caps] for s, caps in zip(item.samples, item.synthetic or [[]] * len(item))]
            rows = score(item.inputs, texts)
            if [len(r) for r in rows] != [len(t) for t in texts]:
                raise RuntimeError("the filter returned a score table of the wrong shape")
            item.web_scores = [float(r[0]) for r in rows]
            item.synthetic_scores = [[float(x) for x in r[1:]] for r in rows]
            item.truncated = getattr(rows, "truncated", None)  # `models.filters.scoring.ScoredRows` says, a fake need not
        yield item


# --------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True)
class Selection:
    """Which kept caption trains (`web_first`, `best`, `synthetic_first`), and what to do when none is."""

    choose: str = "web_first"
    nothing_kept: str = "drop"  # "drop" the sample, or "flag" it (.txt = its web caption, json says so)


# the last three come from an endpoint captioner (`models.captioners.protocol.InvalidCaption`)
INVALID_REASONS = ("empty", "special_tokens", "prompt", "refused", "malformed", "rejected")
_MARKUP_ONLY = re.compile(rf"(?:\s*{MARKUP.pattern})+\s*")


def _words(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def invalid_caption(caption: str, prompt: str | None = None) -> str | None:
    """Why a synthetic caption can never be kept, or None.

    `empty`: no word at all (nothing, whitespace, newlines, lone punctuation: what a captioner that
    ends at once or emits only special tokens leaves after decoding); `special_tokens`: nothing but
    `<...>` markup such as `<loc0042>`; `prompt`: the prompt echoed back, word for word (its own
    markup, such as PaliGemma's `<image>caption en`, aside).
    """
    text = caption.strip()
    if _MARKUP_ONLY.fullmatch(text):
        return "special_tokens"
    if not _words(text):
        return "empty"
    if prompt and _words(MARKUP.sub(" ", text)) == _words(MARKUP.sub(" ", prompt)):
        return "prompt"
    return None


def _score(value: float) -> float | None:
    """A score for the JSON record: a non-finite score is recorded as null (and never kept)."""
    return value if math.isfinite(value) else None


def decide(web_caption: str, web_score: float, synthetic: Sequence[str], synthetic_scores: Sequence[float],
           thresholds: Thresholds, selection: Selection, prompt: str | None = None,
           truncated: Sequence[bool] | None = None) -> dict:
    """The decision fields of one sample's `mmw2s` block (everything but provenance).

    A synthetic caption that `invalid_caption` rejects is never kept, whatever its score, and says
    why under `invalid`. `truncated` ([web, *synthetic]) counts the captions the filter cut.
    """
    web_kept = math.isfinite(web_score) and web_score >= thresholds.web
    syn = []
    for c, s in zip(synthetic, synthetic_scores):
        entry = {"caption": str(c), "score": _score(s), "kept": math.isfinite(s) and s >= thresholds.synthetic}
        if getattr(c, "source", None):  # a LaCLIP-style rewrite of the web caption
            entry["source"] = c.source
        reason = getattr(c, "invalid", None) or invalid_caption(c, prompt)
        if reason:
            entry.update(kept=False, invalid=reason)
        syn.append(entry)
    kept_syn = [x for x in syn if x["kept"]]
    best_syn = max(kept_syn, key=lambda x: x["score"], default=None)  # first of equals wins
    web = {"caption": web_caption, "score": web_score} if web_kept else None
    syn_source = best_syn.get("source", "synthetic") if best_syn else "synthetic"
    order = {"web_first": [("web", web), (syn_source, best_syn)],
             "synthetic_first": [(syn_source, best_syn), ("web", web)]}.get(selection.choose)
    if order is None:  # "best": the highest score among kept captions; the web caption wins ties
        candidates = [c for c in [("web", web), (syn_source, best_syn)] if c[1] is not None]
        order = sorted(candidates, key=lambda c: -c[1]["score"])
    source, pick = next(((s, p) for s, p in order if p is not None), (None, None))
    return {
        "web_caption": web_caption, "web_score": _score(web_score), "web_kept": web_kept,
        "synthetic": syn,
        "chosen": pick["caption"] if pick else None,
        "chosen_source": source,
        "chosen_score": pick["score"] if pick else None,
        "nothing_kept": pick is None,
        "filter_truncated": sum(bool(t) for t in truncated or ()),
    }


def decide_stage(items: Iterable[BatchEvent], thresholds: Thresholds, selection: Selection,
                 provenance: dict) -> Iterator[DecidedEvent]:
    """Turn each `Batch` into `OutputSample`s, one per input sample, in order.

    An output sample keeps the input's key, shard and image bytes (under their original
    extension); its `json` is the input fields plus the `mmw2s` block, and `drop` says that nothing
    was kept and `nothing_kept == "drop"`. `txt` is the chosen caption; a flagged sample (nothing
    kept, `nothing_kept == "flag"`) keeps its web caption there, so that every written sample has
    a `.txt` (`wds.WebDataset(url).to_tuple("jpg", "txt")` reads every shard), and its JSON says
    `nothing_kept: true`, `chosen: null`. `provenance` holds the block's fixed fields (captioner,
    filter, seed); its `captioner.prompt`, if any, is what `invalid_caption` compares against.
    """
    prompt = (provenance.get("captioner") or {}).get("prompt")
    for item in items:
        if not isinstance(item, Batch):
            yield item
            continue
        for i, sample in enumerate(item.samples):
            block = decide(sample["caption"], item.web_scores[i], item.synthetic[i],
                           item.synthetic_scores[i], thresholds, selection, prompt=prompt,
                           truncated=item.truncated[i] if item.truncated else None)
            block.update(provenance, threshold=thresholds.record())
            if item.curation:  # `curation.py`: reason, duplicate of, safety score, hashes
                block["curation"] = item.curation[i]
            if "original_key" in sample:  # the input's key was not a safe member name
                block["original_key"] = sample["original_key"]
            yield OutputSample(key=sample["__key__"], url=item.url,
                               drop=block["nothing_kept"] and selection.nothing_kept == "drop",
                               image_ext=sample["image_ext"], image_bytes=sample["image_bytes"],
                               json={**sample["json"], "mmw2s": block},
                               txt=block["chosen"] if block["chosen"] is not None else sample["caption"])
