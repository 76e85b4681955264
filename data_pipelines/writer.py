"""Writing shards and state files: `ShardWriter` (atomic, hashed, locked) and `write_json_atomic`.

`ShardWriter` writes `NAME.tar.partial`, renames it to `NAME.tar` when closed, and writes
`NAME_stats.json` last, with the tar's size, SHA-256 and member count in its `tar` block. A shard
is complete only when its stats exist and the tar on disk matches them (`shard_state.py`: the size
on every check, the checksum with `verify="full"`); anything else is redone. Member names are
always safe (`is_safe_key`) and JSON is always strict (no bare NaN or Infinity). State files (stats,
thresholds) are read by `read_state_json`, which names the file when it is corrupt.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import webdataset as wds

from mmw2s.data_pipelines.sample_decode import is_safe_key, strict_json_value
from mmw2s.data_pipelines.shard_state import stats_path

PARTIAL_SUFFIX = ".partial"


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
