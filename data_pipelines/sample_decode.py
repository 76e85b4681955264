"""Decoding one untrusted sample: its grouped tar members -> a `DecodedSample`, or why it is skipped.

Every failure while decoding a sample is that sample's skip reason (a `Skip` record), whatever
raised it: PIL, the JSON parser (a `.json` nested 100,000 levels deep raises `RecursionError`), a
caption in a stray encoding. A sample can therefore never stop a job. What is decoded is made safe
for everything downstream:

- keys: `safe_key` names every output member; an unsafe key (`..`, absolute, odd characters) is
  replaced by a readable, stable one (`tar_reader.py` counts it and keeps the original as
  `DecodedSample.original_key`);
- JSON: strict (non-finite numbers become null, lone surrogates U+FFFD), at most
  `max_json_depth` deep (pickling to the main process and writing it again would recurse);
- captions: UTF-8 (a BOM dropped), at most `max_caption_chars` (truncated or skipped);
- images: as a person viewing them sees them (`viewed_rgb`).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, NotRequired, TypedDict

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt",)
JSON_EXTS = ("json",)
READ_EXTS = frozenset(IMAGE_EXTS + TEXT_EXTS + JSON_EXTS)
DEFAULT_MAX_PIXELS = 4096 * 4096
# What browsers display (JPEG includes MPO, PNG includes APNG). Bytes of any other format (TIFF, PSD, EPS, ...) under an image extension
# are skipped unparsed: a person opening the file in a browser sees nothing either, and each
# extra PIL plugin is more parser exposed to untrusted bytes.
VIEWABLE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "ICO", "AVIF")
ORIENTATION = 0x0112  # the EXIF tag
DETAIL_CHARS = 300  # skip details and keys in stats are cut to this (they may be hostile, and huge)


@dataclass
class ReadLimits:
    """What a sample must satisfy to be yielded; the rest is skipped and counted."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_images: bool = True
    require_caption: bool = True
    max_caption_chars: int = 2000  # longer captions are cut (`long_captions=truncate`) or skipped
    long_captions: Literal["truncate", "skip"] = "truncate"
    max_member_bytes: int = 64 << 20  # a larger image/text/JSON member is not read at all
    max_json_depth: int = 64
    max_aspect_ratio: float = 100.0  # a 1 x 16M image passes max_pixels, but a resize to 224 px
    #                                  on its short side would make a 3.6-gigapixel image
    io_retries: int = 0  # a shard whose source fails before its first sample is opened again this often
    io_backoff_s: float = 1.0  # seconds before the first retry, doubling each time


class DecodedSample(TypedDict):
    """A good sample, as `decode_sample` and every reader of shards yield it.

    `__key__` (the member name, made safe by the reader) and `__url__` (its shard) keep webdataset's
    names, which its tools and `ShardWriter` read; `image` is the viewed RGB image, or None when
    images are not decoded; `image_bytes` and `image_ext` are the member as it was; `caption` is
    None only when no caption is required; `json` is the strict metadata (`{}` without a `.json`).
    `original_key` is set only when the reader renamed an unsafe key.
    """
    __key__: str
    __url__: str
    image: Image.Image | None
    image_bytes: bytes
    image_ext: str
    caption: str | None
    json: dict
    original_key: NotRequired[str]


@dataclass
class Skip:
    """A sample that was skipped, and why (`corrupt_image`, `no_image`, `no_caption`, ...)."""
    url: str
    key: str
    reason: str
    detail: str = ""


def clip_text(text: str, limit: int = DETAIL_CHARS) -> str:
    """`text` cut to `limit` characters (with an ellipsis when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# Keys

_SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_SAFE_LAST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")  # no dot: the key ends at the name's first dot
MAX_KEY_CHARS = 128


def is_safe_key(key: str) -> bool:
    """Whether `key.EXT` is a safe tar member name: relative, no `.`/`..` part, plain characters.

    Folders are allowed (`train/000001`); each part starts with a letter, digit or `_` (so no
    `..`, no hidden files, no `-rf`), and the key is at most 128 characters.
    """
    parts = key.split("/")
    return (0 < len(key) <= MAX_KEY_CHARS and all(_SAFE_PART.match(p) for p in parts[:-1])
            and bool(_SAFE_LAST.match(parts[-1])))


def safe_key(key: str) -> str:
    """`key` itself when safe, else `{readable part}-{16 hex digits of its SHA-256}`.

    The same key always gets the same name, so reruns and workers agree; two unsafe keys only
    share a name if their hashes collide.
    """
    if is_safe_key(key):
        return key
    readable = re.sub(r"[^A-Za-z0-9_]+", "_", key).strip("_")[-40:] or "key"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}"


# --------------------------------------------------------------------------------------------
# JSON

_SURROGATE = re.compile("[\ud800-\udfff]")


class _TooDeep(ValueError):
    pass


def strict_json_value(value: Any, changes: set[str] | None = None, max_depth: int = 10_000,
                      _depth: int = 0) -> Any:
    """`value` with non-finite floats as None and lone surrogates as U+FFFD: what
    `json.dumps(..., allow_nan=False)` encodes as strict UTF-8 JSON. What was changed is added to
    `changes` (`json_non_finite`, `invalid_unicode`); deeper than `max_depth` raises ValueError."""
    if _depth > max_depth:
        raise _TooDeep(f"nested deeper than {max_depth} levels")
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if changes is not None:
            changes.add("json_non_finite")
        return None
    if isinstance(value, str):
        return _clean_str(value, changes)
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v, changes, max_depth, _depth + 1) for v in value]
    if isinstance(value, dict):
        return {(_clean_str(k, changes) if isinstance(k, str) else k):
                strict_json_value(v, changes, max_depth, _depth + 1) for k, v in value.items()}
    return value


def _clean_str(text: str, changes: set[str] | None) -> str:
    if _SURROGATE.search(text) is None:
        return text
    if changes is not None:
        changes.add("invalid_unicode")
    return _SURROGATE.sub("\ufffd", text)


# What can make parsed JSON non-strict, searched in its bytes: a lone surrogate (a `\\uD800`-style
# escape, or UTF-8-encoded surrogate bytes, which `json.loads` of bytes lets through), and a
# number that overflows a float (a 3-digit exponent, or 300 digits in a row).
_MAYBE_NOT_STRICT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|[eE][+-]?\d{3}|\d{300}")


def parse_json(data: bytes, limits: ReadLimits, changes: set[str]) -> dict:
    """The sample's JSON object, made strict; raises (ValueError, RecursionError, ...) when unusable."""
    constants: list[str] = []  # NaN, Infinity, -Infinity: parsed as null, counted below
    meta = json.loads(data, parse_constant=lambda name: constants.append(name))
    if not isinstance(meta, dict):
        raise ValueError("top level is not an object")
    if constants:
        changes.add("json_non_finite")
    # Most samples' JSON is already strict and shallow, which the bytes show: walking every value
    # of every sample (strict_json_value) cost ~10% of a training data worker's time.
    shallow = data.count(b"{") + data.count(b"[") <= limits.max_json_depth
    utf8 = json.detect_encoding(data) in ("utf-8", "utf-8-sig")
    if shallow and utf8 and _MAYBE_NOT_STRICT.search(data) is None:
        return meta
    return strict_json_value(meta, changes, limits.max_json_depth)


# --------------------------------------------------------------------------------------------
# Captions


def _caption(raw: dict, meta: dict, limits: ReadLimits, changes: set[str]) -> tuple[str | None, str]:
    """`(caption or None, the reason when None)`; a long caption is cut per `limits`.

    The `.txt` wins; an empty or undecodable one falls back to the JSON `caption`, as an empty one
    always did; when neither gives a caption the reason says which (`caption_not_utf8`).
    """
    reason, text = "no_caption", None
    if raw.get("txt") is not None:
        try:
            text = raw["txt"].decode("utf-8-sig").strip() or None  # -sig: a leading BOM is no text
        except UnicodeDecodeError:
            reason = "caption_not_utf8"
    if text is None:
        fallback = meta.get("caption")
        text = fallback.strip() if isinstance(fallback, str) and fallback.strip() else None
    if text is None:
        return None, reason
    too_long = [t for t in (text, meta.get("caption")) if isinstance(t, str) and len(t) > limits.max_caption_chars]
    if too_long and limits.long_captions == "skip":
        return None, "caption_too_long"
    if too_long:
        changes.add("caption_truncated")
        text = text[: limits.max_caption_chars].strip()
        if isinstance(meta.get("caption"), str):  # else it is stored again, whole, in the .json
            meta["caption"] = meta["caption"][: limits.max_caption_chars]
    return text, ""


# --------------------------------------------------------------------------------------------
# Images


def viewed_rgb(image: Image.Image) -> Image.Image:
    """The RGB image a person sees when viewing `image` (loaded) in a browser.

    EXIF orientation applied; transparency (RGBA, LA, PA, palette or colour-key transparency)
    composited on white, as img2dataset and browsers on a white page do; 16-bit and 32-bit integer
    grey scaled to 8 bits, where a plain `convert("RGB")` clips everything above 255 to white.
    """
    try:
        if image.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even upright images
            image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken EXIF: viewers show the image unrotated
        pass
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I: integer grey in 0..65535
        grey = np.asarray(image).astype(np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))  # (H, W) uint8: mode L
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class _Rejected(NamedTuple):
    """Why an image is not decoded: the skip reason and its detail."""
    reason: str
    detail: str


def _decode_image(data: bytes, limits: ReadLimits) -> Image.Image | _Rejected:
    """A fully loaded, viewed RGB image, or why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=VIEWABLE_FORMATS)
            w, h = image.size
            # Check the header's size before decoding the pixels: a bomb is never decoded.
            if w * h > limits.max_pixels:
                return _Rejected("too_large", f"{w}x{h} > {limits.max_pixels} pixels")
            if max(w, h) > limits.max_aspect_ratio * max(min(w, h), 1):
                return _Rejected("extreme_aspect", f"{w}x{h}: sides differ more than {limits.max_aspect_ratio:g}x")
            image.load()
            return viewed_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exn:
        return _Rejected("too_large", str(exn))
    except Exception as exn:  # noqa: BLE001 - PIL raises many types for bad bytes
        return _Rejected("corrupt_image", f"{type(exn).__name__}: {exn}")


# --------------------------------------------------------------------------------------------
# One sample


def decode_sample(raw: dict, limits: ReadLimits, changes: set[str] | None = None) -> DecodedSample | Skip:
    """Decode one grouped tar sample into a `DecodedSample`, or say why it is skipped.

    `raw` maps `__key__`, `__url__` and lower-case extensions to member bytes (None: a member over
    `max_member_bytes`, not read). What was made safe (`caption_truncated`, `json_non_finite`,
    `invalid_unicode`) is added to `changes`, which the reader counts for the samples it yields.
    Never raises for anything in the sample's bytes.
    """
    url, key = raw.get("__url__", ""), raw.get("__key__", "")
    try:
        return _decode(raw, url, key, limits, set() if changes is None else changes)
    except MemoryError:
        raise  # the machine's limit, not the sample's fault: stop and say so
    except Exception as exn:  # noqa: BLE001 - whatever a sample's bytes make raise is its skip reason
        return Skip(url, key, "decode_error", clip_text(f"{type(exn).__name__}: {exn}"))


def _decode(raw: dict, url: str, key: str, limits: ReadLimits, changes: set[str]) -> DecodedSample | Skip:
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        return Skip(url, key, "no_image")
    unread = sorted(e for e, v in raw.items() if v is None and not e.startswith("__"))
    if unread:
        return Skip(url, key, "member_too_large", f"{', '.join(unread)} over {limits.max_member_bytes} bytes")
    try:
        meta = parse_json(raw["json"], limits, changes) if "json" in raw else {}
    except MemoryError:
        raise
    except Exception as exn:  # noqa: BLE001 - ValueError, RecursionError, UnicodeDecodeError, ...
        return Skip(url, key, "bad_json", clip_text(f"{type(exn).__name__}: {exn}"))
    caption, reason = _caption(raw, meta, limits, changes)
    if caption is None and (limits.require_caption or reason == "caption_too_long"):
        return Skip(url, key, reason)
    image = None
    if limits.decode_images:
        image = _decode_image(raw[ext], limits)
        if isinstance(image, _Rejected):
            return Skip(url, key, image.reason, clip_text(image.detail))
    return {"__key__": key, "__url__": url, "image": image, "image_bytes": raw[ext],
            "image_ext": ext, "caption": caption, "json": meta}
