"""Shard I/O: the one module of mmw2s that touches webdataset (its API churns; change it here).

Reading: `expand_urls` turns brace patterns, globs, folders, `pipe:` commands and fsspec URLs into a
list of shard URLs; `shard_events` streams each shard's samples, decoded and checked, followed by one
`ShardEnd` with that shard's counts. Skipped samples travel in the stream as `Skip` records so that
counts stay right when the stream is produced in DataLoader worker processes.

Untrusted shards are data: only image, text and JSON members are read and decoded. Any other member
(`.pyd`, `.pickle`, `.pth`, ...) is counted and never read, let alone unpickled.

Writing: `ShardWriter` writes `NAME.tar.partial`, renames it to `NAME.tar` when closed, and writes
`NAME_stats.json` last: a shard whose stats exist is complete.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import braceexpand
import webdataset as wds
from PIL import Image
from webdataset import tariterators

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt",)
JSON_EXTS = ("json",)
READ_EXTS = frozenset(IMAGE_EXTS + TEXT_EXTS + JSON_EXTS)
DEFAULT_MAX_PIXELS = 4096 * 4096
PARTIAL_SUFFIX = ".partial"


# --------------------------------------------------------------------------------------------
# URLs


def expand_urls(spec: str | os.PathLike | Iterable[str]) -> list[str]:
    """Expand a shard spec into URLs, in order.

    Accepts a list, or a string of `::`-separated parts, each a brace pattern
    (`shards/{00000..00009}.tar`), a glob (`shards/*.tar`), a folder (all its `*.tar`), a `pipe:`
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
        found = sorted(glob.glob(os.path.join(url, "*.tar")))
        if not found:
            raise FileNotFoundError(f"no .tar shards in folder {url}")
        return found
    if glob.has_magic(url):
        found = sorted(glob.glob(url))
        if not found:
            raise FileNotFoundError(f"no shards match {url}")
        return found
    if not os.path.exists(url):
        raise FileNotFoundError(f"shard not found: {url}")
    return [url]


def shard_name(url: str) -> str:
    """`/a/b/00003.tar` -> `00003` (the img2dataset shard id, used for outputs and stats)."""
    if url.startswith("pipe:"):
        # `pipe:aws s3 cp s3://b/00001.tar -`: the shard is the command's argument naming a tar.
        tars = [w for w in url[len("pipe:"):].split() if ".tar" in w]
        url = tars[-1] if tars else url
    base = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    for ext in (".tar.gz", ".tgz", ".tar"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class ReadLimits:
    """What a sample must satisfy to be yielded; the rest is skipped and counted."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_images: bool = True
    require_caption: bool = True


@dataclass
class Skip:
    """A sample that was skipped, and why (`corrupt_image`, `no_image`, `no_caption`, ...)."""
    url: str
    key: str
    reason: str
    detail: str = ""


@dataclass
class ShardEnd:
    """The last record of each shard: its counts, and whether the tar was damaged."""
    url: str
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    ignored_members: int = 0
    damaged: str | None = None

    @property
    def name(self) -> str:
        return shard_name(self.url)


def open_shard(url: str):
    """Open a shard for reading: local path, `pipe:` command, or any fsspec URL."""
    if url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    if "://" in url and not url.startswith("file://"):
        import fsspec  # only needed for remote storage

        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


class _TailTracker:
    """A read-only stream wrapper that remembers the last bytes read (to detect truncation)."""

    TAIL = 1024  # a tar ends with two 512-byte zero blocks

    def __init__(self, stream) -> None:
        self._stream = stream
        self._tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._tail = (self._tail + data[-self.TAIL:])[-self.TAIL:]
        return data

    def ended_cleanly(self) -> bool:
        while self.read(1 << 16):  # drain the record padding after the marker
            pass
        return len(self._tail) == self.TAIL and not self._tail.strip(b"\0")

    def close(self) -> None:
        self._stream.close()


class _MemberFilter:
    """Selects the members we decode; counts the others without reading them."""

    def __init__(self) -> None:
        self.ignored = 0

    def __call__(self, fname: str) -> bool:
        ext = fname.rsplit(".", 1)[-1].lower() if "." in fname else ""
        if ext in READ_EXTS:
            return True
        self.ignored += 1
        return False


def shard_events(url: str, limits: ReadLimits = ReadLimits()) -> Iterator[dict | Skip | ShardEnd]:
    """Stream one shard: decoded sample dicts and `Skip` records, then one `ShardEnd`.

    A damaged tar (truncated, corrupt header) yields the samples before the break; the `ShardEnd`
    names the damage. An unreadable URL is a damaged shard with no samples.
    """
    end = ShardEnd(url=url)
    errors: list[str] = []

    def note(exn: Exception) -> bool:
        errors.append(f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}")
        return False  # stop reading this shard; the next shard goes on

    members = _MemberFilter()
    skipped: Counter = Counter()
    try:
        stream = open_shard(url)
    except Exception as exn:  # noqa: BLE001 - a missing or unreadable shard is reported, not fatal
        note(exn)
        stream = None
    if stream is not None:
        stream = _TailTracker(stream)
        try:
            files = tariterators.tar_file_expander(
                [{"url": url, "stream": stream}], handler=note, select_files=members)
            for raw in tariterators.group_by_keys(files, handler=note):
                item = decode_sample(raw, limits)
                if isinstance(item, Skip):
                    skipped[item.reason] += 1
                else:
                    end.samples += 1
                yield item
            if not errors and not stream.ended_cleanly():
                # tarfile stops silently at a truncated header; the missing end-of-archive
                # marker is how a cut-off download shows.
                errors.append("truncated: the tar ends without its end-of-archive marker")
        finally:
            try:
                stream.close()
            except Exception as exn:  # noqa: BLE001 - e.g. a `pipe:` command that exited non-zero
                note(exn)
    end.skipped = dict(skipped)
    end.ignored_members = members.ignored
    end.damaged = "; ".join(errors) or None
    if end.damaged:
        log.warning("shard %s is damaged after %d samples: %s", url, end.samples, end.damaged)
    if skipped:
        log.warning("shard %s: skipped %s", url, dict(skipped))
    yield end


def decode_sample(raw: dict, limits: ReadLimits) -> dict | Skip:
    """Decode one grouped tar sample into our sample dict, or say why it is skipped.

    Returns `{"__key__", "__url__", "image" (PIL RGB or None), "image_bytes", "image_ext",
    "caption", "json"}`. Only image/text/JSON bytes are looked at.
    """
    url, key = raw.get("__url__", ""), raw.get("__key__", "")
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        return Skip(url, key, "no_image")
    try:
        meta = json.loads(raw["json"]) if "json" in raw else {}
        if not isinstance(meta, dict):
            raise ValueError("top level is not an object")
    except (ValueError, UnicodeDecodeError) as exn:
        return Skip(url, key, "bad_json", str(exn))
    caption = _caption(raw, meta)
    if caption is None and limits.require_caption:
        return Skip(url, key, "no_caption")
    image = None
    if limits.decode_images:
        image = _decode_image(raw[ext], limits.max_pixels)
        if isinstance(image, str):
            reason, detail = image.split(":", 1)
            return Skip(url, key, reason, detail.strip())
    return {"__key__": key, "__url__": url, "image": image, "image_bytes": raw[ext],
            "image_ext": ext, "caption": caption, "json": meta}


def _caption(raw: dict, meta: dict) -> str | None:
    if "txt" in raw:
        try:
            text = raw["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        if text:
            return text
    text = meta.get("caption")
    return text.strip() if isinstance(text, str) and text.strip() else None


def _decode_image(data: bytes, max_pixels: int) -> Image.Image | str:
    """A fully loaded RGB image, or `"reason: detail"`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # Check the header's size before decoding the pixels: a bomb is never decoded.
            if image.width * image.height > max_pixels:
                return f"too_large: {image.width}x{image.height} > {max_pixels} pixels"
            image.load()
        return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exn:
        return f"too_large: {exn}"
    except Exception as exn:  # noqa: BLE001 - PIL raises many types for bad bytes
        return f"corrupt_image: {type(exn).__name__}: {exn}"


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


def _events_stage(src: Iterable[dict], limits: ReadLimits) -> Iterator[Any]:
    for item in src:
        yield from shard_events(item["url"], limits)


def event_pipeline(urls: list[str], limits: ReadLimits = ReadLimits(),
                   stages: Iterable[Callable] = (), repeat: bool = False) -> wds.DataPipeline:
    """An `IterableDataset` over `shard_events` of `urls`, shards split across DataLoader workers.

    Use it with `torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=N)`: each worker
    reads whole shards, so a shard's samples and its `ShardEnd` come from one worker, in order.
    `stages` are further webdataset-style stages `f(iterator) -> iterator` run in the workers
    (decoding to tensors, batching). With `repeat=True` the shard list is cycled forever (training).
    """
    shards = wds.SimpleShardList(list(urls))
    pipeline = [_cycle(shards) if repeat else shards, wds.split_by_worker,
                lambda src: _events_stage(src, limits), *stages]
    return wds.DataPipeline(*pipeline)


def _cycle(shards: wds.SimpleShardList) -> Callable[[], Iterator[dict]]:
    def forever() -> Iterator[dict]:
        while True:
            yield from iter(shards)
    return forever


def pass_through(item: Any) -> Any:
    """The loader's collate function: the stream's records arrive exactly as the stages made them."""
    return item


def event_loader(urls: list[str], limits: ReadLimits = ReadLimits(), stages: Iterable[Callable] = (),
                 repeat: bool = False, workers: int = 0, **loader_options: Any):
    """A `torch.utils.data.DataLoader` over `event_pipeline(urls, ...)` in `workers` processes.

    At most one worker per shard (a worker without a shard of its own would only start and stop).
    Records pass through unconverted: torch's default `collate_fn` walks every sample dict
    recursively looking for NumPy arrays to turn into tensors (our stages make tensors
    themselves), which on raw samples with their JSON metadata cost ~20% of a worker's time.
    `loader_options` go to the DataLoader (`pin_memory`, `persistent_workers`, `prefetch_factor`).
    """
    from torch.utils.data import DataLoader

    pipeline = event_pipeline(urls, limits, stages=stages, repeat=repeat)
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


def stats_path(shard_path: str | os.PathLike) -> Path:
    """`DIR/00003.tar` -> `DIR/00003_stats.json` (img2dataset's naming)."""
    p = Path(shard_path)
    return p.with_name(shard_name(str(p)) + "_stats.json")


def is_complete(shard_path: str | os.PathLike) -> bool:
    """A shard is complete when both the tar and its stats file exist (stats are written last)."""
    return Path(shard_path).exists() and stats_path(shard_path).exists()


class OtherSettings(ValueError):
    """A complete shard was made by other settings than the run that found it."""


def complete_with(shard_path: str | os.PathLike, fingerprint: str) -> bool:
    """Whether the shard is complete *and* its stats record `fingerprint` (the settings that made it).

    False for a missing or partial shard (redo it); raises `OtherSettings` for a complete shard made
    by other settings, so a rerun never mixes the outputs of two configs.
    """
    if not is_complete(shard_path):
        return False
    made_by = json.loads(stats_path(shard_path).read_text()).get("fingerprint")
    if made_by != fingerprint:
        raise OtherSettings(f"{shard_path} was made with other settings "
                            f"(fingerprint {made_by}, now {fingerprint})")
    return True


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to `path` via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class ShardWriter:
    """Write one img2dataset-style shard atomically.

    >>> with ShardWriter("out/00000.tar") as w:
    ...     w.write({"__key__": "000000000", "jpg": jpeg_bytes, "txt": "a red circle", "json": {...}})
    ...     w.close(stats={"count": 1})

    Members are written as given: bytes unchanged (images are never re-encoded), `str` as UTF-8,
    dict/list as JSON. `mtime` is fixed so the same samples give byte-identical tars; it is stored in
    whole seconds, because a float mtime makes tarfile add a pax header to every member (twice the
    header blocks to write, and to parse on every later read). Leaving the `with` block without
    `close` (an exception, a kill) leaves only `NAME.tar.partial` behind.
    """

    def __init__(self, path: str | os.PathLike, *, mtime: float = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stats_path(self.path).unlink(missing_ok=True)  # an old stats file would mark us complete
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self._file = open(self.partial, "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=int(mtime),
                                  user="mmw2s", group="mmw2s", mode=0o444)
        self.count = 0
        self.closed = False

    def write(self, sample: dict) -> None:
        """Add one sample: `__key__` plus members by extension (`jpg`, `txt`, `json`, ...)."""
        if "__key__" not in sample:
            raise ValueError("a sample needs a '__key__'")
        encoded = {k: _encode_member(k, v) for k, v in sample.items()
                   if not k.startswith("__") or k == "__key__"}
        self._tar.write(encoded)
        self.count += 1

    def close(self, stats: dict | None = None) -> None:
        """Finish the tar, rename it into place, then write `NAME_stats.json`."""
        self._tar.close()
        self._file.close()
        os.replace(self.partial, self.path)
        write_json_atomic(stats_path(self.path), stats if stats is not None else {"count": self.count})
        self.closed = True

    def abort(self) -> None:
        """Drop the partial tar (nothing is renamed into place)."""
        if not self.closed:
            try:
                self._tar.close()  # else tarfile's finaliser writes to the closed file later
            except (OSError, ValueError):
                pass
            self._file.close()
            self.partial.unlink(missing_ok=True)
            self.closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed:
            self.abort()


def _encode_member(key: str, value: Any) -> Any:
    if key == "__key__" or isinstance(value, (bytes, bytearray, memoryview)):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"member '{key}' must be bytes, str, dict or list, got {type(value).__name__}")
