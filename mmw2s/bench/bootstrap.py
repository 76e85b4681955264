"""The bootstrap rows: end-to-end images/s vs the hardware ceiling, and peak memory vs input size.

Both run `mmw2s bootstrap` as a subprocess on the bench's world and models, with the thread and
worker settings of the bench. Thresholds are calibrated (top_fraction) on one batch first: that
loads the models and runs one full caption + score pass before the clock starts, so the
end-to-end time is not charged for loading, exactly as the ceiling is measured after a warm-up.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from mmw2s.bench.common import row, run_child
from mmw2s.bench.config import BenchConfig
from mmw2s.bench.fixtures import captioner_source, web_shards


def bootstrap_args(cfg: BenchConfig, models: Path, shards: list[str], out: Path, device: str,
                   precision: str, *extra: str) -> list[str]:
    """`-m mmw2s.cli bootstrap ...` for `shards` into `out`, with the bench's models and settings."""
    b = cfg.bootstrap
    flt = ([f"filter.dual_encoder.arch=local-dir:{models / 'clip'}"] if b.filter == "clip"
           else [f"filter.itm.name={models / 'filter'}"])
    return ["-m", "mmw2s.cli", "bootstrap", "--quiet", f"input={'::'.join(shards)}", f"out={out}",
            f"captioner.name={captioner_source(cfg, models)}", f"filter.kind={b.filter}", *flt,
            "decoding.method=nucleus", f"decoding.num_captions={b.num_captions}",
            f"decoding.max_new_tokens={b.max_new_tokens}", "decoding.min_new_tokens=2",
            "thresholds.mode=top_fraction", f"thresholds.calibration_samples={b.batch_size}",
            f"batch_size={b.batch_size}", f"workers={cfg.workers}", f"cpu_threads={cfg.threads}",
            f"device={device}", f"precision={precision}", "progress=false", f"seed={cfg.seed}", *extra]


def bench_bootstrap(cfg: BenchConfig, world: Path, models: Path, device: str, precision: str) -> dict:
    """Bootstrap `bootstrap.shards` shards end to end, then time the forward passes alone on the
    run's own batches, pre-decoded in memory (`measure_ceiling`); ours = end to end, theirs = ceiling."""
    out = Path(cfg.out) / "runs" / "bootstrap"
    shutil.rmtree(out, ignore_errors=True)  # a rerun of a complete run would time nothing
    shards = web_shards(world, cfg.bootstrap.shards)
    images = cfg.bootstrap.shards * cfg.world.samples_per_shard
    run_child(bootstrap_args(cfg, models, shards, out, device, precision, "measure_ceiling=true",
                             f"ceiling_images={images}"), cfg.threads, out.parent / "bootstrap.log")
    summary = json.loads((out / "summary.json").read_text())
    ceiling = summary["ceiling"]
    return row("bootstrap", summary["images_per_s"], ceiling["images_per_s"], "images/s", 0.8,
               images=summary["images_this_run"], seconds=summary["seconds"],
               ceiling_images=ceiling["images"], ceiling_seconds=ceiling["seconds"],
               batch_size=ceiling["batch_size"], theirs_is="captioner + filter forward passes alone "
               "on the run's batches, pre-decoded in memory, same seeds (mmw2s.bootstrap.ceiling)")


def peak_rss_mb(cfg: BenchConfig, models: Path, shards: list[str], out: Path, device: str,
                precision: str) -> float:
    """Peak RSS (MiB) of one bootstrap subprocess over `shards`, read by a fresh wrapper process."""
    shutil.rmtree(out, ignore_errors=True)
    log = out.parent / f"{out.name}.log"
    run_child(["-m", "mmw2s.bench.peak_rss", sys.executable,
               *bootstrap_args(cfg, models, shards, out, device, precision)], cfg.threads, log)
    last = log.read_text().strip().splitlines()[-1]
    return float(json.loads(last)["max_rss_mb"])


def bench_memory(cfg: BenchConfig, world: Path, models: Path, device: str, precision: str) -> dict:
    """Peak RSS of a bootstrap over `memory.large_shards` vs `memory.small_shards` shards of the same
    size: a streaming run holds the same memory whatever the input size (target within 10%)."""
    m = cfg.memory
    runs = Path(cfg.out) / "runs"
    small = peak_rss_mb(cfg, models, web_shards(world, m.small_shards), runs / "memory_small", device, precision)
    large = peak_rss_mb(cfg, models, web_shards(world, m.large_shards), runs / "memory_large", device, precision)
    return row("memory", large, small, "MiB peak", 1.1, better="lower",
               ours_is=f"bootstrap over {m.large_shards} shards", theirs_is=f"bootstrap over {m.small_shards} shards",
               samples_per_shard=cfg.world.samples_per_shard,
               measured="peak RSS of the largest process of the tree (getrusage RUSAGE_CHILDREN)")
