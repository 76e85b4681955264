"""The report's figures (matplotlib, Agg: no display on servers): PGR bars, loss curves, lines and
panels of means over seeds with their std as error bars."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from mmw2s.report.stats import NO_VALUE, MeanStd


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
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


def plot_pgr(pgr_rows: Mapping[str, Mapping[str, MeanStd]],
             path: Path) -> Path:
    """Grouped bars of PGR per benchmark for each student (error bars = std over seeds)."""
    plt = pyplot()
    students = list(pgr_rows)
    benchmarks = [b for b in next(iter(pgr_rows.values())) if b != "mean"] + ["mean"]
    width = 0.8 / max(1, len(students))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(benchmarks) + 2), 3.8))
    for i, student in enumerate(students):
        xs, ys, errs = [], [], []
        for j, bench in enumerate(benchmarks):
            value = pgr_rows[student].get(bench, NO_VALUE)
            if value.mean is not None:
                xs.append(j + i * width)
                ys.append(value.mean)
                errs.append(value.std or 0.0)
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    return _save(plt, fig, ax, path)


def plot_lines(xs: Sequence[object], series: Mapping[str, Sequence[MeanStd]],
               path: Path, xlabel: str, ylabel: str, title: str,
               refs: Sequence[float] = ()) -> Path:
    """One line per series over categorical x values, with std error bars; None points are gaps."""
    plt = pyplot()
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
                 series: Mapping[str, Sequence[MeanStd]]) -> bool:
    """One error-bar line per series over its (mean, std) points, gaps where the mean is None;
    whether anything was drawn."""
    drawn = False
    for name, points in series.items():
        px = [x for x, p in zip(positions, points) if p.mean is not None]
        py = [p.mean for p in points if p.mean is not None]
        errs = [p.std or 0.0 for p in points if p.mean is not None]
        if px:
            ax.errorbar(px, py, yerr=errs if any(errs) else None, marker="o", capsize=3, label=name)
            drawn = True
    return drawn


def plot_panels(xs: Sequence[object],
                panels: Sequence[tuple[str, str, Mapping[str, Sequence[MeanStd]]]],
                path: Path, xlabel: str) -> Path:
    """A 2-column grid of line panels sharing the x values: `(title, ylabel, series)` each, the
    series as in `plot_lines` (mean, std) points; empty panels say so instead of staying blank."""
    plt = pyplot()
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


def plot_rounds(rows: Sequence[Mapping[str, MeanStd]], path: Path) -> Path:
    """rounds.png: four panels over rounds (students, filter audit, kept per noise type, captions)."""
    def pick(keys):
        return {k: [row.get(k, NO_VALUE) for row in rows] for k in keys}

    keys = list(dict.fromkeys(k for row in rows for k in row))
    panels = [("students", "score", pick([k for k in keys if "student" in k and "hallucination" not in k])),
              ("filter audit (positive = correct alt-text)", "fraction", pick(["filter precision", "filter recall"])),
              ("web alt-text kept, per noise type", "fraction", pick([k for k in keys if k.startswith("kept: ")])),
              ("synthetic captions (and the captioning student's)", "fraction",
               pick([k for k in keys if k.startswith("synthetic") or "hallucination" in k]))]
    return plot_panels(list(range(1, len(rows) + 1)), panels, path, "round")
