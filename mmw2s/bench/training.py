"""The training row: samples/s of `mmw2s train task=clip` vs `open_clip_train` (open_clip_torch).

Same architecture (built from scratch), shards, batch size, steps, learning rate, precision,
data-loader workers and thread count; each runs as a subprocess of the bench. Throughput is read
from each tool's own logs, per window of `train.log_every` steps:

- ours: `metrics.jsonl`, `samples_per_s` per window (checkpoint writing is kept out by the loop);
- open_clip_train: its `Batch (t): AVG` log lines (mean step time since the previous line,
  data waiting included, as ours), times the window's steps from `[num_samples/...]`.

Warm-up (model build, worker start, filling shuffle buffers: open_clip_train fills 1000 samples
before its first batch) is dropped: ours' first window (steps 1..k) and open_clip_train's first two
lines (step 1, then steps 2..k+1). Samples/s = samples / seconds over the remaining windows.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from mmw2s.bench.common import missing_peer, row, run_child
from mmw2s.bench.config import BenchConfig
from mmw2s.bench.fixtures import web_shards

# "Train Epoch: 0 [ 160/768 (21%)] Data (t): 0.012 Batch (t): 0.081, ..."
OPEN_CLIP_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\s*\d+ .*?Batch \(t\): ([0-9.]+)")
PRECISION = {"fp32": ("no", "fp32"), "bf16": ("bf16", "amp_bf16")}  # ours (quoted: YAML reads a bare `no` as false), open_clip_train's


def ours_args(cfg: BenchConfig, shards: list[str], out: Path, precision: str) -> list[str]:
    """`-m mmw2s.cli train task=clip ...` with the bench's settings."""
    t = cfg.train
    return ["-m", "mmw2s.cli", "train", "--quiet", "task=clip", f"data={'::'.join(shards)}", f"out={out}",
            f"steps={t.steps}", f"batch_size={t.batch_size}", f"lr={t.lr}", "warmup_steps=0",
            f"workers={cfg.workers}", f"mixed_precision='{PRECISION[precision][0]}'", f"log_every={t.log_every}",
            "checkpoint_every=0", "resume=null", f"seed={cfg.seed}", f"dual_encoder.arch={t.arch}",
            f"dual_encoder.seed={cfg.seed}", "text.source=txt", "loss.name=contrastive"]


def theirs_args(cfg: BenchConfig, shards: list[str], out: Path, precision: str) -> list[str]:
    """`-m mmw2s.bench.openclip_launcher ...` (open_clip_train) with the same settings.

    `--dataset-resampled` makes its stream endless like ours, so both run exactly `steps` steps.
    """
    t = cfg.train
    return ["-m", "mmw2s.bench.openclip_launcher", "--train-data", "::".join(shards),
            "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(t.steps * t.batch_size), "--epochs", "1", "--model", t.arch,
            "--batch-size", str(t.batch_size), "--lr", str(t.lr), "--wd", "0.1", "--warmup", "0",
            "--workers", str(cfg.workers), "--precision", PRECISION[precision][1], "--seed", str(cfg.seed),
            "--log-every-n-steps", str(t.log_every), "--save-frequency", "0", "--report-to", "",
            "--logs", str(out.parent), "--name", out.name]


def ours_rate(out: Path, batch_size: int) -> tuple[float, int]:
    """`(samples/s, samples timed)` from our metrics.jsonl, first window dropped."""
    from mmw2s.train.metrics import read_jsonl

    rows = read_jsonl(out / "metrics.jsonl")
    samples = seconds = 0.0
    previous = rows[0]["step"] if rows else 0
    for r in rows[1:]:
        n = (r["step"] - previous) * batch_size
        samples, seconds, previous = samples + n, seconds + n / r["samples_per_s"], r["step"]
    if not samples:
        raise RuntimeError(f"{out}/metrics.jsonl has fewer than two windows to time")
    return samples / seconds, int(samples)


def theirs_rate(log_text: str, batch_size: int) -> tuple[float, int]:
    """`(samples/s, samples timed)` from open_clip_train's log lines, first two lines dropped."""
    lines = [(int(n), float(t)) for n, t in OPEN_CLIP_LINE.findall(log_text)]
    samples = seconds = 0.0
    for (before, _), (after, avg) in zip(lines[1:], lines[2:]):
        steps = (after - before) // batch_size
        samples, seconds = samples + steps * batch_size, seconds + steps * avg
    if not samples:
        raise RuntimeError("open_clip_train logged fewer than three lines to time")
    return samples / seconds, int(samples)


def bench_train(cfg: BenchConfig, world: Path, device: str, precision: str) -> dict:
    """Both trainers back to back on the same shards; ratio of their steady-state samples/s."""
    reason = missing_peer("open_clip_train.main", "pandas")
    if reason:
        return _skip(reason)
    runs = Path(cfg.out) / "runs"
    shards = web_shards(world, cfg.world.web_shards)
    ours_out, theirs_out = runs / "train_ours", runs / "train_open_clip"
    for folder in (ours_out, theirs_out):
        shutil.rmtree(folder, ignore_errors=True)
    b = cfg.train.batch_size
    run_child(ours_args(cfg, shards, ours_out, precision), cfg.threads, runs / "train_ours.log")
    run_child(theirs_args(cfg, shards, theirs_out, precision), cfg.threads, runs / "train_open_clip.log")
    ours, ours_n = ours_rate(ours_out, b)
    theirs, theirs_n = theirs_rate((runs / "train_open_clip.log").read_text(), b)
    return row("train", ours, theirs, "samples/s", 1.0, arch=cfg.train.arch, batch_size=b,
               steps=cfg.train.steps, precision=precision, device=device, timed_samples_ours=ours_n,
               timed_samples_theirs=theirs_n, theirs_is="open_clip_train (python -m open_clip_train.main)")


def _skip(reason: str) -> dict:
    from mmw2s.bench.common import skipped

    return skipped("train", reason, "samples/s", 1.0)
