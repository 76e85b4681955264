"""One progress line per stage of `mmw2s run`: the stage's seconds, the elapsed time, the rest.

The estimate of the rest needs no table of costs: a stage not yet run is expected to take what the
stages of its kind took so far in this run (a student what the first student took, a seed what
the first seed took), else the mean of all stages so far; with stages running ``jobs`` at a time
the rest takes that sum over ``jobs``. Stages found complete on a resumed run cost nothing and are
left out of the means; those known to be complete before the run starts (`complete`) are not
expected to cost anything. Stages end out of order when they run side by side, so the line
counts the stages done, not the index of the one that ended.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Iterable, Sequence


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class StageProgress:
    """Call `done(i, seconds)` after stage ``i`` of ``kinds`` (a stage kind per step) has run."""

    def __init__(self, kinds: Sequence[str], jobs: int = 1, complete: Iterable[int] = ()) -> None:
        self.kinds, self.jobs, self.complete = list(kinds), max(1, jobs), set(complete)
        self.start = time.perf_counter()
        self.spent: dict[str, list[float]] = defaultdict(list)
        self.finished: set[int] = set()

    def estimate_rest(self) -> float | None:
        """Seconds expected for the stages not done yet; None before anything has run."""
        every = [s for spent in self.spent.values() for s in spent]
        if not every:
            return None
        mean = sum(every) / len(every)
        per_kind = {k: sum(v) / len(v) for k, v in self.spent.items()}
        settled = self.finished | self.complete
        left = [kind for j, kind in enumerate(self.kinds) if j not in settled]
        return sum(per_kind.get(kind, mean) for kind in left) / self.jobs

    def done(self, i: int, name: str, seconds: float, skipped: bool = False) -> str:
        """Record stage ``i`` and return its progress line."""
        self.finished.add(i)
        if not skipped:
            self.spent[self.kinds[i]].append(seconds)
        rest = self.estimate_rest()
        left = "done" if len(self.finished) == len(self.kinds) else (
            f"~{_clock(rest)} left (estimate)" if rest is not None else "rest: no estimate yet")
        what = "complete, skipped" if skipped else f"{seconds:.1f} s"
        return (f"--- {len(self.finished)}/{len(self.kinds)} {name}: {what} · elapsed "
                f"{_clock(time.perf_counter() - self.start)} · {left}")
