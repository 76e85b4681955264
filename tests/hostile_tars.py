"""Building hostile shards with the standard library's `tarfile` (names, links, sizes, compression
that our own `ShardWriter` would never write), and the invariants every shard reader must keep.

Imported by `test_hostile_shards.py` and `test_fuzz_shards.py`.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable

from PIL import Image
from webdataset.tariterators import base_plus_ext

from mmw2s.data_pipelines import READ_EXTS, is_safe_key


def jpeg(color="red", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def sample(key: str, caption: str = "a red square", image: bytes | None = None, meta=None) -> list[tuple[str, bytes]]:
    """The members of one ordinary img2dataset sample."""
    meta = {"key": key, "caption": caption, "status": "success"} if meta is None else meta
    return [(f"{key}.jpg", jpeg() if image is None else image), (f"{key}.txt", caption.encode()),
            (f"{key}.json", meta if isinstance(meta, bytes) else json.dumps(meta).encode())]


def write_tar(path: Path, members: Iterable, mode: str = "w") -> Path:
    """A tar of `members`: `(name, bytes)` pairs, or ready `TarInfo`s (links, folders, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


# --------------------------------------------------------------------------------------------
# The reader's accounting, from the tar itself (the documented rules, not the reader's code)


def expected_accounting(path: Path) -> tuple[int, int]:
    """`(samples, ignored members)` of a tar under the documented rules: a regular member with a
    key (webdataset's rule) and an image/.txt/.json extension belongs to a sample; a sample is a run
    of consecutive such members of one key, a repeated extension starting the next; every other
    entry is an ignored member."""
    samples = ignored = 0
    key_now, exts = None, set()
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            key, ext = base_plus_ext(info.name) if info.isreg() and not info.issparse() else (None, None)
            if key is None or ext.lower() not in READ_EXTS:
                ignored += 1
                continue
            ext = ext.lower()
            if key != key_now or ext in exts:
                samples += 1
                key_now, exts = key, set()
            exts.add(ext)
    return samples, ignored


def build_tiny_models(folder: Path) -> Path:
    """A BLIP captioner and a BLIP ITM filter with random weights, saved as users' would be."""
    from mmw2s.models import CaptionerSpec, ItmSpec, build_captioner, build_itm_filter

    captions = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("square", "circle", "star")]
    build_captioner(CaptionerSpec(name="blip-tiny"), train_captions=captions).save(folder / "captioner")
    build_itm_filter(ItmSpec(name="blip-tiny"), train_captions=captions).save(folder / "itm")
    return folder


def bootstrap(inputs: Path, models: Path, out: Path, workers: int, *extra: str) -> dict:
    """`mmw2s bootstrap` in this process with the tiny models (tiny batches, short captions)."""
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.bootstrap.run import run
    from mmw2s.config import load_config

    overrides = [f"input={inputs}", f"out={out}", f"captioner.name={models / 'captioner'}",
                 f"filter.itm.name={models / 'itm'}", "decoding.num_captions=1", "decoding.max_new_tokens=4",
                 "decoding.min_new_tokens=1", "batch_size=4", f"workers={workers}", "cpu_threads=1",
                 "progress=false", "selection.nothing_kept=flag", "max_caption_chars=200", *extra]
    return run(load_config(BootstrapConfig, None, overrides))


def strict_json(data: bytes):
    """`json.loads` as a strict parser: bare NaN / Infinity are an error (as in browsers and jq)."""
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def check_output_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """Every member name safe, every .json strict, no key written twice; returns key -> members."""
    found: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar.getmembers():
            assert info.isreg(), info.name
            assert not info.name.startswith("/") and ".." not in info.name.split("/"), info.name
            key, ext = base_plus_ext(info.name)
            assert key is not None and is_safe_key(key), info.name
            assert ext not in found.setdefault(key, {}), f"{info.name} written twice"
            found[key][ext] = tar.extractfile(info).read()
            if ext == "json":
                strict_json(found[key][ext])
    return found
