"""`mmw2s curate`: one pass over the input shards that decides duplicates and contamination.

    out/config.yaml          resolved config
    out/index.parquet        one row per input sample: hashes and the decision (`index.py`)
    out/contamination.json   per benchmark: counts and the matched pairs (training key, example key)
    out/report.json          totals by reason, unreadable samples by reason, images/s (= complete)

How a global index is built and shared: reading and hashing run in `workers` data-loader
processes (each reads whole shards, as the bootstrap's do); deciding runs here, in this one
process, sample by sample in shard order (the order of `input=`) then tar order: the first
sample of an image is kept, every later exact (SHA-256) or near (pHash) copy of a kept image is a
duplicate of it. Shards that arrive early wait for the ones before them, so the index is the same
bytes for any number of workers. The bootstrap then only looks its samples up
(`curation.index=out/index.parquet`), on any number of ranks or Ray actors.

    mmw2s curate input=runs/demo/world/web out=runs/curate decontam.benchmarks=[world:retrieval] \\
        decontam.world=runs/demo/world
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from array import array
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, TypedDict

from mmw2s.data_pipelines.image_hash import HashIndex, phash, phash_hex, sha256_hex
from mmw2s.data_pipelines import (DecodedSample, Event, ReadLimits, ShardEnd, Skip, event_loader, expand_urls,
                                   shard_name, write_json_atomic)

from mmw2s.curate.config import CurateConfig
from mmw2s.curate.decontam import Reference, find_contamination, load_references
from mmw2s.curate.index import INDEX_FILE, IndexWriter
from mmw2s.errors import StageError

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
CONTAMINATION_FILE = "contamination.json"
CHUNK = 64  # hash records sent from a worker at a time (one IPC round trip each)


def run(cfg: CurateConfig) -> dict:
    """Index `cfg.input` into `cfg.out`; returns the report (the saved one when already complete)."""
    from mmw2s.config import save_config

    out = Path(cfg.out)
    urls = expand_urls(cfg.input)
    if not urls:
        raise StageError(f"no input shards in {cfg.input!r}")
    fingerprint = curate_fingerprint(cfg, urls)
    done = _read_report(out)
    if done is not None and done.get("fingerprint") == fingerprint:
        log.info("curation index %s is complete; nothing to do", out / INDEX_FILE)
        return done
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    refs = load_references(cfg.decontam)
    report = curate(urls, cfg, refs, out)
    report["fingerprint"] = fingerprint
    write_json_atomic(out / REPORT_FILE, report)  # last: marks the index complete
    log.info("curate: %s", json.dumps({k: report[k] for k in ("inputs", "kept", "by_reason")}))
    return report


def curate_fingerprint(cfg: CurateConfig, urls: list[str]) -> str:
    """What decides the index: the shards (in order) and every setting but out= and workers."""
    keys = {"urls": urls, "dedup": asdict(cfg.dedup), "decontam": asdict(cfg.decontam), "max_pixels": cfg.max_pixels}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _read_report(out: Path) -> dict | None:
    try:
        return json.loads((out / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# In the data-loader workers


class HashRecord(TypedDict):
    """What deciding needs of one sample (no pixels cross to the main process); `url` is its shard."""
    url: str
    key: str
    sha256: str
    phash: int
    width: int
    height: int
    caption: str | None


def hash_record(sample: DecodedSample) -> HashRecord | Skip:
    """A decoded sample -> its `HashRecord`, or a `hash_error` skip."""
    try:
        value = phash(sample["image"])
    except Exception as exn:  # noqa: BLE001 - an image PIL decoded but cannot resize is this sample's fault
        return Skip(sample["__url__"], sample["__key__"], "hash_error", f"{type(exn).__name__}: {exn}")
    return {"url": sample["__url__"], "key": sample["__key__"], "sha256": sha256_hex(sample["image_bytes"]),
            "phash": value, "width": sample["image"].width, "height": sample["image"].height,
            "caption": sample["caption"]}


def hash_stage(events: Iterable[Event]) -> Iterator[list[HashRecord | Skip | ShardEnd]]:
    """Shard events with samples replaced by hash records, sent in chunks of CHUNK."""
    chunk: list = []
    for item in events:
        chunk.append(hash_record(item) if isinstance(item, dict) else item)
        if len(chunk) >= CHUNK or isinstance(item, ShardEnd):
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_limits(cfg: CurateConfig) -> ReadLimits:
    """Images decoded as the bootstrap decodes them; a caption is not required to be hashed."""
    return ReadLimits(max_pixels=cfg.max_pixels, decode_images=True, require_caption=False)


# --------------------------------------------------------------------------------------------
# Deciding, in this process, in shard order


class ShardRecords(NamedTuple):
    """One shard's hash records and skips in tar order, and its `ShardEnd`."""
    url: str
    records: list[HashRecord | Skip]
    end: ShardEnd


def in_shard_order(urls: list[str], events: Iterable[HashRecord | Skip | ShardEnd]) -> Iterator[ShardRecords]:
    """The `ShardRecords` of each shard in the order of `urls`, whatever order the workers finish in."""
    position = {u: i for i, u in enumerate(urls)}
    pending: dict[str, list[HashRecord | Skip]] = {u: [] for u in urls}
    finished: dict[int, ShardEnd] = {}
    following = 0
    for item in events:
        if isinstance(item, ShardEnd):
            finished[position[item.url]] = item
            while following in finished:
                url = urls[following]
                yield ShardRecords(url, pending.pop(url), finished.pop(following))
                following += 1
        else:
            pending[item.url if isinstance(item, Skip) else item["url"]].append(item)
    if following != len(urls):
        raise StageError(f"shard {urls[following]} never ended: the reader stopped early")


class Decider:
    """The sequential decisions: contamination first, then exact, then near duplicates of kept images."""

    def __init__(self, cfg: CurateConfig, refs: list[Reference]) -> None:
        self.cfg, self.refs = cfg, refs
        # Per kept image (see docs/curation.md for the bytes): its digest -> position, its pHash in
        # `near`, and where it is (shard number, key) by position.
        self.exact: dict[bytes, int] = {}  # SHA-256 digest (32 bytes, half the hex string's size)
        self.near = HashIndex(cfg.dedup.max_distance)
        self.shards: list[str] = []
        self.kept_shard = array("I")  # index into `shards`
        self.kept_key: list[str] = []

    def decide(self, shard: str, record: HashRecord) -> dict:
        """The index row of one hashed sample (and remember it when it is kept)."""
        row = {"shard": shard, "key": record["key"], "sha256": record["sha256"], "phash": phash_hex(record["phash"]),
               "width": record["width"], "height": record["height"], "reason": None}
        hit = find_contamination(self.refs, record["phash"], record["caption"])
        if hit is not None:
            row.update(reason=f"contaminated:{hit.benchmark}", of_example=hit.example, match=hit.match,
                       distance=hit.distance)
            return row
        dedup, digest = self.cfg.dedup, bytes.fromhex(record["sha256"])
        position = self.exact.get(digest) if dedup.exact else None
        if position is not None:
            row.update(reason="duplicate_exact", distance=0)
        elif dedup.near and (match := self.near.nearest(record["phash"])) is not None:
            position = match.index
            row.update(reason="duplicate_near", distance=match.distance)
        if position is not None:
            row["of_shard"], row["of_key"] = self.shards[self.kept_shard[position]], self.kept_key[position]
            return row
        self.exact.setdefault(digest, self.near.add(record["phash"]))
        if not self.shards or self.shards[-1] != shard:
            self.shards.append(shard)
        self.kept_shard.append(len(self.shards) - 1)
        self.kept_key.append(record["key"])
        return row


def curate(urls: list[str], cfg: CurateConfig, refs: list[Reference], out: Path) -> dict:
    """Read, hash, decide and write the index; returns the report."""
    started = time.perf_counter()
    loader = event_loader(urls, read_limits(cfg), stages=[hash_stage], workers=cfg.workers)
    records = (r for chunk in loader for r in chunk)
    decider, reasons, unreadable, matches = Decider(cfg, refs), Counter(), Counter(), Counter()
    pairs: list[dict] = []
    damaged = []
    writer = IndexWriter(out / INDEX_FILE)
    try:
        for url, items, end in in_shard_order(urls, records):
            name, rows = shard_name(url), []
            for item in items:
                if isinstance(item, Skip):
                    unreadable[item.reason] += 1
                    rows.append({"shard": name, "key": item.key, "reason": f"unreadable:{item.reason}"})
                    continue
                row = decider.decide(name, item)
                rows.append(row)
                reasons[row["reason"] or "kept"] += 1
                if row.get("of_example") is not None:
                    matches[row["reason"], row["match"]] += 1
                if row.get("of_example") is not None and len(pairs) < cfg.listed_pairs:
                    pairs.append({k: row.get(k) for k in ("shard", "key", "reason", "of_example", "match", "distance")})
            if end.damaged:
                damaged.append({"shard": url, "damage": end.damaged})
            writer.write_shard(rows)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    seconds = time.perf_counter() - started
    contamination = contamination_report(refs, matches, pairs)
    write_json_atomic(out / CONTAMINATION_FILE, contamination)
    if refs:
        from mmw2s.browse.contamination import write_gallery

        write_gallery(out, urls, [(r.spec, r.name) for r in refs], cfg.decontam.world, contamination)
    hashed = sum(reasons.values())
    return {"shards": len(urls), "inputs": hashed + sum(unreadable.values()), "hashed": hashed,
            "kept": reasons["kept"], "by_reason": dict(sorted(reasons.items())),
            "unreadable_by_reason": dict(sorted(unreadable.items())), "damaged_shards": damaged,
            "kept_images_indexed": len(decider.near), "seconds": round(seconds, 3),
            "images_per_s": round(hashed / seconds, 2) if seconds > 0 else None}


def contamination_report(refs: list[Reference], matches: Counter, pairs: list[dict]) -> dict:
    """Per benchmark: its size, how many training samples copy it (by image / caption), the pairs
    (the first `listed_pairs` of the run; the counts are of all)."""
    benchmarks = {}
    for ref in refs:
        reason = f"contaminated:{ref.name}"
        mine = [p for p in pairs if p["reason"] == reason]
        by_image, by_caption = matches[reason, "image"], matches[reason, "caption"]
        benchmarks[ref.name] = {
            "spec": ref.spec, "images": len(ref.keys), "captions": len(ref.captions), "unreadable": ref.unreadable,
            "contaminated": by_image + by_caption, "by_image": by_image, "by_caption": by_caption,
            "distinct_examples_listed": len({p["of_example"] for p in mine}), "pairs": mine}
    return {"benchmarks": benchmarks, "pairs_listed": len(pairs)}
