"""Markdown tables and the formatting of their cells (every table of every report is built here)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmw2s.report.stats import MeanStd, benchmark_order, headline


def fmt(value: float | None, std: float | None = None, pct: bool = True) -> str:
    """`0.4312` -> `43.1`; with std `43.1 ± 2.0`; None -> `n/a`."""
    if value is None:
        return "n/a"
    scale = 100.0 if pct else 1.0
    text = f"{value * scale:.1f}" if pct else f"{value:.2f}"
    if std is not None:
        text += f" ± {std * scale:.1f}" if pct else f" ± {std:.2f}"
    return text


def or_na(value: object) -> str:
    """A value as it is, None as `n/a`."""
    return "n/a" if value is None else str(value)


def fmt_spread(value: MeanStd | Any, pct: bool = True) -> str:
    """`fmt` of a mean over seeds and its std (a `MeanStd` or a `Spread`)."""
    return fmt(value.mean, value.std, pct)


def signed(value: MeanStd | Any) -> str:
    """`fmt_spread` in % with a `+` on gains (a difference of accuracies)."""
    text = fmt_spread(value)
    return text if value.mean is None or value.mean < 0 else "+" + text


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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
