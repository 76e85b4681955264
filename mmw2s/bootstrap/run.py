"""The `mmw2s bootstrap` runner: thresholds, rank split, resume, the stage chain, the summary.

    out/config.yaml        resolved config (rank 0, before any work)
    out/thresholds.json    thresholds used (calibrated ones written before the first shard)
    out/shards/NAME.tar    one output shard per input shard + NAME_stats.json (= complete)
    out/summary.json       totals over all shards, kept fractions, thresholds, images/s

Several processes (`accelerate launch --num_processes N -m mmw2s.cli bootstrap ...`; on a machine
without GPUs add `--multi_gpu`, since accelerate's `--cpu` starts a single process) take input
shards `urls[rank::N]`; rank 0 writes the summary after every rank has finished, from the stats on
disk. A rerun skips complete shards and redoes partial ones; the per-batch sampling seed makes
the redone shards come out as they would have (see `stages.py`).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from data_pipelines.shards import (OtherSettings, ReadLimits, complete_with, event_loader, expand_urls,
                                   shard_events, shard_name, stats_path, write_json_atomic)

from mmw2s.errors import StageError
from mmw2s.bootstrap.config import BootstrapConfig
from mmw2s.bootstrap.stages import Batch, Selection, batch_stage, caption_stage, decide_stage, score_stage
from mmw2s.bootstrap.thresholds import Thresholds, calibrate, load_thresholds, save_thresholds
from mmw2s.bootstrap.writer import ShardOutputs, output_path, write_stage

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
TOTAL_KEYS = ("inputs", "decoded", "skipped", "web_kept", "synthetic", "synthetic_kept", "chosen_web",
              "chosen_synthetic", "nothing_kept", "dropped", "written")


def run(cfg: BootstrapConfig) -> dict:
    """Bootstrap `cfg.input` into `cfg.out`; returns the run summary (on every rank)."""
    from accelerate import PartialState

    from mmw2s.config import save_config

    state = PartialState(cpu=cfg.device == "cpu")
    if cfg.device == "cuda" and state.device.type != "cuda":
        raise RuntimeError("device=cuda, but this process sees no CUDA device (device=auto falls back to CPU)")
    urls = input_urls(cfg.input)
    out = Path(cfg.out)
    if state.is_main_process:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
    with cpu_threads(cfg, state.device):
        thresholds, ranks, ceiling = bootstrap_shards(cfg, urls, state)
    state.wait_for_everyone()
    summary = summarize(out, urls, thresholds, ranks, ceiling)
    if state.is_main_process:
        write_json_atomic(out / SUMMARY_FILE, summary)
        log.info("bootstrap done: %s", json.dumps({k: summary[k] for k in ("written", "kept_fraction", "images_per_s")}))
    state.wait_for_everyone()
    return summary


def bootstrap_shards(cfg: BootstrapConfig, urls: list[str], state: Any) -> tuple[Thresholds, list[dict], dict | None]:
    """This rank's share of the work: thresholds, its incomplete shards, the ceiling (rank 0).

    Returns the thresholds, every rank's `{rank, images, seconds}` and the ceiling (or None).
    """
    from accelerate.utils import gather_object

    from mmw2s.bootstrap.capfilt import CapFilt

    out = Path(cfg.out)
    # Loaded on first use: a rerun of a finished run (thresholds saved, shards complete) loads nothing.
    load_models = functools.cache(lambda: CapFilt.from_config(cfg, state.device))
    thresholds = resolve_thresholds(cfg, load_models, urls, state)
    fingerprint = run_fingerprint(cfg, thresholds)
    mine = urls[state.process_index::state.num_processes]
    todo = [u for u in mine if not _done(out, u, fingerprint)]
    log.info("rank %d/%d: %d input shards, %d complete, %d to do", state.process_index,
             state.num_processes, len(mine), len(mine) - len(todo), len(todo))
    start = time.perf_counter()
    processed = process_shards(todo, cfg, load_models(), thresholds, fingerprint,
                               show_progress=cfg.progress and state.is_local_main_process) if todo else 0
    seconds = time.perf_counter() - start
    ranks = gather_object([{"rank": state.process_index, "images": processed, "seconds": round(seconds, 3)}])
    ceiling = None
    if cfg.measure_ceiling and state.is_main_process and processed:
        from mmw2s.bootstrap.ceiling import measure_ceiling

        ceiling = measure_ceiling(load_models(), todo, cfg, images=min(processed, cfg.ceiling_images))
        ceiling["ratio"] = round(processed / seconds / ceiling["images_per_s"], 3)
    return thresholds, ranks, ceiling


@contextlib.contextmanager
def cpu_threads(cfg: BootstrapConfig, device: Any) -> Iterator[None]:
    """Give the model process the CPU cores the data-loader workers leave free, then restore.

    Intra-op threads that outnumber free cores spin against the decoding workers; measured on
    2 busy cores, 2 threads instead of 1 made the tiny models ~15x slower.
    """
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    wanted = cfg.cpu_threads or max(1, cores // ranks_here - cfg.workers)
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)  # an in-process caller (the experiment runner) gets its own back


def input_urls(spec: str) -> list[str]:
    """The input shard URLs; their names must be distinct since outputs are named after them."""
    urls = expand_urls(spec)
    names = [shard_name(u) for u in urls]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise StageError(f"input shards share names {clashes[:5]}: outputs are named after input shards, "
                         "so bootstrap each folder into its own out=")
    if not urls:
        raise StageError(f"no input shards in {spec!r}")
    return urls


def run_fingerprint(cfg: BootstrapConfig, thresholds: Thresholds) -> str:
    """A hash of every setting that decides the content of an output shard.

    Not included: where inputs and outputs live, workers, device, progress.
    """
    used = cfg.filter.dual_encoder if cfg.filter.kind == "clip" else cfg.filter.itm
    keys = {"captioner": asdict(cfg.captioner), "decoding": asdict(cfg.decoding),
            "filter": {"kind": cfg.filter.kind, **asdict(used)},
            "thresholds": thresholds.record(), "selection": asdict(cfg.selection), "seed": cfg.seed,
            "batch_size": cfg.batch_size, "max_pixels": cfg.max_pixels}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _done(out: Path, url: str, fingerprint: str) -> bool:
    """Whether the output of `url` is complete, after checking it was made by these settings."""
    try:
        return complete_with(output_path(out / "shards", url), fingerprint)
    except OtherSettings as exn:
        raise StageError(f"{exn}; use another out= or delete {out / 'shards'} to redo it") from None


# --------------------------------------------------------------------------------------------
# Thresholds


def resolve_thresholds(cfg: BootstrapConfig, load_models: Callable[[], Any], urls: list[str],
                       state: Any) -> Thresholds:
    """The run's thresholds: the saved ones if any, else absolute or calibrated by rank 0 and saved.

    `load_models()` is called only to calibrate.
    """
    out = Path(cfg.out)
    if state.is_main_process and load_thresholds(out) is None:
        save_thresholds(out, new_thresholds(cfg, load_models, urls))
    state.wait_for_everyone()
    thresholds = load_thresholds(out)
    expected = cfg.thresholds
    same = thresholds.mode == expected.mode and (
        (thresholds.web, thresholds.synthetic) == (expected.web, expected.synthetic) if expected.mode == "absolute"
        else (thresholds.web_fraction, thresholds.synthetic_fraction, thresholds.calibration_samples)
        == (expected.web_fraction, expected.synthetic_fraction, expected.calibration_samples))
    if not same:
        raise StageError(f"{out}/thresholds.json holds {thresholds.to_json()}, which the config's thresholds "
                         f"{asdict(expected)} did not make; use another out= or delete that file")
    return thresholds


def new_thresholds(cfg: BootstrapConfig, load_models: Callable[[], Any], urls: list[str]) -> Thresholds:
    """Absolute thresholds from the config, or top fractions calibrated on the input's first samples."""
    t = cfg.thresholds
    if t.mode == "absolute":
        return Thresholds(mode="absolute", web=t.web, synthetic=t.synthetic)
    web, synthetic_rows = [], []
    for batch in scored_batches(urls, cfg, load_models()):
        web += batch.web_scores
        synthetic_rows += batch.synthetic_scores
        if len(web) >= t.calibration_samples:
            break
    # Exactly the first `calibration_samples` samples (batches overshoot): the recorded count then
    # matches the config, and a rerun recognises its own thresholds.
    web, synthetic_rows = web[:t.calibration_samples], synthetic_rows[:t.calibration_samples]
    synthetic = [s for row in synthetic_rows for s in row]
    seen = len(web)
    thresholds = calibrate(web, synthetic, t.web_fraction, t.synthetic_fraction,
                           samples=t.calibration_samples)
    log.info("calibrated on %d samples: web >= %.4f (top %.0f%%), synthetic >= %.4f (top %.0f%%)", seen,
             thresholds.web, 100 * t.web_fraction, thresholds.synthetic, 100 * t.synthetic_fraction)
    return thresholds


def scored_batches(urls: list[str], cfg: BootstrapConfig, models: Any) -> Iterator[Batch]:
    """Captioned and scored batches of `urls` in order, in this process (for calibration).

    The batches and seeds are those of the run itself, so the calibration sample sees the very
    captions the run will write.
    """
    events = (e for url in urls for e in shard_events(url, read_limits(cfg)))
    stream = batch_stage(events, cfg.batch_size, models.preprocessor)
    stream = score_stage(caption_stage(stream, models.caption, cfg.seed), models.score)
    return (item for item in stream if isinstance(item, Batch))


# --------------------------------------------------------------------------------------------
# The stream


def read_limits(cfg: BootstrapConfig) -> ReadLimits:
    """What shard I/O accepts as a sample (images decoded, a caption required)."""
    return ReadLimits(max_pixels=cfg.max_pixels, decode_images=True, require_caption=True)


def loader(urls: list[str], cfg: BootstrapConfig, preprocess: Any):
    """Batches of `urls` decoded and preprocessed in `cfg.workers` data-loader processes.

    On CUDA the batches' tensors arrive pinned, so their copy to the GPU overlaps the models.
    """
    import torch

    stage = functools.partial(batch_stage, batch_size=cfg.batch_size, preprocess=preprocess)
    pin = cfg.device != "cpu" and torch.cuda.is_available()
    return event_loader(urls, read_limits(cfg), stages=[stage], workers=cfg.workers, prefetch_factor=4,
                        pin_memory=pin)


def process_shards(urls: list[str], cfg: BootstrapConfig, models: Any, thresholds: Thresholds,
                   fingerprint: str, show_progress: bool = True) -> int:
    """Bootstrap `urls` into `cfg.out/shards`; returns the number of images decoded."""
    selection = Selection(choose=cfg.selection.choose, nothing_kept=cfg.selection.nothing_kept)
    stream = caption_stage(iter(loader(urls, cfg, models.preprocessor)), models.caption, cfg.seed)
    stream = score_stage(stream, models.score)
    stream = decide_stage(stream, thresholds, selection, models.provenance(cfg))
    bar = progress_bar(urls, show_progress)
    images = kept = 0
    with ShardOutputs(Path(cfg.out) / "shards", {"fingerprint": fingerprint}) as outputs:
        for item in write_stage(stream, outputs):
            if isinstance(item, dict):
                images += 1
                kept += not item["json"]["mmw2s"]["nothing_kept"]
                bar.update(1)
                if images % 64 == 0:  # cheap enough: the bar redraws at most ~10 times a second anyway
                    bar.set_postfix(kept=f"{kept / images:.1%}", refresh=False)
            elif isinstance(item, tuple):
                end, stats = item
                log.debug("shard %s done: %s", end.name, stats)
    bar.set_postfix(kept=f"{kept / max(images, 1):.1%}")
    bar.close()
    return images


def progress_bar(urls: list[str], show: bool):
    """A tqdm bar in images (img/s shown by tqdm); its total comes from input stats when present."""
    from tqdm.auto import tqdm

    counts = [_expected(u) for u in urls]
    total = sum(counts) if all(c is not None for c in counts) else None
    return tqdm(total=total, unit="img", desc="bootstrap", disable=not show, smoothing=0.1)


def _expected(url: str) -> int | None:
    """Samples in an input shard according to its img2dataset `_stats.json`, if readable."""
    try:
        stats = json.loads(stats_path(url).read_text())
        return int(stats.get("successes", stats["count"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------
# Summary


def summarize(out: Path, urls: list[str], thresholds: Thresholds, ranks: list[dict],
              ceiling: dict | None) -> dict:
    """Totals over the stats of every output shard on disk, plus this run's throughput."""
    stats, missing = [], []
    for url in urls:
        path = stats_path(output_path(out / "shards", url))
        (stats.append(json.loads(path.read_text())) if path.exists() else missing.append(shard_name(url)))
    totals = {k: sum(s.get(k, 0) for s in stats) for k in TOTAL_KEYS}
    decoded = max(totals["decoded"], 1)
    images = sum(r["images"] for r in ranks)
    seconds = max((r["seconds"] for r in ranks), default=0.0)
    return {
        "shards": len(urls), "complete_shards": len(stats), "missing_shards": missing, **totals,
        "damaged_shards": [s["input"] for s in stats if s.get("damaged")],
        "web_kept_fraction": round(totals["web_kept"] / decoded, 4),
        "synthetic_kept_fraction": round(totals["synthetic_kept"] / max(totals["synthetic"], 1), 4),
        "kept_fraction": round((totals["decoded"] - totals["nothing_kept"]) / decoded, 4),
        "thresholds": thresholds.to_json(),
        "images_this_run": images, "seconds": seconds,
        "images_per_s": round(images / seconds, 2) if seconds > 0 and images else None,
        "ranks": ranks, "ceiling": ceiling,
    }
