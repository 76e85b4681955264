"""`ShardReplay`: a training stream's repeated shards replayed from memory instead of re-read."""
from __future__ import annotations

import copy
from typing import Any, Iterator

from PIL import Image

from mmw2s.data_pipelines.sample_decode import ReadLimits
from mmw2s.data_pipelines.tar_reader import shard_events


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
        """`shard_events(url, limits)`, from memory when this shard was read before and fit."""
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
