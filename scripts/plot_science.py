"""The figures of docs/science.md: students' zero-shot accuracy side by side across runs.

    python scripts/plot_science.py --out docs/science/duplicates.png \
        --models student_gold,student_bootstrapped \
        distinct=RUN/sweep/00-distinct/report.json multi_positive=RUN/sweep/01-multi_positive/report.json
    python scripts/plot_science.py --out docs/science/rounds.png --rounds \
        as_is=RUN/sweep/00-students_as_is/report.json blip=RUN/sweep/01-finetune_on_clean/report.json

Each positional argument is LABEL=report.json (what `mmw2s run` writes beside report.md). One panel
per model; in each, one bar per (suite, label): the mean over seeds with the seeds' std, and a black
tick at the better weak teacher's mean (the bar PGR measures from). With `--rounds`: one panel per
round metric (the CLIP student's mean accuracy, the filter's precision and recall), a line per
label over the rounds, the seeds' std as error bars.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmw2s.report import stats  # noqa: E402
from mmw2s.report.experiment import WEAK  # noqa: E402


def load(spec: str) -> tuple[str, dict]:
    label, _, path = spec.partition("=")
    return label, json.loads(Path(path).read_text())


def best_weak(report: dict, suite: str) -> float | None:
    """The better weak teacher's mean over seeds on `suite` (report.json's `aggregate`: [mean, std, n])."""
    means = {model: {s: agg[0] for s, agg in suites.items()} for model, suites in report["aggregate"].items()}
    return stats.best_weak(means, WEAK, suite)


ROUND_METRICS = ("CLIP student mean accuracy", "filter precision", "filter recall")


def plot_rounds(runs: list[tuple[str, dict]], out: str) -> None:
    """A line per run over the rounds, for each of ROUND_METRICS (mean ± std over seeds)."""
    fig, axes = plt.subplots(1, len(ROUND_METRICS), figsize=(4 * len(ROUND_METRICS), 3.2))
    for ax, metric in zip(axes, ROUND_METRICS):
        for label, report in runs:
            rounds = report["rounds"]
            means = [100 * r[metric][0] for r in rounds]
            stds = [100 * (r[metric][1] or 0.0) for r in rounds]
            ax.errorbar(range(1, len(rounds) + 1), means, yerr=stds, marker="o", capsize=3, label=label)
        ax.set_xticks(range(1, len(runs[0][1]["rounds"]) + 1))
        ax.set_xlabel("round")
        ax.set_title(metric + " %", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", help="comma-separated model names of the reports (bars per suite)")
    parser.add_argument("--rounds", action="store_true", help="the rounds' metrics instead (lines per round)")
    parser.add_argument("--title", default="")
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/report.json")
    args = parser.parse_args()
    runs = [load(spec) for spec in args.runs]
    if args.rounds:
        plot_rounds(runs, args.out)
        print(args.out)
        return
    if not args.models:
        parser.error("--models is needed without --rounds")
    models = args.models.split(",")
    suites = runs[0][1]["benchmarks"]
    fig, axes = plt.subplots(len(models), 1, figsize=(1.3 * len(suites) + 2, 2.8 * len(models)), squeeze=False)
    width = 0.8 / len(runs)
    for ax, model in zip(axes[:, 0], models):
        for k, (label, report) in enumerate(runs):
            stats = report["aggregate"].get(model, {})
            xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(suites))]
            means = [100 * stats[s][0] if s in stats else 0.0 for s in suites]
            stds = [100 * stats[s][1] if s in stats and stats[s][1] is not None else 0.0 for s in suites]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=label)
        for i, suite in enumerate(suites):
            weak = best_weak(runs[0][1], suite)
            if weak is not None:
                ax.hlines(100 * weak, i - 0.45, i + 0.45, colors="black", linewidth=1.5)
        ax.set_xticks(range(len(suites)), [s.removeprefix("world:") for s in suites])
        ax.set_ylabel("accuracy %")
        ax.set_title(f"{model} (black: the better weak teacher)", fontsize=10)
    axes[0, 0].legend(fontsize=8, ncol=len(runs))
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
