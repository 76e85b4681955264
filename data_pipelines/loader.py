"""Reading shards: the webdataset pipeline of shard events, its DataLoader, and `RecordLoader`.

`expand_urls` (`urls.py`) turns a shard spec into URLs; `shard_events` (`tar_reader.py`) streams
each shard's samples, decoded and checked (`sample_decode.py`), followed by one `ShardEnd` with that
shard's counts. Skipped samples travel in the stream as `Skip` records so that counts stay right
when the stream is produced in DataLoader worker processes. No sample can stop a stream: whatever
fails while decoding one is its skip reason; a failure that is not a sample's (a bug, a full disk)
stops it as a `ShardError` naming the shard (`shard_errors.py`).

Untrusted shards are data: only image, text and JSON members are read and decoded. Any other member
(`.pyd`, `.pickle`, `.pth`, ...) is counted and never read, let alone unpickled.

webdataset's API churns, so few modules touch it: this one (its pipeline, shard list, cycling,
worker split and batching), `tar_reader.py` (`gopen`, its key rule) and `writer.py` (`TarWriter`).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Iterator

import webdataset as wds

from mmw2s.data_pipelines.replay import ShardReplay
from mmw2s.data_pipelines.sample_decode import DecodedSample, ReadLimits, Skip
from mmw2s.data_pipelines.shard_errors import CurrentShard
from mmw2s.data_pipelines.tar_reader import ShardEnd, shard_events
from mmw2s.data_pipelines.urls import expand_urls


def iter_samples(urls: str | Iterable[str], limits: ReadLimits = ReadLimits(),
                 on_shard_end: Callable[[ShardEnd], None] | None = None) -> Iterator[DecodedSample]:
    """Good samples of every shard in order, in this process; skips are counted per shard.

    `on_shard_end` receives each shard's `ShardEnd` (counts, damage) as the shard finishes.
    """
    for url in expand_urls(urls):
        for item in shard_events(url, limits):
            if isinstance(item, ShardEnd):
                if on_shard_end is not None:
                    on_shard_end(item)
            elif not isinstance(item, Skip):
                yield item


def _events_stage(src: Iterable[dict], limits: ReadLimits, replay_bytes: int = 0) -> Iterator[Any]:
    replay = ShardReplay(replay_bytes) if replay_bytes > 0 else None
    for item in src:
        url = item["url"]
        yield from (replay.events(url, limits) if replay is not None else shard_events(url, limits))


def event_pipeline(urls: list[str], limits: ReadLimits = ReadLimits(),
                   stages: Iterable[Callable] = (), repeat: bool = False,
                   replay_bytes: int = 0) -> wds.DataPipeline:
    """An `IterableDataset` over `shard_events` of `urls`, shards split across DataLoader workers.

    Use it with `torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=N)`: each worker
    reads whole shards, so a shard's samples and its `ShardEnd` come from one worker, in order.
    `stages` are further webdataset-style stages `f(iterator) -> iterator` run in the workers
    (decoding to tensors, batching). With `repeat=True` the shard list is cycled forever (training),
    and with `replay_bytes` each worker replays the shards it has read from memory (`ShardReplay`).
    """
    shards = wds.SimpleShardList(list(urls))
    # The worker split comes after the cycling, as it always has: each worker deals itself every
    # N-th shard of the endless list, which is the order a resumed run replays (train/data.py).
    # Not `ResampledShards`: it draws shards at random, with replacement, not in this fixed cycle.
    pipeline = [partial(wds.repeatedly, shards) if repeat else shards, wds.split_by_worker,
                lambda src: _events_stage(src, limits, replay_bytes if repeat else 0), *stages]
    return wds.DataPipeline(*pipeline[:2], *_named(pipeline[2:]))


def _named(stages: list[Callable]) -> list[Callable]:
    """`stages` between a `CurrentShard` tracker (of the shard list: the shard being read) and its
    guard; a new tracker each time the pipeline is iterated (in each worker)."""
    holder: dict[str, CurrentShard] = {}

    def track(src: Iterable[Any]) -> Iterator[Any]:
        holder["shard"] = CurrentShard()
        return holder["shard"].track(src)

    return [track, *stages, lambda src: holder["shard"].guard(src)]


def pass_through(item: Any) -> Any:
    """The loader's collate function: the stream's records arrive exactly as the stages made them."""
    return item


def event_loader(urls: list[str], limits: ReadLimits = ReadLimits(), stages: Iterable[Callable] = (),
                 repeat: bool = False, workers: int = 0, replay_bytes: int = 0, **loader_options: Any):
    """A `torch.utils.data.DataLoader` over `event_pipeline(urls, ...)` in `workers` processes.

    At most one worker per shard (a worker without a shard of its own would only start and stop).
    Records pass through unconverted: torch's default `collate_fn` walks every sample dict
    recursively looking for NumPy arrays to turn into tensors (our stages make tensors
    themselves), which on raw samples with their JSON metadata cost ~20% of a worker's time.
    `loader_options` go to the DataLoader (`pin_memory`, `persistent_workers`, `prefetch_factor`).
    """
    from torch.utils.data import DataLoader

    pipeline = event_pipeline(urls, limits, stages=stages, repeat=repeat, replay_bytes=replay_bytes)
    workers = min(workers, len(urls))
    if not workers:  # options that only apply to worker processes
        loader_options = {k: v for k, v in loader_options.items()
                          if k not in ("persistent_workers", "prefetch_factor")}
    return DataLoader(pipeline, batch_size=None, num_workers=workers, collate_fn=pass_through,
                      **loader_options)


class RecordLoader:
    """Records of `event_pipeline` (sample dicts, `Skip`, `ShardEnd`) one by one, read in `workers`
    processes that send them to this one in chunks of `chunk` records.

    Every record crossing from a worker costs a queue round trip (pickling, a pipe write, the
    DataLoader's per-item bookkeeping) that can exceed the work of decoding a small image; a
    chunk pays it once. This is webdataset's own advice (batch in the workers, unbatch in the
    loop). A shard's records still come from one worker, in order, its `ShardEnd` last.
    """

    def __init__(self, urls: list[str], limits: ReadLimits = ReadLimits(), workers: int = 0,
                 chunk: int = 32, **loader_options: Any) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        # webdataset's own batching filter, without collation: lists of records
        self.loader = event_loader(urls, limits, stages=[wds.batched(chunk, collation_fn=None, partial=True)],
                                   workers=workers, **loader_options)

    def __iter__(self) -> Iterator[dict | Skip | ShardEnd]:
        for records in self.loader:
            yield from records
