"""The throughput ceiling of a bootstrap run: captioner + filter forward passes alone.

The same models, decoding and batch size run on one batch that is already decoded, preprocessed
and in memory, repeated; no shard reading, JPEG decoding, data-loader IPC, decisions or writing.
`bootstrap images/s / ceiling images/s` says how much of the hardware the whole pipeline uses.
"""
from __future__ import annotations

import math
import time
from typing import Any

from mmw2s.bootstrap.stages import Batch, batch_seed, batch_stage


def first_batch(urls: list[str], cfg: Any, preprocess: Any) -> Batch | None:
    """The first full (or only) batch of the input, decoded and preprocessed in this process."""
    from data_pipelines.shards import shard_events

    from mmw2s.bootstrap.run import read_limits

    events = (e for url in urls for e in shard_events(url, read_limits(cfg)))
    best = None
    for item in batch_stage(events, cfg.batch_size, preprocess):
        if isinstance(item, Batch):
            if len(item) == cfg.batch_size:
                return item
            best = best if best is not None and len(best) >= len(item) else item
    return best


def time_forward(models: Any, batch: Batch, seed: int, images: int) -> dict:
    """Seconds and images/s of caption + score on `batch`, repeated to cover `images` images."""
    models.caption(batch.inputs, batch_seed(seed, batch))  # warm-up: lazy init, allocator, kernels
    repeats = max(1, math.ceil(images / len(batch)))
    _sync(models)
    start = time.perf_counter()
    for _ in range(repeats):
        synthetic = models.caption(batch.inputs, batch_seed(seed, batch))
        texts = [[s["caption"], *caps] for s, caps in zip(batch.samples, synthetic)]
        models.score(batch.inputs, texts)
    _sync(models)
    seconds = time.perf_counter() - start
    done = repeats * len(batch)
    return {"images": done, "batch_size": len(batch), "seconds": round(seconds, 3),
            "images_per_s": round(done / seconds, 2)}


def _sync(models: Any) -> None:
    import torch

    if getattr(models, "device", None) is not None and torch.device(models.device).type == "cuda":
        torch.cuda.synchronize()


def measure_ceiling(models: Any, urls: list[str], cfg: Any, images: int) -> dict:
    """Time the forward passes alone on the input's first batch for about `images` images."""
    batch = first_batch(urls, cfg, models.preprocessor)
    if batch is None:
        raise ValueError("no decodable sample in the input to measure the ceiling on")
    return time_forward(models, batch, cfg.seed, images)
