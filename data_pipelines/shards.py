"""Shard I/O: the one module of mmw2s that touches webdataset (its API churns; change it here).

Reading: `expand_urls` turns brace patterns, globs, folders, `pipe:` commands and fsspec URLs into a
list of shard URLs; `shard_events` (`tar_reader.py`) streams each shard's samples, decoded and
checked (`sample_decode.py`), followed by one `ShardEnd` with that shard's counts. Skipped samples
travel in the stream as `Skip` records so that counts stay right when the stream is produced in
DataLoader worker processes. No sample can stop a stream: whatever fails while decoding one is its
skip reason; a failure that is not a sample's (a bug, a full disk) stops it as a `ShardError`
naming the shard.

Untrusted shards are data: only image, text and JSON members are read and decoded. Any other member
(`.pyd`, `.pickle`, `.pth`, ...) is counted and never read, let alone unpickled.

Writing: `ShardWriter` writes `NAME.tar.partial`, renames it to `NAME.tar` when closed, and writes
`NAME_stats.json` last, with the tar's size, SHA-256 and member count in its `tar` block. A shard
is complete only when its stats exist and the tar on disk matches them (`shard_state.py`, whose
names this module re-exports: the size on every check, the checksum with `verify="full"`);
anything else is redone. Member names are always
safe (`is_safe_key`) and JSON is always strict (no bare NaN or Infinity). State files (stats,
thresholds) are read by `read_state_json`, which names the file when it is corrupt.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import braceexpand
import webdataset as wds
from PIL import Image

from mmw2s.data_pipelines.sample_decode import (DEFAULT_MAX_PIXELS, IMAGE_EXTS, JSON_EXTS, READ_EXTS, TEXT_EXTS,
                                          ReadLimits, Skip, clip_text, decode_sample, is_safe_key, safe_key,
                                          strict_json_value, viewed_rgb)
from mmw2s.data_pipelines.shard_state import (OtherSettings, StateFileError, complete_with, file_sha256,
                                               is_complete, read_state_json, stats_path, tar_problem, verified_stats)
from mmw2s.data_pipelines.tar_reader import TAR_SUFFIXES, ShardEnd, open_shard, shard_events, shard_name

__all__ = ["clip_text", "DEFAULT_MAX_PIXELS", "IMAGE_EXTS", "JSON_EXTS", "READ_EXTS", "TEXT_EXTS", "ReadLimits", "Skip",
           "ShardEnd", "ShardError", "decode_sample", "is_safe_key", "safe_key", "strict_json_value",
           "viewed_rgb", "open_shard", "shard_events", "shard_name", "expand_urls", "iter_samples",
           "event_pipeline", "event_loader", "RecordLoader", "ShardWriter", "stats_path", "is_complete",
           "complete_with", "OtherSettings", "write_json_atomic", "strict_json_dumps", "CurrentShard",
           "StateFileError", "read_state_json", "tar_problem", "file_sha256", "verified_stats"]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


# --------------------------------------------------------------------------------------------
# URLs


def expand_urls(spec: str | os.PathLike | Iterable[str]) -> list[str]:
    """Expand a shard spec into URLs, in order.

    Accepts a list, or a string of `::`-separated parts, each a brace pattern
    (`shards/{00000..00009}.tar`), a glob (`shards/*.tar`), a folder (all its `*.tar`, `*.tar.gz`,
    `*.tgz`, `*.tar.bz2`, `*.tar.xz`, ... in name order: what `tarfile` reads), a `pipe:`
    command or a remote/fsspec URL (`s3://...`, `gs://...`). Raises `FileNotFoundError` when a
    local part matches nothing.
    """
    parts = [str(spec)] if isinstance(spec, (str, os.PathLike)) else [str(s) for s in spec]
    urls: list[str] = []
    for part in (p for item in parts for p in item.split("::") if p):
        for url in braceexpand.braceexpand(part):
            urls.extend(_expand_one(url))
    return urls


def _expand_one(url: str) -> list[str]:
    if url.startswith("pipe:") or "://" in url:
        return [url]
    if os.path.isdir(url):
        found = sorted(os.path.join(url, name) for name in os.listdir(url)
                       if name.endswith(TAR_SUFFIXES) and os.path.isfile(os.path.join(url, name)))
        if not found:
            raise FileNotFoundError(f"no .tar (or .tar.gz, .tgz, ...) shards in folder {url}")
        return found
    if glob.has_magic(url):
        found = sorted(glob.glob(url))
        if not found:
            raise FileNotFoundError(f"no shards match {url}")
        return found
    if not os.path.exists(url):
        raise FileNotFoundError(f"shard not found: {url}")
    return [url]


def iter_samples(urls: str | Iterable[str], limits: ReadLimits = ReadLimits(),
                 on_shard_end: Callable[[ShardEnd], None] | None = None) -> Iterator[dict]:
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


class ShardReplay:
    """A repeated shard's records from memory: read and decoded once, replayed on later passes.

    A training stream cycles through its shards many times (a demo student makes ~6 passes), and
    re-reading a tar, parsing its JSON and decoding its images was a quarter of a student's CPU
    time. A pass replays exactly the records the first read made, in the same order (shallow
    copies, so a stage that changes a sample dict cannot change the next pass), so training is
    bit-identical with or without it. Shards are kept while their decoded records fit in
    `budget_bytes`; the rest are read from disk each pass, as without it.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget, self.used = budget_bytes, 0
        self.kept: dict[str, list[Any]] = {}
        self.too_big: set[str] = set()  # read from disk every pass, without holding its records

    def events(self, url: str, limits: ReadLimits) -> Iterator[Any]:
        if url in self.kept:
            yield from map(copy.copy, self.kept[url])
            return
        if url in self.too_big:
            yield from shard_events(url, limits)
            return
        records: list[Any] | None = []
        size = 0
        for record in shard_events(url, limits):
            if records is not None:
                size += _record_bytes(record)
                records.append(copy.copy(record))
                if self.used + size > self.budget:
                    records = None  # this shard does not fit: stop holding its records
                    self.too_big.add(url)
            yield record
        if records is not None:
            self.kept[url], self.used = records, self.used + size


def _record_bytes(record: Any) -> int:
    """About what a decoded record holds in memory: its image's pixels and its strings."""
    if not isinstance(record, dict):
        return 256
    size = 256
    for value in record.values():
        if isinstance(value, Image.Image):
            size += value.width * value.height * len(value.getbands())
        elif isinstance(value, (str, bytes)):
            size += len(value)
        elif isinstance(value, dict):
            size += 64 * len(value) + sum(len(v) for v in value.values() if isinstance(v, str))
    return size


class ShardError(RuntimeError):
    """A failure that is no sample's fault (a bug, a full disk), raised with the shard it hit."""


def _record_url(record: Any) -> str | None:
    if isinstance(record, dict):
        return record.get("__url__") or record.get("url")  # a sample, or an entry of the shard list
    return getattr(record, "url", None)  # Skip, ShardEnd, and stage records such as batches


class CurrentShard:
    """Names the shard in a failure that stops a stream of records.

    `track(records)` goes right after the reader and remembers the shard of the last record read;
    `guard(records)` goes last and re-raises any failure of the stages in between (which pass one
    record on at a time) as a `ShardError` naming that shard, the original chained.
    """

    def __init__(self, what: str = "reading") -> None:
        self.what = what
        self.url: str | None = None

    def track(self, records: Iterable[Any]) -> Iterator[Any]:
        for record in records:
            self.url = _record_url(record) or self.url
            yield record

    def guard(self, records: Iterable[Any]) -> Iterator[Any]:
        try:
            yield from records
        except ShardError:
            raise
        except Exception as exn:  # noqa: BLE001 - re-raised, with the shard named
            raise ShardError(f"stopped while {self.what} shard {self.url}: {type(exn).__name__}: {exn}") from exn


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
    pipeline = [_cycle(shards) if repeat else shards, wds.split_by_worker,
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


def _cycle(shards: wds.SimpleShardList) -> Callable[[], Iterator[dict]]:
    def forever() -> Iterator[dict]:
        while True:
            yield from iter(shards)
    return forever


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


# --------------------------------------------------------------------------------------------
# Writing


def strict_json_dumps(data: Any, **options: Any) -> str:
    """`json.dumps` that only writes strict JSON: non-finite numbers as null (`strict_json_value`),
    and `allow_nan=False` as a guard. Browsers, `jq` and other languages reject bare `NaN`."""
    return json.dumps(strict_json_value(data), allow_nan=False, **options)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write (strict) JSON to `path` via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        tmp.write_text(strict_json_dumps(data, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind
        raise


class ShardWriter:
    """Write one img2dataset-style shard atomically.

    >>> with ShardWriter("out/00000.tar") as w:
    ...     w.write({"__key__": "000000000", "jpg": jpeg_bytes, "txt": "a red circle", "json": {...}})
    ...     w.close(stats={"count": 1})

    Members are written as given: bytes unchanged (images are never re-encoded), `str` as UTF-8,
    dict/list as strict JSON (non-finite numbers as null). A key that is not a safe member name
    (`is_safe_key`: relative, no `..`, plain characters) is refused: readers rename such keys. `mtime` is fixed so the same samples give byte-identical tars; it is stored in
    whole seconds, because a float mtime makes tarfile add a pax header to every member (twice the
    header blocks to write, and to parse on every later read). Leaving the `with` block without
    `close` (an exception, a kill) leaves only `NAME.tar.partial` behind.

    A shard may be started twice at once (a Ray task re-run while its first process still
    writes): only one writer at a time holds `NAME.tar.partial` (an `flock`, which the kernel
    releases when its holder dies); the second waits, then writes the shard anew.
    """

    def __init__(self, path: str | os.PathLike, *, mtime: float = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self._file = _open_locked(self.partial)  # a second writer of this shard waits here
        stats_path(self.path).unlink(missing_ok=True)  # an old stats file would mark us complete
        self._digest = _Digest(self._file)  # size and SHA-256 as written: no second read at close
        self._tar = wds.TarWriter(self._digest, encoder=False, mtime=int(mtime),
                                  user="mmw2s", group="mmw2s", mode=0o444)
        self.count = 0
        self.members = 0
        self.closed = False

    def write(self, sample: dict) -> None:
        """Add one sample: `__key__` plus members by extension (`jpg`, `txt`, `json`, ...)."""
        if "__key__" not in sample:
            raise ValueError("a sample needs a '__key__'")
        if not isinstance(sample["__key__"], str) or not is_safe_key(sample["__key__"]):
            raise ValueError(f"unsafe member name {sample['__key__']!r}: use safe_key() (the reader's name)")
        encoded = {k: _encode_member(k, v) for k, v in sample.items()
                   if not k.startswith("__") or k == "__key__"}
        self._tar.write(encoded)
        self.count += 1
        self.members += len(encoded) - 1

    def close(self, stats: dict | None = None) -> dict:
        """Finish the tar, rename it into place, then write `NAME_stats.json`; returns the stats
        as written, with the tar's `bytes`, `sha256` and `members` (what resume checks)."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())  # the tar's bytes are on disk before the stats vouch for them
        stats = {**(stats if stats is not None else {"count": self.count}), "tar": self._digest.record(self.members)}
        os.replace(self.partial, self.path)  # still holding the lock: no other writer sees this file
        write_json_atomic(stats_path(self.path), stats)
        self._file.close()  # releases the lock
        self.closed = True
        return stats

    def abort(self) -> None:
        """Drop the partial tar (nothing is renamed into place)."""
        if not self.closed:
            try:
                self._tar.close()  # else tarfile's finaliser writes to the closed file later
            except (OSError, ValueError):
                pass
            self.partial.unlink(missing_ok=True)  # before the lock goes, as in `close`
            try:
                self._file.close()  # flushing a full disk fails again: the error that got us here counts
            except OSError:
                pass
            self.closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed:
            self.abort()


class _Digest:
    """A write-only stream in front of `file` that counts and hashes the bytes written through it."""

    def __init__(self, file: Any) -> None:
        self.file, self.size, self.sha256 = file, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.file.write(data)
        self.size += len(data)
        self.sha256.update(data)
        return len(data)

    def record(self, members: int) -> dict:
        return {"bytes": self.size, "sha256": self.sha256.hexdigest(), "members": members}


def _open_locked(path: Path):
    """`path` opened for writing and emptied, once no other live writer holds its lock."""
    import fcntl

    while True:
        file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666), "wb")  # truncated once locked
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(file.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            file.truncate(0)
            return file
        file.close()  # the last holder renamed or removed it meanwhile: lock what is at `path` now


def _encode_member(key: str, value: Any) -> Any:
    if key == "__key__" or isinstance(value, (bytes, bytearray, memoryview)):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return strict_json_dumps(value, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"member '{key}' must be bytes, str, dict or list, got {type(value).__name__}")
