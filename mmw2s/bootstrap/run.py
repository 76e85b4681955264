"""The `mmw2s bootstrap` runner: thresholds, resume, the summary; the engine does the shards.

    out/config.yaml        resolved config (before any work)
    out/thresholds.json    thresholds used (calibrated ones written before the first shard)
    out/shards/NAME.tar    one output shard per input shard + NAME_stats.json (= complete)
    out/summary.json       totals over all shards, kept fractions, thresholds, images/s
    out/.mmw2s.lock        held (flock) by the one job writing this folder (`mmw2s.run_folder`)

`engine=local` (default) runs the shards in this process or the ranks of `accelerate launch`
(`engines/local.py`); `engine=ray` hands them to a pool of Ray actors (`engines/ray.py`). Both
call the one per-shard function of `shard.py`, with the thresholds and fingerprint fixed here
first, so their outputs are the same bytes. A rerun skips complete shards and redoes partial
ones; the per-batch sampling seed makes the redone shards come out as they would have (see
`pipeline.py`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from mmw2s.data_pipelines import shard_events, shard_name, verified_stats, write_json_atomic

from mmw2s.errors import StageError
from mmw2s.bootstrap.capfilt import endpoint_totals, released
from mmw2s.bootstrap.config import BootstrapConfig, captioner_key, rewrite_key
from mmw2s.bootstrap.curation import fingerprint_keys
from mmw2s.bootstrap.shard import ShardJob, read_limits
from mmw2s.bootstrap.pipeline import Batch, batch_stage, caption_stage, score_stage
from mmw2s.bootstrap.thresholds import Thresholds, calibrate, load_thresholds, save_thresholds
from mmw2s.bootstrap.writer import output_path
from mmw2s.run_folder import hold_run_folder, input_urls, make_run_folder

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
TOTAL_KEYS = ("inputs", "decoded", "skipped", "web_kept", "synthetic", "synthetic_kept", "chosen_web",
              "chosen_synthetic", "nothing_kept", "dropped", "written", "synthetic_invalid", "filter_truncated")


def run(cfg: BootstrapConfig) -> dict:
    """Bootstrap `cfg.input` into `cfg.out` with `cfg.engine`; returns the run summary (on every rank)."""
    from mmw2s.bootstrap.engines import open_engine

    with open_engine(cfg) as engine, released(engine):  # a managed inference server stops with the run
        return bootstrap(cfg, engine)


def bootstrap(cfg: BootstrapConfig, engine: Any) -> dict:
    """The run on an open engine (see `mmw2s.bootstrap.engines`), holding the run folder's lock
    (`mmw2s.run_folder`: one job per `out=`)."""
    urls = input_urls(cfg.input)
    out = Path(cfg.out)
    if engine.is_main:
        make_run_folder(out, "shards")
    lock = hold_run_folder(out, settings_fingerprint(cfg)) if engine.is_main else contextlib.nullcontext()
    with lock:
        summary = bootstrap_locked(cfg, engine, urls)
    unreadable = [u for r in summary["ranks"] for u in r.get("unreadable", [])]
    if unreadable:
        listed = "; ".join(f"{shard_name(u['input'])}: {u['reason']}" for u in unreadable[:5])
        raise StageError(f"{len(unreadable)} input shards could not be read and have no output ({listed}"
                         f"{'; ...' if len(unreadable) > 5 else ''}); the other shards are complete: rerun the "
                         "same command to retry these")
    return summary


def bootstrap_locked(cfg: BootstrapConfig, engine: Any, urls: list[str]) -> dict:
    """The run once this job holds the run folder."""
    from mmw2s.config import save_config

    out = Path(cfg.out)
    if engine.is_main:
        save_config(cfg, out)
    thresholds = resolve_thresholds(cfg, engine.local_models, urls, engine)
    job = ShardJob(cfg, thresholds, run_fingerprint(cfg, thresholds))
    workers, ceiling = engine.run_shards(urls, job)
    engine.barrier()
    summary = summarize(out, urls, thresholds, workers, ceiling)
    if engine.is_main:
        write_json_atomic(out / SUMMARY_FILE, summary)
        totals = {k: summary[k] for k in ("written", "kept_fraction", "images_per_s")}
        log.info("bootstrap done: %s", json.dumps(totals))
    engine.barrier()
    return summary


def run_fingerprint(cfg: BootstrapConfig, thresholds: Thresholds) -> str:
    """A hash of every setting that decides the content of an output shard.

    Not included: where inputs and outputs live, workers, device, progress.
    """
    return _fingerprint(cfg, thresholds.record())


def settings_fingerprint(cfg: BootstrapConfig) -> str:
    """`run_fingerprint` before the thresholds are resolved: the config's threshold settings stand
    for them (what the run folder's lock compares between two jobs)."""
    return _fingerprint(cfg, asdict(cfg.thresholds))


def _fingerprint(cfg: BootstrapConfig, thresholds: dict) -> str:
    keys = {"captioner": captioner_key(cfg.captioner), "decoding": asdict(cfg.decoding),
            "filter": {"kind": cfg.filter.kind, **asdict(cfg.filter.spec())},
            "thresholds": thresholds, "selection": asdict(cfg.selection), "seed": cfg.seed,
            "batch_size": cfg.batch_size, "max_pixels": cfg.max_pixels,
            "captions": [cfg.max_caption_chars, cfg.long_captions], **fingerprint_keys(cfg), **rewrite_key(cfg)}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Thresholds


def resolve_thresholds(cfg: BootstrapConfig, load_models: Callable[[], Any], urls: list[str],
                       engine: Any) -> Thresholds:
    """The run's thresholds: the saved ones if any, else absolute or calibrated by the main process
    (rank 0, the Ray driver) and saved before any shard starts.

    `load_models()` is called only to calibrate.
    """
    out = Path(cfg.out)
    if engine.is_main and load_thresholds(out) is None:
        save_thresholds(out, new_thresholds(cfg, load_models, urls))
    engine.barrier()
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
# Summary


def summarize(out: Path, urls: list[str], thresholds: Thresholds, ranks: list[dict],
              ceiling: dict | None) -> dict:
    """Totals over the stats of every output shard on disk, plus this run's throughput.

    `ranks` has one `{rank, images, seconds}` per worker of the engine (ranks, Ray actors).
    """
    stats, missing = [], []
    for url in urls:
        found = verified_stats(output_path(out / "shards", url))
        (stats.append(found) if found is not None else missing.append(shard_name(url)))
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
        "ranks": ranks, "ceiling": ceiling, **endpoint_totals(stats),
    }
