"""Failures that stop a stream of records, named by the shard they hit: `ShardError`, `CurrentShard`.

No sample can stop a stream (whatever fails while decoding one is its skip reason); a failure that
is not a sample's (a bug, a full disk) stops it, and the message must say which shard was read.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator


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
        """Pass `records` on, remembering the shard of the last one."""
        for record in records:
            self.url = _record_url(record) or self.url
            yield record

    def guard(self, records: Iterable[Any]) -> Iterator[Any]:
        """Pass `records` on; a failure while making them is re-raised as a `ShardError`."""
        try:
            yield from records
        except ShardError:
            raise
        except Exception as exn:  # noqa: BLE001 - re-raised, with the shard named
            raise ShardError(f"stopped while {self.what} shard {self.url}: {type(exn).__name__}: {exn}") from exn
