"""What every evaluation task shares: the `Skipped` signal and batching of examples.

Its own module so that the task runners (`tasks`) and the VQA task (`vqa`) both import it, and
neither imports the other.
"""
from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Skipped(Exception):
    """The scorer cannot do this task (e.g. caption accuracy of a dual encoder)."""


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of ``n`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk
