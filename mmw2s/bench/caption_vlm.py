"""The `caption_vlm` row: `mmw2s bootstrap` with a prompted VLM captioner, end to end vs the same
model's forward passes alone.

The captioner is a tiny random model of a real transformers family (`caption_vlm.family`, built
by `models.vlm_tiny` from its config classes and saved with its processor, as a user's checkpoint
would be), loaded by path through `AutoProcessor` + `AutoModelForImageTextToText`. The run's
filter is the bootstrap row's. Ours: images/s of the whole bootstrap (shard reading, JPEG decoding,
the processor's chat-template tokenization in the data-loader workers, generation, scoring,
decisions, writing). Theirs: `measure_ceiling`, caption + score on the run's own batches,
pre-processed in memory, same seeds. As in the bootstrap row, thresholds are calibrated on one
batch first, so model loading and the first pass are not charged to the end-to-end time.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmw2s.bench.bootstrap import bootstrap_args
from mmw2s.bench.common import row, run_child
from mmw2s.bench.config import BenchConfig
from mmw2s.bench.fixtures import web_shards

TARGET = 0.85


def tiny_vlm(cfg: BenchConfig, world: Path, family: str | None = None) -> Path:
    """`out/models/vlm-FAMILY`: a tiny random VLM over the web captions' words (reused when present);
    the family is `caption_vlm.family` unless given."""
    from mmw2s.data_pipelines import ReadLimits, iter_samples
    from mmw2s.models.vlm_tiny import build_tiny_vlm

    family = family or cfg.caption_vlm.family
    folder = Path(cfg.out) / "models" / f"vlm-{family}"
    if not (folder / "config.json").exists():
        words = {w for s in iter_samples(str(world / "web"), ReadLimits(decode_images=False))
                 for w in s["caption"].split()}
        build_tiny_vlm(family, folder, words, image_size=cfg.world.image_size, seed=cfg.seed)
    return folder


def bench_caption_vlm(cfg: BenchConfig, world: Path, models: Path, device: str, precision: str) -> dict:
    """Bootstrap `caption_vlm.shards` shards with the tiny VLM, then time its forward passes alone;
    `caption_vlm.repeats` times, each side's best counts (as the eval and loading rows: on a shared
    machine the load changes between the two halves of one repeat)."""
    v = cfg.caption_vlm
    captioner = tiny_vlm(cfg, world)
    runs = [_one_run(cfg, world, models, captioner, device, precision, i) for i in range(v.repeats)]
    best, ceiling = max(runs, key=lambda s: s["images_per_s"]), max((s["ceiling"] for s in runs),
                                                                     key=lambda c: c["images_per_s"])
    return row("caption_vlm", best["images_per_s"], ceiling["images_per_s"], "images/s", TARGET,
               family=v.family, images=best["images_this_run"], seconds=best["seconds"],
               ceiling_images=ceiling["images"], ceiling_seconds=ceiling["seconds"], batch_size=ceiling["batch_size"],
               num_captions=v.num_captions, max_new_tokens=v.max_new_tokens,
               each_run=[(s["images_per_s"], s["ceiling"]["images_per_s"]) for s in runs],
               theirs_is="the same VLM captioner + filter forward passes alone on the run's batches, "
                         "pre-processed in memory, same seeds (mmw2s.bootstrap.ceiling)")


def _one_run(cfg: BenchConfig, world: Path, models: Path, captioner: Path, device: str, precision: str,
             i: int) -> dict:
    """One bootstrap subprocess with `measure_ceiling`; its summary."""
    v = cfg.caption_vlm
    out = Path(cfg.out) / "runs" / "caption_vlm"
    shutil.rmtree(out, ignore_errors=True)  # a rerun of a complete run would time nothing
    shards = web_shards(world, v.shards)
    images = v.shards * cfg.world.samples_per_shard
    args = bootstrap_args(cfg, models, shards, out, device, precision, f"captioner.name={captioner}",
                          f"captioner.prompt={v.prompt}", f"decoding.num_captions={v.num_captions}",
                          f"decoding.max_new_tokens={v.max_new_tokens}", f"batch_size={v.batch_size}",
                          f"thresholds.calibration_samples={v.batch_size}", "measure_ceiling=true",
                          f"ceiling_images={images}")
    run_child(args, cfg.threads, out.parent / f"caption_vlm.{i}.log")
    return json.loads((out / "summary.json").read_text())
