"""The data-loading row: our shard reader vs a plain `webdataset.WebDataset` loop.

Both sides read the same web shards through a `torch.utils.data.DataLoader` with the same number
of workers (whole shards per worker), decode every image to PIL RGB and the caption and JSON, and
are counted in samples/s. Ours is `data_pipelines.loader.RecordLoader` (checked members, skip
and damage accounting, raw image bytes kept for byte-exact rewriting, records sent from the
workers in chunks); theirs is what a webdataset
user writes (`.decode("pilrgb")`). The peer imports webdataset directly, on purpose: it is the
thing measured against.

Each pass is timed whole, worker start-up included on both sides (as a user's epoch pays it); a
warm-up pass of each side comes first, untimed, and the passes of the two sides alternate.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from mmw2s.bench.common import row
from mmw2s.bench.config import BenchConfig


def ours_loader(urls: list[str], workers: int) -> Iterable:
    """Our reader: sample dicts, `Skip` and `ShardEnd` records, decoded in `workers` processes."""
    from mmw2s.data_pipelines import ReadLimits, RecordLoader

    return RecordLoader(urls, ReadLimits(), workers=workers)


def plain_wds_loader(urls: list[str], workers: int) -> Iterable:
    """The plain webdataset loop: shards split over workers, images decoded to PIL RGB."""
    import webdataset as wds
    from torch.utils.data import DataLoader

    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only,
                             empty_check=False).decode("pilrgb")
    return DataLoader(dataset, batch_size=None, num_workers=min(workers, len(urls)))


def timed(make: Callable[[], Iterable]) -> tuple[int, float]:
    """`(samples, seconds)` of one full pass, worker start-up included (both sides pay it).

    Records other than samples (our `ShardEnd`, `Skip`) are read but not counted. Whole passes
    are timed, not "from the first sample": ours sends records in chunks, so its first arrival
    brings a chunk of samples decoded before such a clock would start.
    """
    start = time.perf_counter()
    samples = sum(1 for item in make() if isinstance(item, dict))
    return samples, time.perf_counter() - start


def bench_loading(cfg: BenchConfig, urls: list[str]) -> dict:
    """Best of `loading.repeats` interleaved passes per side, after one warm-up pass of each."""
    sides = {"ours": lambda: ours_loader(urls, cfg.workers), "theirs": lambda: plain_wds_loader(urls, cfg.workers)}
    for make in sides.values():  # warm-up: page cache, lazy imports
        timed(make)
    best = {name: 0.0 for name in sides}
    counts = {}
    for _ in range(cfg.loading.repeats):
        for name, make in sides.items():
            n, seconds = timed(make)
            counts[name] = n
            best[name] = max(best[name], n / seconds)
    if counts["ours"] != counts["theirs"]:
        raise RuntimeError(f"the readers disagree on the sample count: ours {counts['ours']}, "
                           f"webdataset {counts['theirs']}")
    return row("loading", best["ours"], best["theirs"], "samples/s", 1.0, samples=counts["ours"],
               shards=len(urls), workers=cfg.workers, timed="whole passes, worker start-up included, best pass",
               theirs_is="webdataset.WebDataset(...).decode('pilrgb')")
