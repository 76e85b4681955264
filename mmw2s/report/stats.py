"""The numbers a report compares: one headline per result, PGR, and the spread over seeds.

Performance gap recovered (Burns et al. 2023): PGR = (student - weak) / (ceiling - weak), where
`weak` is the best weak teacher on that benchmark and `ceiling` the student trained on gold labels.
PGR is 0 when the student only matches its teacher and 1 when it reaches the ceiling. Where the
ceiling does not exceed the weak teacher the gap is empty and PGR is undefined: it is reported as
such (None, "n/a"), never as a number.
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable, Mapping, NamedTuple, Sequence

# The one number per (model, benchmark) that every table compares (the eval's results.md, the run's
# report and its PGR). Classification: top-1 accuracy; retrieval: the mean of image->text and
# text->image recall@1 (both directions matter for CLIP).
RETRIEVAL_HEADLINE = ("image_retrieval_recall@1", "text_retrieval_recall@1")


def headline(metrics: Mapping[str, float]) -> float | None:
    """The headline number of one results JSON's `metrics`."""
    if "acc1" in metrics:
        return float(metrics["acc1"])
    if all(k in metrics for k in RETRIEVAL_HEADLINE):
        return float(sum(metrics[k] for k in RETRIEVAL_HEADLINE) / len(RETRIEVAL_HEADLINE))
    for key in ("acc", "accuracy"):  # caption selection (relation), VQA
        if metrics.get(key) is not None:
            return float(metrics[key])
    return None


def benchmark_order(names: Iterable[str]) -> list[str]:
    """The one column order of every models-by-benchmarks table (the eval's and the run's): by name."""
    return sorted(dict.fromkeys(names))


def mean_of_defined(values: Iterable[float | None]) -> float | None:
    """The plain mean of the values that are not None (None when there is none)."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def pgr(student: float | None, weak: float | None, ceiling: float | None,
        min_gap: float = 1e-6) -> float | None:
    """(student - weak) / (ceiling - weak), or None when the gap is empty or a value is missing."""
    if student is None or weak is None or ceiling is None:
        return None
    gap = ceiling - weak
    if gap <= min_gap:
        return None
    return (student - weak) / gap


def pgr_table(scores: Mapping[str, Mapping[str, float | None]], weak_models: Sequence[str],
              students: Sequence[str], ceiling: str,
              min_gap: float = 1e-6) -> dict[str, dict[str, float | None]]:
    """PGR of each student per benchmark against the best weak teacher on that benchmark.

    `scores[model][benchmark]` are headline numbers. Returns `{student: {benchmark: pgr, "mean": m}}`
    where the mean is over benchmarks with a defined PGR (None if there is none). A benchmark whose
    ceiling beats the best weak teacher by `min_gap` or less has no gap to recover: PGR is None.
    """
    benchmarks = sorted({b for m in scores.values() for b in m})
    table: dict[str, dict[str, float | None]] = {}
    for student in students:
        row: dict[str, float | None] = {}
        for bench in benchmarks:
            weak = best_weak(scores, weak_models, bench)
            row[bench] = pgr(scores.get(student, {}).get(bench), weak,
                             scores.get(ceiling, {}).get(bench), min_gap)
        row["mean"] = mean_of_defined(row.values())
        table[student] = row
    return table


def best_weak(scores: Mapping[str, Mapping[str, float | None]], weak_models: Iterable[str],
              bench: str) -> float | None:
    """The best weak teacher's score on `bench` (the bar the student must clear)."""
    values = [scores.get(m, {}).get(bench) for m in weak_models]
    values = [v for v in values if v is not None]
    return max(values) if values else None


class MeanStd(NamedTuple):
    """A mean over seeds and its sample standard deviation (None: one seed, no spread to show)."""

    mean: float | None
    std: float | None


NO_VALUE = MeanStd(None, None)


class Spread(NamedTuple):
    """`MeanStd` and how many seeds had a defined value."""

    mean: float | None
    std: float | None
    n: int

    @property
    def mean_std(self) -> MeanStd:
        """The mean and std without the count (the shape of report.json's PGR, bias, rounds)."""
        return MeanStd(self.mean, self.std)


def spread(values: Sequence[float | None]) -> Spread:
    """Mean and sample standard deviation over seeds, ignoring undefined values."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if not defined:
        return Spread(None, None, 0)
    std = statistics.stdev(defined) if len(defined) > 1 else None  # one seed: no spread to show
    return Spread(statistics.fmean(defined), std, len(defined))
