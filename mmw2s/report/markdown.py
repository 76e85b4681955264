"""The weak-to-strong report: models x benchmarks, PGR per benchmark, and plots.

Performance gap recovered (Burns et al. 2023): PGR = (student - weak) / (ceiling - weak), where
`weak` is the best weak teacher on that benchmark and `ceiling` the student trained on gold labels.
PGR is 0 when the student only matches its teacher and 1 when it reaches the ceiling. Where the
ceiling does not exceed the weak teacher the gap is empty and PGR is undefined: it is reported as
such (None, "n/a"), never as a number.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# The one number per (model, benchmark) that the report compares. Classification: top-1 accuracy;
# retrieval: the mean of image->text and text->image recall@1 (both directions matter for CLIP).
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


# Caption benchmarks have no single headline: the table shows these of their metrics (name -> column):
# the world's captions suite (against its truth), the captioning task (COCO metrics, CLIPScore).
CAPTION_METRICS = {"exact_match": "exact", "object_recall": "obj recall", "hallucination_rate": "halluc.",
                   "CIDEr": "CIDEr", "clip_score": "CLIP-S"}


def results_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Models x benchmarks of eval records (CLIP_benchmark-shaped JSONs), in %, '-' where skipped.

    Each benchmark shows its `headline` (the number the run's report and PGR use) in
    `benchmark_order`; a caption benchmark shows its `CAPTION_METRICS` instead.
    """
    metrics = {(r["model"], r["dataset"]): r.get("metrics") or {} for r in records}
    columns: list[tuple[str, str, Any]] = []  # (label, benchmark, metrics -> value)
    for bench in benchmark_order(r["dataset"] for r in records):
        found = [m for (_, b), m in metrics.items() if b == bench]
        shown = [key for key in CAPTION_METRICS if any(key in m for m in found)]
        if shown:
            columns += [(f"{bench} {CAPTION_METRICS[key]}", bench, lambda m, k=key: m.get(k)) for key in shown]
        else:
            columns.append((bench, bench, headline))
    rows = []
    for model in dict.fromkeys(r["model"] for r in records):
        values = [get(metrics.get((model, bench), {})) for _, bench, get in columns]
        rows.append([model, *["-" if v is None else f"{100 * v:.1f}" for v in values]])
    return markdown_table(["model", *[label for label, *_ in columns]], rows) + "\n"


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
        defined = [v for v in row.values() if v is not None]
        row["mean"] = sum(defined) / len(defined) if defined else None
        table[student] = row
    return table


def best_weak(scores: Mapping[str, Mapping[str, float | None]], weak_models: Iterable[str],
              bench: str) -> float | None:
    """The best weak teacher's score on `bench` (the bar the student must clear)."""
    values = [scores.get(m, {}).get(bench) for m in weak_models]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation over seeds, ignoring undefined values."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if not defined:
        return None, None, 0
    std = statistics.stdev(defined) if len(defined) > 1 else None  # one seed: no spread to show
    return statistics.fmean(defined), std, len(defined)


def fmt(value: float | None, std: float | None = None, pct: bool = True) -> str:
    """`0.4312` -> `43.1`; with std `43.1 ± 2.0`; None -> `n/a`."""
    if value is None:
        return "n/a"
    scale = 100.0 if pct else 1.0
    text = f"{value * scale:.1f}" if pct else f"{value:.2f}"
    if std is not None:
        text += f" ± {std * scale:.1f}" if pct else f" ± {std:.2f}"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg: no display on servers)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, path: Path) -> Path:
    """Legend (when anything is labelled), tight layout, PNG, and the figure closed."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pgr(pgr_rows: Mapping[str, Mapping[str, tuple[float | None, float | None]]],
             path: Path) -> Path:
    """Grouped bars of PGR per benchmark for each student (error bars = std over seeds)."""
    plt = _pyplot()
    students = list(pgr_rows)
    benchmarks = [b for b in next(iter(pgr_rows.values())) if b != "mean"] + ["mean"]
    width = 0.8 / max(1, len(students))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(benchmarks) + 2), 3.8))
    for i, student in enumerate(students):
        xs, ys, errs = [], [], []
        for j, bench in enumerate(benchmarks):
            mean, std = pgr_rows[student].get(bench, (None, None))
            if mean is not None:
                xs.append(j + i * width)
                ys.append(mean)
                errs.append(std or 0.0)
        ax.bar(xs, ys, width, yerr=errs if any(errs) else None, capsize=3, label=student)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(1, color="gray", lw=0.8, ls="--")
    ax.set_xticks([j + width * (len(students) - 1) / 2 for j in range(len(benchmarks))])
    ax.set_xticklabels(benchmarks, rotation=30, ha="right")
    ax.set_ylabel("performance gap recovered")
    ax.set_title("PGR per benchmark (0 = weak teacher, 1 = gold ceiling)")
    return _save(plt, fig, ax, path)


def plot_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path,
                title: str = "training loss") -> Path:
    """Loss against step, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    return _save(plt, fig, ax, path)


def plot_lines(xs: Sequence[object], series: Mapping[str, Sequence[tuple[float | None, float | None]]],
               path: Path, xlabel: str, ylabel: str, title: str,
               refs: Sequence[float] = ()) -> Path:
    """One line per series over categorical x values, with std error bars; None points are gaps."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    positions = list(range(len(xs)))
    _draw_series(ax, positions, series)
    for ref in refs:
        ax.axhline(ref, color="gray", lw=0.8, ls="--")
    ax.set_xticks(positions)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(plt, fig, ax, path)


def _draw_series(ax: Any, positions: Sequence[int],
                 series: Mapping[str, Sequence[tuple[float | None, float | None]]]) -> bool:
    """One error-bar line per series over its (mean, std) points, gaps where the mean is None;
    whether anything was drawn."""
    drawn = False
    for name, points in series.items():
        px = [x for x, (m, _) in zip(positions, points) if m is not None]
        py = [m for m, _ in points if m is not None]
        errs = [s or 0.0 for m, s in points if m is not None]
        if px:
            ax.errorbar(px, py, yerr=errs if any(errs) else None, marker="o", capsize=3, label=name)
            drawn = True
    return drawn


def plot_panels(xs: Sequence[object],
                panels: Sequence[tuple[str, str, Mapping[str, Sequence[tuple[float | None, float | None]]]]],
                path: Path, xlabel: str) -> Path:
    """A 2-column grid of line panels sharing the x values: `(title, ylabel, series)` each, the
    series as in `plot_lines` (mean, std) points; empty panels say so instead of staying blank."""
    plt = _pyplot()
    rows = max(1, math.ceil(len(panels) / 2))
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.4 * rows), squeeze=False)
    positions = list(range(len(xs)))
    for ax, (title, ylabel, series) in zip(axes.flat, panels):
        if not _draw_series(ax, positions, series):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks(positions)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
