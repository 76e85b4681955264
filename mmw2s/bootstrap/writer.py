"""Writing bootstrapped shards: one output shard per input shard, closed when the input's
`ShardEnd` arrives, with a `{shard}_stats.json` that marks it complete.

Data-loader workers interleave shards, so writers are kept open by input URL.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from mmw2s.data_pipelines import ShardEnd, ShardWriter, Skip, clip_text, shard_name

from mmw2s.bootstrap.parquet import ShardMetadata
from mmw2s.bootstrap.pipeline import DecidedEvent, OutputSample

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
LISTED_SKIPS = 100  # skipped samples named (key, reason, detail) in a shard's stats; the rest counted


def output_path(folder: str | Path, url: str) -> Path:
    """Where the bootstrapped version of input shard `url` goes: `FOLDER/{same name}.tar`."""
    return Path(folder) / f"{shard_name(url)}.tar"


def quantiles(values: list[float]) -> dict[str, float] | None:
    """`{"q05": ..., "q50": ..., ...}` of `values`, or None when there are none."""
    if not values:
        return None
    qs = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
    return {f"q{round(q * 100):02d}": round(float(v), 6) for q, v in zip(QUANTILES, qs)}


@dataclass
class ShardTally:
    """Running counts of one output shard."""

    url: str
    started: float = field(default_factory=time.perf_counter)
    decoded: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_samples: list[dict] = field(default_factory=list)  # the first LISTED_SKIPS, by key
    written: int = 0
    web_kept: int = 0
    synthetic: int = 0
    synthetic_kept: int = 0
    chosen: Counter = field(default_factory=Counter)
    nothing_kept: int = 0
    dropped: int = 0
    web_scores: list[float] = field(default_factory=list)
    synthetic_scores: list[float] = field(default_factory=list)
    synthetic_invalid: Counter = field(default_factory=Counter)  # by reason: empty, special_tokens, prompt
    filter_truncated: int = 0  # captions (web or synthetic) the filter cut to its text length

    def add(self, sample: OutputSample) -> None:
        """Count one decided output sample."""
        block = sample.json["mmw2s"]
        self.decoded += 1
        self.web_kept += block["web_kept"]
        self.synthetic += len(block["synthetic"])
        self.synthetic_kept += sum(s["kept"] for s in block["synthetic"])
        self.nothing_kept += block["nothing_kept"]
        self.dropped += sample.drop
        if block["chosen_source"]:
            self.chosen[block["chosen_source"]] += 1
        if block["web_score"] is not None:
            self.web_scores.append(block["web_score"])
        self.synthetic_scores += [s["score"] for s in block["synthetic"] if s["score"] is not None]
        self.synthetic_invalid.update(s["invalid"] for s in block["synthetic"] if s.get("invalid"))
        self.filter_truncated += block.get("filter_truncated", 0)

    def stats(self, end: ShardEnd, extra: dict) -> dict:
        """The `{shard}_stats.json` content (img2dataset's `count`/`successes` included)."""
        seconds = time.perf_counter() - self.started
        skipped = sum(self.skipped.values())
        return {
            "input": end.url, "count": self.written, "successes": self.written,
            "inputs": self.decoded + skipped, "decoded": self.decoded,
            "skipped": skipped, "skipped_by_reason": dict(self.skipped),
            "damaged": end.damaged, "damaged_after_samples": end.samples if end.damaged else None,
            "ignored_members": end.ignored_members,
            "skipped_samples": self.skipped_samples, "changed_by_reason": end.changed,
            "web_kept": self.web_kept, "synthetic": self.synthetic, "synthetic_kept": self.synthetic_kept,
            "chosen_web": self.chosen["web"], "chosen_synthetic": self.chosen["synthetic"],
            **({"chosen_rewrite": self.chosen["rewrite"]} if self.chosen["rewrite"] else {}),
            "nothing_kept": self.nothing_kept, "dropped": self.dropped, "written": self.written,
            "synthetic_invalid": sum(self.synthetic_invalid.values()),
            "synthetic_invalid_by_reason": dict(self.synthetic_invalid), "filter_truncated": self.filter_truncated,
            "web_score_quantiles": quantiles(self.web_scores),
            "synthetic_score_quantiles": quantiles(self.synthetic_scores),
            "seconds": round(seconds, 3),
            "images_per_s": round(self.decoded / seconds, 2) if seconds > 0 else None,
            **extra,
        }


class OpenShard(NamedTuple):
    """An output shard being written, and its counts."""

    writer: ShardWriter
    tally: ShardTally


class ShardDone(NamedTuple):
    """What `write_stage` passes on for a `ShardEnd`: the end, and the stats of the shard it closed."""

    end: ShardEnd
    stats: dict


class ShardOutputs:
    """Open output shards by input URL; `finish` closes one with its stats.

    `extra_stats` (e.g. the run fingerprint) goes into every stats file. Use as a context manager:
    leaving it with shards still open (an error, Ctrl-C) aborts them, so only complete shards and
    `.partial` leftovers exist, and a rerun redoes the partial ones.
    """

    def __init__(self, folder: str | Path, extra_stats: dict | None = None,
                 shard_extra: Callable[[str], dict] | None = None) -> None:
        self.folder = Path(folder)
        self.extra = dict(extra_stats or {})
        self.shard_extra = shard_extra  # input URL -> more stats of that shard (an endpoint's requests)
        self.open: dict[str, OpenShard] = {}
        self.metadata = ShardMetadata(self.folder)  # NAME.parquet beside each shard (`parquet.py`)

    def _get(self, url: str) -> OpenShard:
        if url not in self.open:
            self.open[url] = OpenShard(ShardWriter(output_path(self.folder, url)), ShardTally(url))
        return self.open[url]

    def write(self, sample: OutputSample) -> None:
        """Count a decided sample and write it unless it is dropped."""
        writer, tally = self._get(sample.url)
        tally.add(sample)
        self.metadata.add(sample)
        if not sample.drop:
            writer.write(sample.members())
            tally.written += 1

    def skip(self, record: Skip) -> None:
        """Count a sample that shard I/O or preprocessing skipped."""
        tally = self._get(record.url).tally
        self.metadata.skip(record)
        tally.skipped[record.reason] += 1
        if len(tally.skipped_samples) < LISTED_SKIPS:
            tally.skipped_samples.append({"key": clip_text(record.key), "reason": record.reason,
                                          "detail": clip_text(record.detail)})

    def finish(self, end: ShardEnd) -> dict:
        """Close the output of `end.url` (an empty shard when nothing came) and return its stats.

        A shard whose source could not be read (`end.unreadable`: it failed to open, was no tar,
        or its `pipe:` / storage failed) gets no output at all, not an empty complete one: the
        returned record says why, and a rerun tries it again.
        """
        writer, tally = self._get(end.url)
        del self.open[end.url]
        extra = {**self.extra, **(self.shard_extra(end.url) if self.shard_extra else {})}
        if end.unreadable:
            writer.abort()
            self.metadata.discard(end.url)
            return {"input": end.url, "unreadable": end.unreadable, "decoded": tally.decoded, "written": 0}
        stats = tally.stats(end, extra)
        self.metadata.finish(end.url, stats)  # before the stats file, which marks the shard complete
        return writer.close(stats)

    def abort(self) -> None:
        """Drop every open (incomplete) output shard."""
        for shard in self.open.values():
            shard.writer.abort()
        self.open.clear()

    def __enter__(self) -> "ShardOutputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.abort()


def write_stage(items: Iterable[DecidedEvent], outputs: ShardOutputs) -> Iterator[OutputSample | Skip | ShardDone]:
    """Write decided samples, count skips, close shards at their `ShardEnd`; pass everything on.

    A `ShardEnd` is passed on as a `ShardDone` so that the caller can report progress per shard.
    """
    for item in items:
        if isinstance(item, ShardEnd):
            yield ShardDone(item, outputs.finish(item))
            continue
        if isinstance(item, Skip):
            outputs.skip(item)
        elif isinstance(item, OutputSample):
            outputs.write(item)
        yield item
