"""Reading one untrusted shard: tar members -> samples -> `shard_events`, with exact accounting.

webdataset's `tar_file_expander` + `group_by_keys` read members without looking at their sizes,
stop the whole shard at a repeated member name (`duplicate file name in tar file`), drop names
without a key silently, and cannot tell a cut-off tar from a whole one; so the member loop is ours,
over the standard library's `tarfile` in stream mode (as webdataset's is), on webdataset's key rule
(`tariterators.base_plus_ext`: the key is the path up to the first dot of the file name).

The rules, each counted in the shard's `ShardEnd`:
- a member that is not a regular file (link, folder, device, sparse file), not an image, `.txt` or
  `.json` (`.pyd`, `.pickle`, ...), or has no key (`.jpg`) is ignored unread (`ignored_members`);
- a member over `max_member_bytes` is not read, and its sample is skipped (`member_too_large`);
- samples are runs of consecutive members of one key; a repeated extension starts a new sample;
- duplicate keys: the first sample of a key is the one kept; any later sample with the same key,
  right after it or anywhere later in the shard, is skipped (`duplicate_key`);
- unsafe keys are renamed (`sample_decode.safe_key`; counted in `changed["key_renamed"]`), the
  original travels as `DecodedSample.original_key`;
- compression: gzip, bzip2 and xz shards (what `tarfile` and so webdataset read) are decompressed
  here, so the end-of-archive check below runs on the tar itself;
- a shard is whole only if `tarfile` stopped at the end-of-archive marker (two zero blocks) and
  nothing but zeros follows; else `damaged` says why (a cut-off download, a corrupt header), and
  the samples before the break are kept;
- a shard that *could not be read* is another thing: its source failed to open, is no tar at all
  (empty, another format), or failed under us (an I/O error, a `pipe:` command that exited
  non-zero). Such a failure is often transient (S3, NFS), so a source that fails before its first
  sample is opened again `io_retries` times with doubling backoff; if it still fails (or failed
  after samples were read), `ShardEnd.unreadable` says why and the writer keeps nothing of it, so
  that a rerun reads it again instead of trusting an empty shard.

`iter_tar_groups` runs the same member loop for a tar that must be read whole (a benchmark): the
members of the extensions asked for, undecoded, and a `ValueError` for whatever keeps it from
being read whole.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import logging
import lzma
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator

import webdataset as wds
from webdataset.tariterators import base_plus_ext

from mmw2s.data_pipelines.sample_decode import (READ_EXTS, DecodedSample, ReadLimits, Skip, clip_text, decode_sample,
                                                safe_key)

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
_SNIFF = 10  # bytes: enough for every magic below
SKIP_LOG_LIMIT = 5  # skipped samples logged by key per shard; the rest only counted


def shard_name(url: str) -> str:
    """`/a/b/00003.tar` (or `.tar.gz`, ...) -> `00003` (the img2dataset shard id)."""
    if url.startswith("pipe:"):
        # `pipe:aws s3 cp s3://b/00001.tar -`: the shard is the command's argument naming a tar.
        tars = [w for w in url[len("pipe:"):].split() if any(s in w for s in (".tar", ".tgz", ".tbz2", ".txz"))]
        url = tars[-1] if tars else url
    base = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    for ext in TAR_SUFFIXES:
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


@dataclass
class ShardEnd:
    """The last record of each shard: its counts, and whether the tar was damaged.

    `changed` counts samples yielded with something made safe (`key_renamed`, `caption_truncated`,
    `json_non_finite`, `invalid_unicode`).
    """
    url: str
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    ignored_members: int = 0
    damaged: str | None = None
    changed: dict[str, int] = field(default_factory=dict)
    unreadable: str | None = None  # the source failed (not the tar's content): nothing of it is kept

    @property
    def name(self) -> str:
        return shard_name(self.url)


# The records of the stream `shard_events` yields, and every stage passes on: a shard's decoded
# samples and skips in tar order, then its `ShardEnd`.
Event = DecodedSample | Skip | ShardEnd


def open_shard(url: str):
    """Open a shard for reading: local path, `pipe:` command, or any fsspec URL."""
    if url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    if "://" in url and not url.startswith("file://"):
        import fsspec  # only needed for remote storage

        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


class _Prefixed:
    """A stream with its first bytes (read to sniff the compression) put back in front."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head, self._stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data if len(data) == size else data + self._stream.read(size - len(data))


def _decompressed(stream: IO[bytes]) -> IO[bytes]:
    """The tar bytes of `stream`: gzip, bzip2 and xz are recognised by their magic bytes."""
    head = b""
    while len(head) < _SNIFF:
        more = stream.read(_SNIFF - len(head))
        if not more:
            break
        head += more
    source = _Prefixed(head, stream)
    if head.startswith(b"\x1f\x8b\x08"):
        return gzip.GzipFile(fileobj=source)
    if head.startswith(b"BZh") and head[4:10] == b"1AY&SY":
        return bz2.BZ2File(source)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(source)
    return source


class _Tracked:
    """A read-only stream that counts the bytes read and where the last non-zero byte was."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.position = 0
        self.last_data = -1  # offset of the last non-zero byte read

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            kept = len(data.rstrip(b"\0"))
            if kept:
                self.last_data = self.position + kept - 1
            self.position += len(data)
        return data

    def damage_at_end(self, tar_offset: int) -> str | None:
        """Read the rest; None when `tar_offset` is a whole end-of-archive marker with only zeros after."""
        while self.read(1 << 16):
            pass
        if self.last_data >= tar_offset:
            return (f"unreadable member header at byte {tar_offset}: the {self.position - tar_offset} bytes "
                    "from there were not read (a corrupt header, or data after the end-of-archive marker)")
        if self.position - tar_offset < 2 * tarfile.BLOCKSIZE:
            return "truncated: the tar ends without its end-of-archive marker"
        return None


class _Damage(Exception):
    """The tar itself cannot be read on (as opposed to one sample in it)."""


class _Unreadable(Exception):
    """The source failed (open, I/O, a `pipe:` exit status) or holds no tar at all."""


def _is_source_failure(exn: BaseException) -> bool:
    """An I/O error of the stream under the tar, as opposed to a corrupt tar or compression."""
    return isinstance(exn, OSError) and not isinstance(exn, gzip.BadGzipFile)


def _describe(exn: BaseException) -> str:
    return clip_text(f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}")


@contextlib.contextmanager
def tar_stream(url: str) -> Iterator[tuple[tarfile.TarFile, Callable[[], str | None]]]:
    """A streaming `TarFile` over shard `url` (decompressed as `shard_events` does) and a check to
    call once its members are read: None when the tar ended at its end-of-archive marker, else
    what is wrong (tarfile itself stops quietly at a cut-off tar)."""
    source = open_shard(url)
    try:
        stream = _Tracked(_decompressed(source))
        tar = tarfile.open(fileobj=stream, mode="r|")
        yield tar, lambda: stream.damage_at_end(tar.offset)
    finally:
        source.close()


def _members(tar: tarfile.TarFile, wanted: frozenset[str], max_member_bytes: int,
             end: ShardEnd) -> Iterator[tuple[str, str, bytes | None]]:
    """`(key, ext, bytes or None when too large)` of the members we read; the rest are counted."""
    while True:
        try:
            info = tar.next()
        except Exception as exn:  # noqa: BLE001 - any failure of the tar's structure
            raise (_Unreadable if _is_source_failure(exn) else _Damage)(_describe(exn)) from exn
        if info is None:
            return
        tar.members = []  # tarfile keeps every header it read; a shard can hold millions
        key, ext = base_plus_ext(info.name) if info.isreg() and not info.issparse() else (None, None)
        ext = ext.lower() if ext else ext
        if key is None or ext not in wanted:
            end.ignored_members += 1
            continue
        if info.size > max_member_bytes:
            yield key, ext, None
            continue
        try:
            data = tar.extractfile(info).read()
        except Exception as exn:  # noqa: BLE001 - e.g. the data of the member is cut off
            raise (_Unreadable if _is_source_failure(exn) else _Damage)(_describe(exn)) from exn
        yield key, ext, data


@dataclass
class _CutOff:
    """The sample a break in the tar cut through: counted as a `cut_off` skip, never decoded."""
    key: str


def _groups(members: Iterator[tuple[str, str, bytes | None]], url: str) -> Iterator[dict | _CutOff]:
    """Runs of consecutive members with one key, as webdataset dicts (`__key__`, `__url__`, one
    entry per extension); a repeated extension starts the next run."""
    current: dict | None = None
    try:
        for key, ext, data in members:
            if current is not None and (key != current["__key__"] or ext in current):
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = data
    except _Unreadable:
        raise  # nothing of the shard is kept: no need to count the sample it cut
    except _Damage:
        if current is not None:  # the sample the break cut through is counted too
            yield _CutOff(current["__key__"])
        raise
    if current is not None:
        yield current


def _samples(tar: tarfile.TarFile, url: str, limits: ReadLimits, end: ShardEnd) -> Iterator[DecodedSample | Skip]:
    """Decoded samples and `Skip`s, the first sample of each (safe) key kept; what was made safe in
    the samples is counted in `end.changed`."""
    seen: set[str] = set()
    for group in _groups(_members(tar, READ_EXTS, limits.max_member_bytes, end), url):
        key = group.key if isinstance(group, _CutOff) else group["__key__"]
        name = safe_key(key)
        if name in seen:
            yield Skip(url, key, "duplicate_key", "a sample with this key came earlier in the shard")
            continue
        seen.add(name)
        if isinstance(group, _CutOff):
            yield Skip(url, key, "cut_off", "the tar breaks inside this sample")
            continue
        changes: set[str] = set()
        item = decode_sample(group, limits, changes)
        if not isinstance(item, Skip):
            if name != key:
                item["__key__"], item["original_key"] = name, key
                changes.add("key_renamed")
            for change in sorted(changes):
                end.changed[change] = end.changed.get(change, 0) + 1
        yield item


def shard_events(url: str, limits: ReadLimits = ReadLimits()) -> Iterator[Event]:
    """Stream one shard: `DecodedSample`s and `Skip` records, then one `ShardEnd`.

    A damaged tar (truncated, corrupt header) yields the samples before the break; the `ShardEnd`
    names the damage. A source that cannot be read is retried (see the module docstring) and
    else ends in a `ShardEnd` with `unreadable` set. A failure that is not the shard's (a bug, a
    full disk downstream) propagates.
    """
    for attempt in range(limits.io_retries + 1):
        end = ShardEnd(url=url)
        started = False
        for item in _attempt(url, limits, end):
            started = started or not isinstance(item, ShardEnd)
            if isinstance(item, ShardEnd) and item.unreadable and not started and attempt < limits.io_retries:
                delay = limits.io_backoff_s * 2 ** attempt
                log.warning("shard %s could not be read (%s); retrying in %.1f s", url, item.unreadable, delay)
                time.sleep(delay)
                break
            yield item
        else:
            return


def _attempt(url: str, limits: ReadLimits, end: ShardEnd) -> Iterator[Event]:
    """One try at reading `url`: its records, then its `ShardEnd`."""
    errors: list[str] = []
    skipped: Counter = Counter()
    try:
        source = open_shard(url)
    except Exception as exn:  # noqa: BLE001 - a missing or unreadable shard is reported, not fatal
        end.unreadable = _describe(exn)
        source = None
    if source is not None:
        try:
            for item in _read(source, url, limits, end, errors):
                if isinstance(item, Skip):
                    skipped[item.reason] += 1
                    if skipped.total() <= SKIP_LOG_LIMIT:
                        log.warning("shard %s: skipped sample %r (%s) %s", url, clip_text(item.key, 80),
                                    item.reason, item.detail)
                else:
                    end.samples += 1
                yield item
        finally:
            try:
                source.close()
            except Exception as exn:  # noqa: BLE001 - e.g. a `pipe:` command that exited non-zero
                _name_source_failure(end, _describe(exn))
    end.skipped = dict(skipped)
    end.damaged = "; ".join(errors) or None
    if end.unreadable:
        log.warning("shard %s could not be read after %d samples: %s", url, end.samples, end.unreadable)
    elif end.damaged:
        log.warning("shard %s is damaged after %d samples: %s", url, end.samples, end.damaged)
    if skipped:
        log.warning("shard %s: skipped %s", url, dict(skipped))
    yield end


def _name_source_failure(end: ShardEnd, failure: str) -> None:
    """Record why the source failed on closing (a `pipe:` command's exit status). It is the cause of
    whatever reading saw before (an "empty file" is what a failed command leaves), and whether
    reading saw it first depends on when the command exited: so it is always named."""
    if not end.unreadable:
        end.unreadable = failure
    elif failure not in end.unreadable:
        end.unreadable = f"{end.unreadable} ({failure})"


def _read(source: Any, url: str, limits: ReadLimits, end: ShardEnd,
          errors: list[str]) -> Iterator[DecodedSample | Skip]:
    try:
        stream = _Tracked(_decompressed(source))
        tar = tarfile.open(fileobj=stream, mode="r|")
    except (tarfile.ReadError, OSError) as exn:  # not a tar at all (an empty file, another format), or I/O
        if _is_source_failure(exn) or isinstance(exn, tarfile.ReadError):
            end.unreadable = f"not a readable tar: {_describe(exn)}"
            return
        errors.append(_describe(exn))  # a corrupt gzip header: damaged, as below
        return
    except Exception as exn:  # noqa: BLE001 - a compressed download cut off before the first member
        errors.append(_describe(exn))
        return
    try:
        yield from _samples(tar, url, limits, end)
    except _Unreadable as exn:
        end.unreadable = str(exn)
        return
    except _Damage as exn:
        errors.append(str(exn))
        return
    try:
        damage = stream.damage_at_end(tar.offset)
    except Exception as exn:  # noqa: BLE001 - the source or decompressor failing on the rest (bad CRC, ...)
        if _is_source_failure(exn):
            end.unreadable = _describe(exn)
            return
        damage = _describe(exn)
    if damage:
        errors.append(damage)


def iter_tar_groups(url: str, wanted: frozenset[str],
                    max_member_bytes: int = ReadLimits.max_member_bytes) -> Iterator[dict]:
    """The samples of a tar that must be read whole (a benchmark), undecoded: webdataset dicts of
    `__key__`, `__url__` and the bytes of the members whose extension is in `wanted`, grouped by
    the member loop of `shard_events` (its key rule, member types and size limit). Members of other
    extensions are never read, so nothing is ever unpickled. Streams: the tar is read once, front
    to back. A tar that cannot be read whole (damaged, unreadable, a member over
    `max_member_bytes`) raises a `ValueError` naming it: a benchmark cut short would score a model
    on part of it, silently."""
    try:
        with tar_stream(url) as (tar, damage):
            for group in _groups(_members(tar, wanted, max_member_bytes, ShardEnd(url)), url):
                if isinstance(group, _CutOff):
                    continue  # the damage that cut it is raised next
                too_large = sorted(ext for ext, data in group.items() if data is None)
                if too_large:
                    raise ValueError(f"{url}: sample {group['__key__']}: {', '.join(too_large)} over "
                                     f"{max_member_bytes} bytes")
                yield group
            problem = damage()
    except (_Damage, _Unreadable) as exn:
        raise ValueError(f"{url}: not a readable tar ({exn})") from None
    except (tarfile.TarError, EOFError, OSError) as exn:  # opening it, or reading on after its last member
        raise ValueError(f"{url}: not a readable tar ({_describe(exn)})") from None
    if problem:
        raise ValueError(f"{url}: not a readable tar ({problem})")
