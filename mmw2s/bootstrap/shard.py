"""Bootstrapping input shards: the one function every engine calls.

`bootstrap_shards(urls, job, models)` turns each input shard into its output shard (caption ->
score -> decide -> write, `pipeline.py` and `writer.py`) and yields each shard's stats as the shard
closes; `bootstrap_shard(url, job, models)` is the same for one shard. An engine only decides who
calls it on which shards (img2dataset's distributors share one downloader the same way):

- `engines/local.py`: this process, or each `accelerate launch` rank, on its static share,
  `bootstrap_shards(urls[rank::N])`: a rank's data-loader workers then read ahead across shard
  boundaries (one loader per shard would wait for each shard's first batch);
- `engines/ray.py`: a pool of Ray actors, `bootstrap_shard(url)` per task.

An output shard depends only on its input shard and the `ShardJob` (batches never cross shards,
sampling seeds come from seed, shard and first key): the same bytes whoever writes it, in whatever
order, however often it was started. Nothing here imports an engine, accelerate or Ray.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from torch.utils.data import DataLoader, IterableDataset

from mmw2s.data_pipelines import (CurrentShard, OtherSettings, ReadLimits, complete_with, event_loader,
                                   pass_through, shard_events, stats_path)

from mmw2s.bootstrap.config import BootstrapConfig
from mmw2s.bootstrap.curation import curated
from mmw2s.bootstrap.parquet import has_metadata
from mmw2s.bootstrap.pipeline import (BatchEvent, OutputSample, Selection, batch_stage, caption_stage, decide_stage,
                                      score_stage)
from mmw2s.bootstrap.thresholds import Thresholds
from mmw2s.bootstrap.writer import ShardDone, ShardOutputs, output_path, write_stage
from mmw2s.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardJob:
    """What decides an output shard besides its input: the config, the run's thresholds and their
    fingerprint. Small and picklable: the Ray engine sends it to every actor."""

    cfg: BootstrapConfig
    thresholds: Thresholds
    fingerprint: str

    @property
    def shards_dir(self) -> Path:
        return Path(self.cfg.out) / "shards"


def read_limits(cfg: BootstrapConfig) -> ReadLimits:
    """What shard I/O accepts as a sample (images decoded, a caption required), and how often a
    source that fails to open is tried again."""
    return ReadLimits(max_pixels=cfg.max_pixels, decode_images=True, require_caption=True,
                      max_caption_chars=cfg.max_caption_chars, long_captions=cfg.long_captions,
                      io_retries=cfg.io_retries, io_backoff_s=cfg.io_backoff_s)


def loader(urls: list[str], cfg: BootstrapConfig, preprocess: Any):
    """Batches of `urls` decoded and preprocessed in `cfg.workers` data-loader processes.

    On CUDA the batches' tensors arrive pinned, so their copy to the GPU overlaps the models.
    """
    import torch

    stage = functools.partial(batch_stage, batch_size=cfg.batch_size, preprocess=preprocess)
    pin = cfg.device != "cpu" and torch.cuda.is_available()
    return event_loader(urls, read_limits(cfg), stages=[stage], workers=cfg.workers, prefetch_factor=4,
                        pin_memory=pin)


class ShardReader:
    """Reads one shard at a time in a data-loader worker that lives as long as the reader.

    For a caller that is handed shards one by one (a Ray actor): `loader([url])` per shard forks
    a fresh worker from a process holding the models each time, and while that worker lives
    every page the models touch is copied on write, which costs more than the reading (docs:
    performance, "engine=ray"). Here the worker is forked once (on the first
    shard) and receives each shard's URL through a queue. `read(url)` gives the same batches,
    `Skip`s and `ShardEnd` as `loader([url], ...)`. With `workers=0` it reads in this process.
    """

    def __init__(self, cfg: BootstrapConfig, preprocess: Any) -> None:
        import torch

        self.cfg, self.preprocess, self.urls = cfg, preprocess, multiprocessing.SimpleQueue()
        feed = _ShardFeed(self.urls, read_limits(cfg), cfg.batch_size, preprocess)
        pin = cfg.device != "cpu" and torch.cuda.is_available()
        self.loader = DataLoader(feed, batch_size=None, num_workers=1, persistent_workers=True, prefetch_factor=4,
                                 collate_fn=pass_through, pin_memory=pin) if cfg.workers else None

    def read(self, url: str) -> Iterator[BatchEvent]:
        """The batch stream of shard `url`."""
        if self.loader is None:
            return iter(loader([url], self.cfg, self.preprocess))
        self.urls.put(url)
        return iter(self.loader)  # one epoch of the persistent worker = this shard


class _ShardFeed(IterableDataset):
    """The worker's side of `ShardReader`: each iteration reads the next URL's shard, batched."""

    def __init__(self, urls: Any, limits: ReadLimits, batch_size: int, preprocess: Any) -> None:
        self.urls, self.limits, self.batch_size, self.preprocess = urls, limits, batch_size, preprocess

    def __iter__(self) -> Iterator[BatchEvent]:
        yield from batch_stage(shard_events(self.urls.get(), self.limits), self.batch_size, self.preprocess)


def is_done(out: Path, url: str, fingerprint: str, verify: str = "size") -> bool:
    """Whether the output of `url` under run folder `out` is complete, made by these settings, and
    its tar is the one its stats describe (else it is redone, with a warning naming it)."""
    try:
        path = output_path(out / "shards", url)
        return complete_with(path, fingerprint, verify) and has_metadata(path)
    except OtherSettings as exn:
        raise StageError(f"{exn}; use another out= or delete {out / 'shards'} to redo it") from None


def unreadable_shards(stats: Iterable[dict]) -> list[dict]:
    """`{input, reason}` of the shards among `stats` whose source could not be read (no output)."""
    return [{"input": s["input"], "reason": s["unreadable"]} for s in stats if s.get("unreadable")]


def bootstrap_shards(urls: list[str], job: ShardJob, models: Any,
                     on_sample: Callable[[OutputSample], None] | None = None,
                     events: Iterable[BatchEvent] | None = None) -> Iterator[dict]:
    """Bootstrap each of `urls` into `job.shards_dir`; yields each shard's stats as it closes.

    `models` is a `CapFilt` (or anything with its `preprocessor`, `caption`, `score` and
    `provenance`). `on_sample` sees every decided output sample (progress bars). `events` is the
    batch stream of `urls` when a caller started reading it already (`loader(urls, ...)`, which
    is read otherwise). An error aborts the shards still open: only complete shards and
    `.partial` leftovers remain.
    """
    cfg = job.cfg
    selection = Selection(choose=cfg.selection.choose, nothing_kept=cfg.selection.nothing_kept)
    shard = CurrentShard("bootstrapping")  # a failure of the models or the writer names its shard
    events = iter(events if events is not None else loader(urls, cfg, models.preprocessor))
    stream = caption_stage(curated(shard.track(events), cfg, models), models.caption, cfg.seed)
    stream = score_stage(stream, models.score)
    stream = decide_stage(stream, job.thresholds, selection, models.provenance(cfg))
    usage = getattr(models, "shard_usage", None)  # an endpoint captioner's requests per shard
    with ShardOutputs(job.shards_dir, {"fingerprint": job.fingerprint}, usage) as outputs:
        for item in shard.guard(write_stage(stream, outputs)):
            if isinstance(item, OutputSample) and on_sample is not None:
                on_sample(item)
            elif isinstance(item, ShardDone):
                log.debug("shard %s done: %s", item.end.name, item.stats)
                yield item.stats


def bootstrap_shard(url: str, job: ShardJob, models: Any, events: Iterable[BatchEvent] | None = None) -> dict:
    """Bootstrap one input shard; returns its stats (what `{shard}_stats.json` holds)."""
    stats = list(bootstrap_shards([url], job, models, events=events))
    if len(stats) != 1:  # shard I/O ends every shard with exactly one ShardEnd
        raise RuntimeError(f"{url}: expected one finished shard, got {len(stats)}")
    return stats[0]


def model_threads(cfg: BootstrapConfig, cores: int) -> int:
    """Torch intra-op threads of a model process on CPU that has `cores` cores to itself.

    `cpu_threads` when set, else the cores its data-loader workers leave (at least 1): threads
    that outnumber free cores spin against the decoding workers and slow the models down many
    times over (docs: performance).
    """
    return cfg.cpu_threads or max(1, cores - cfg.workers)


def expected_samples(url: str) -> int | None:
    """Samples in an input shard according to its img2dataset `_stats.json`, if readable."""
    try:
        stats = json.loads(stats_path(url).read_text())
        return int(stats.get("successes", stats["count"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def cpu_threads(cfg: BootstrapConfig, device: Any) -> Iterator[None]:
    """Give this model process (on CPU) the threads `model_threads` allows, then restore them.

    Its cores are this machine's shared by the ranks `accelerate launch` started on it.
    """
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    before = torch.get_num_threads()
    torch.set_num_threads(model_threads(cfg, cores // ranks_here))
    try:
        yield
    finally:
        torch.set_num_threads(before)  # an in-process caller (the experiment runner) gets its own back
