"""From bootstrapped shards to browser records: one card per sample, its thumbnail made once.

Each output shard of the run is read with the project's shard reader (images left undecoded) and
becomes `CACHE/NAME.json`: the shard's cards in tar order plus its read counts. A thumbnail is
decoded at reduced scale (JPEG draft mode), resized to at most `thumb` pixels on its longest side
and kept in the card as a `data:` URI; an image already that small keeps its own bytes. The pages
embed the thumbnails they show, so a site is a few files per page of cards, not one per sample
(creating 10,000 small files cost more CPU than decoding the images here). A rerun reuses the
cache of every shard whose tar has not changed (same size and modification time, same thumbnail
size), so rebuilding the pages of a million-sample run does not decode its images again.

Shards are untrusted: a sample without a readable `mmw2s` block is skipped and counted, every
field is coerced to the type the pages expect, and no key ever names a file.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from mmw2s.data_pipelines import DEFAULT_MAX_PIXELS, DecodedSample, ReadLimits, ShardEnd, Skip, shard_events, shard_name

CACHE_VERSION = 3
DECISIONS = ("kept", "dropped", "nothing")  # web caption kept / replaced by a synthetic one / no caption kept
COPY_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}  # shown as they are


def safe_name(name: str) -> str:
    """A file-system and URL-safe form of a shard name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else (None if value is None else str(value))


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def decision(web_kept: bool, nothing_kept: bool) -> str:
    """The sample's decision: `kept` (its web caption), `dropped` (web caption replaced), `nothing`."""
    if nothing_kept:
        return "nothing"
    return "kept" if web_kept else "dropped"


def card(sample: DecodedSample) -> dict | None:
    """The card of one bootstrapped sample (JSON-able), or None when it has no usable `mmw2s` block."""
    meta = sample["json"]
    block = meta.get("mmw2s")
    if not isinstance(block, dict) or not isinstance(block.get("synthetic", []), list):
        return None
    synthetic = [{"caption": _text(s.get("caption")) or "", "score": _score(s.get("score")),
                  "kept": bool(s.get("kept")), "invalid": _text(s.get("invalid")),
                  "source": "rewrite" if s.get("source") == "rewrite" else "synthetic"}
                 for s in block.get("synthetic", []) if isinstance(s, dict)]
    chosen = _text(block.get("chosen"))
    nothing = bool(block.get("nothing_kept", chosen is None)) or chosen is None
    source = block.get("chosen_source") if block.get("chosen_source") in ("web", "synthetic", "rewrite") else None
    web_kept = bool(block.get("web_kept"))
    truth = meta.get("truth")
    return {
        "key": _text(sample["__key__"]) or "",
        "url": _text(meta.get("url")),
        "web": {"caption": _text(block.get("web_caption")) or "", "score": _score(block.get("web_score")),
                "kept": web_kept},
        "synthetic": synthetic,
        "chosen": chosen, "source": source, "chosen_score": _score(block.get("chosen_score")),
        "decision": decision(web_kept, nothing),
        "original_key": _text(block.get("original_key")),  # the input's key, when it was renamed
        # Evaluation only: the synthetic world's truth; the bootstrap never read it.
        "truth": ({"noise_type": _text(truth.get("noise_type")) or "unknown",
                   "gold_caption": _text(truth.get("gold_caption"))} if isinstance(truth, dict) else None),
    }


def provenance(sample: DecodedSample) -> dict:
    """The fixed fields of a sample's `mmw2s` block: captioner, filter, thresholds, seed."""
    block = sample["json"].get("mmw2s") or {}
    return {k: block.get(k) for k in ("captioner", "filter", "threshold", "seed")}


def thumbnail(data: bytes, size: int) -> str:
    """A `data:` URI of the image's thumbnail, at most `size` pixels on its longest side.

    Raises ValueError for an image over the reader's pixel limit, OSError for unreadable bytes.
    """
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > DEFAULT_MAX_PIXELS:  # checked on the header: a bomb is never decoded
        raise ValueError(f"too large: {image.width}x{image.height}")
    if max(image.size) <= size and image.format in COPY_FORMATS:
        image.verify()  # what the browser would fail to show is caught here, not left as a broken icon
        payload, mime = data, COPY_FORMATS[image.format]  # already small: the bytes as they are
    else:
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, much faster than full
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=80)
        payload, mime = buf.getvalue(), "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(payload).decode("ascii")


def extract_shard(url: str, out: Path, thumb: int) -> dict:
    """Cards and thumbnails of one bootstrapped shard; writes and returns its cache record."""
    cards, skipped, first = [], {}, None
    end = ShardEnd(url)
    for item in shard_events(url, ReadLimits(decode_images=False, require_caption=False)):
        if isinstance(item, ShardEnd):
            end = item
            continue
        if isinstance(item, Skip):
            continue  # counted in end.skipped
        c = card(item)
        if c is None:
            skipped["no_decision"] = skipped.get("no_decision", 0) + 1
            continue
        first = first or provenance(item)
        try:
            c["thumb"] = thumbnail(item["image_bytes"], thumb)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exn:
            c["thumb"], c["thumb_error"] = None, f"{type(exn).__name__}: {exn}"[:200]
        cards.append(c)
    for reason, n in end.skipped.items():
        skipped[reason] = skipped.get(reason, 0) + n
    record = {"version": CACHE_VERSION, "source": source_stamp(url), "thumb": thumb,
              "shard": shard_name(url), "cards": cards, "skipped": skipped, "damaged": end.damaged,
              "provenance": first}
    _write_compact(cache_path(out, url), record)
    return record


def cache_path(out: Path, url: str) -> Path:
    return out / "cache" / f"{safe_name(shard_name(url))}.json"


def source_stamp(url: str) -> list[int] | None:
    """`[size, mtime_ns]` of a local shard (what tells a changed shard), None for a remote one."""
    try:
        st = os.stat(url)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def cached(out: Path, url: str, thumb: int) -> dict | None:
    """The shard's cache record when it is still valid, else None."""
    path = cache_path(out, url)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stamp = source_stamp(url)
    if stamp is None or record.get("version") != CACHE_VERSION or record.get("source") != stamp \
            or record.get("thumb") != thumb:
        return None
    return record


def shard_record(url: str, out: Path, thumb: int) -> dict:
    """The shard's cache record, extracted unless a valid one exists. Returns it without its cards
    (the caller streams cards from the cache files; a million of them need not be held at once)."""
    record = cached(out, url, thumb) or extract_shard(url, out, thumb)
    counts = {d: 0 for d in DECISIONS}
    for c in record["cards"]:
        counts[c["decision"]] += 1
    return {**{k: v for k, v in record.items() if k != "cards"}, "counts": counts,
            "facets": facets(record["cards"]), "thumb_errors": sum(c["thumb"] is None for c in record["cards"])}


def facets(cards: list[dict]) -> dict[str, list[str]]:
    """The values the filters offer, found in these cards."""
    return {"source": sorted({c["source"] for c in cards if c["source"]}),
            "noise": sorted({c["truth"]["noise_type"] for c in cards if c["truth"]})}


def iter_cards(out: Path, urls: list[str]) -> Iterator[dict]:
    """Every card of the run, in shard and tar order, numbered from 0 across the run (`order`)."""
    order = 0
    for url in urls:
        for c in json.loads(cache_path(out, url).read_text())["cards"]:
            c["order"] = order
            order += 1
            yield c


def _write_compact(path: Path, data: Any) -> None:
    """JSON via a temporary file and a rename (a killed build leaves no half cache behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    os.replace(tmp, path)
