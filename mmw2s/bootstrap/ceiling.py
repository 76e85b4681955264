"""The throughput ceiling of a bootstrap run: captioner + filter forward passes alone.

The same models, decoding and batches as the run (same batch boundaries, same per-batch sampling
seeds, so the same caption lengths) run once more on batches that are already decoded,
preprocessed and in memory: no shard reading, JPEG decoding, data-loader IPC, decisions or
writing. `bootstrap images/s / ceiling images/s` says how much of the hardware the whole pipeline
uses.

Timing the run's own batches, rather than its first batch repeated, keeps the comparison fair
both ways: nucleus sampling stops when every caption of a batch has ended, so one batch can be
systematically cheaper or dearer to caption than the run's average.
"""
from __future__ import annotations

import time
from typing import Any

from mmw2s.bootstrap.shard import read_limits
from mmw2s.bootstrap.pipeline import Batch, batch_stage, caption_batch


def run_batches(urls: list[str], cfg: Any, preprocess: Any, images: int) -> list[Batch]:
    """The run's first batches covering at least `images` images, decoded and preprocessed here."""
    from mmw2s.data_pipelines import shard_events

    events = (e for url in urls for e in shard_events(url, read_limits(cfg)))
    batches, seen = [], 0
    for item in batch_stage(events, cfg.batch_size, preprocess):
        if isinstance(item, Batch):
            batches.append(item)
            seen += len(item)
            if seen >= images:
                break
    return batches


def time_forward(models: Any, batches: list[Batch], seed: int) -> dict:
    """Seconds and images/s of caption + score over `batches`, each once with its own seed."""
    caption_batch(models.caption, batches[0], seed)  # warm-up: lazy init, allocator
    _sync(models)
    start = time.perf_counter()
    for batch in batches:
        synthetic = caption_batch(models.caption, batch, seed)
        texts = [[s["caption"], *caps] for s, caps in zip(batch.samples, synthetic)]
        models.score(batch.inputs, texts)
    _sync(models)
    seconds = time.perf_counter() - start
    done = sum(len(b) for b in batches)
    return {"images": done, "batches": len(batches), "batch_size": max(len(b) for b in batches),
            "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 2)}


def _sync(models: Any) -> None:
    import torch

    if getattr(models, "device", None) is not None and torch.device(models.device).type == "cuda":
        torch.cuda.synchronize()


def measure_ceiling(models: Any, urls: list[str], cfg: Any, images: int) -> dict:
    """Time the forward passes alone on the run's first batches, about `images` images."""
    batches = run_batches(urls, cfg, models.preprocessor, images)
    if not batches:
        raise ValueError("no decodable sample in the input to measure the ceiling on")
    return time_forward(models, batches, cfg.seed)
