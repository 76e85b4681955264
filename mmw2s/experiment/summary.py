"""Gather one experiment's results over seeds, and write its `report.md`, `report.json` and plots
(rendered by `mmw2s.report`).

A plain run gets one report. A sweep (`sweep.key`) gets one report per value under `OUT/sweep/`
and, in `OUT/report.md`, PGR against the swept value. Iterative rounds add the PGR of each round's
student; a biased world (`world.bias.rate > 0`) adds how often each model names the bias source
colour by the target colour, the bias the students inherit from their teachers.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from mmw2s.data_pipelines import write_json_atomic
from mmw2s.experiment.captioning import captioning_results, round_rows
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import Variant
from mmw2s.experiment.planner import Step
from mmw2s.report.experiment import (CEILING, WEAK, Results, print_headline, report_markdown, sweep_bias_table,
                                     sweep_markdown, sweep_table)
from mmw2s.report.plots import plot_curves, plot_lines, plot_pgr, plot_rounds
from mmw2s.report.stats import NO_VALUE, MeanStd, Spread, benchmark_order, headline, mean_of_defined, pgr_table, spread

STUDENT_ORDER = ("web", "filtered", "bootstrapped")


# --------------------------------------------------------------------------------------------
# Numbers


def eval_step(steps: list[Step]) -> Step:
    """The eval step of one seed."""
    return next(s for s in steps if s.stage == "eval")


def seed_scores(steps: list[Step]) -> dict[str, dict[str, float | None]]:
    """`{model: {benchmark: headline}}` of one seed, from its eval summary."""
    summary = json.loads((Path(eval_step(steps).cfg.out) / "summary.json").read_text())
    return {model: {bench: headline(metrics) for bench, metrics in by_bench.items()}
            for model, by_bench in summary.items()}


def aggregate(per_seed: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, Spread]]:
    """`{model: {benchmark: Spread}}` over seeds."""
    models = dict.fromkeys(m for s in per_seed for m in s)
    out: dict[str, dict[str, Spread]] = {}
    for model in models:
        benches = dict.fromkeys(b for s in per_seed for b in s.get(model, {}))
        out[model] = {b: spread([s.get(model, {}).get(b) for s in per_seed]) for b in benches}
    return out


def pgr_over_seeds(per_seed: list[dict], students: list[str], benches: list[str],
                   min_gap: float = 1e-6) -> dict[str, dict[str, MeanStd]]:
    """`{student: {benchmark|mean: MeanStd}}`: PGR computed per seed, then aggregated."""
    tables = [pgr_table({m: {b: v for b, v in s.get(m, {}).items() if b in benches} for m in s},
                        WEAK, students, CEILING, min_gap) for s in per_seed]
    out = {}
    for student in students:
        keys = list(benches) + ["mean"]
        out[student] = {k: spread([t[student].get(k) for t in tables]).mean_std for k in keys}
    return out


# Each half of CapFilt, as the difference between two students trained with the same budget:
# (name, student with that half, student without it).
HALVES = (("filter", "student_filtered", "student_web"),
          ("captioner", "student_bootstrapped", "student_filtered"))


def capfilt_halves(per_seed: list[dict], benches: list[str]) -> dict[str, dict[str, MeanStd]]:
    """`{half: {benchmark|mean: MeanStd}}`: accuracy points each half adds, per seed then aggregated.

    `filter` = filter-only student minus raw alt-text student; `captioner` = captioner + filter
    student minus filter-only student. Empty when the experiment lacks one of the students.
    """
    out = {}
    for half, with_it, without in HALVES:
        if not all(with_it in s and without in s for s in per_seed):
            continue
        rows = [{b: _difference(s[with_it].get(b), s[without].get(b)) for b in benches} for s in per_seed]
        for row in rows:
            row["mean"] = mean_of_defined(row.values())
        out[half] = {k: spread([r[k] for r in rows]).mean_std for k in [*benches, "mean"]}
    return out


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def student_names(cfg: ExperimentConfig) -> list[str]:
    """Students compared to the ceiling, in report order (later rounds after round 1)."""
    names = [f"student_{s}" for s in STUDENT_ORDER if s in cfg.students]
    return names + [f"student_bootstrapped_r{r}" for r in range(2, cfg.rounds + 1)]


def bias_rates(steps: list[Step], source: str, target: str) -> dict[str, float | None]:
    """`{model: P(predicted target | true source)}` on the colour suite of one seed."""
    from mmw2s.data_pipelines.world import COLORS

    folder = Path(eval_step(steps).cfg.out)
    out = {}
    for path in sorted(folder.glob("*__world-color.json")):
        record = json.loads(path.read_text())
        confusion = record.get("details", {}).get("confusion")
        if not confusion:
            continue
        row = confusion[COLORS.index(source)]
        out[record["model"]] = row[COLORS.index(target)] / sum(row) if sum(row) else None
    return out


def bias_setting(cfg: ExperimentConfig) -> dict | None:
    """The world's colour bias when the experiment sets one (a bias sweep's rate 0 included)."""
    bias = cfg.world.get("bias") or {}
    if "rate" not in bias:
        return None
    return {"source": bias.get("source", "purple"), "target": bias.get("target", "blue"),
            "rate": float(bias["rate"] or 0.0), "clean": bool(bias.get("clean", False))}


def results(cfg: ExperimentConfig, steps_by_seed: dict[int, list[Step]]) -> Results:
    """Scores, PGR and bias of one experiment over its seeds."""
    per_seed = [seed_scores(steps) for steps in steps_by_seed.values()]
    agg = aggregate(per_seed)
    benches = cfg.headline or benchmark_order(b for m in agg.values() for b, v in m.items() if v.mean is not None)
    students = [s for s in student_names(cfg) if s in agg]
    pgr = pgr_over_seeds(per_seed, students, benches, cfg.pgr_min_gap)
    bias = None
    setting = bias_setting(cfg)
    if setting:
        rates = [bias_rates(steps, setting["source"], setting["target"]) for steps in steps_by_seed.values()]
        models = dict.fromkeys(m for r in rates for m in r)
        bias = {m: spread([r.get(m) for r in rates]).mean_std for m in models}
    captioning = captioning_results(cfg, steps_by_seed, per_seed, benches)
    rounds = round_rows(cfg, steps_by_seed, per_seed, benches, captioning) if cfg.rounds > 1 else None
    return Results(per_seed, agg, benches, students, pgr, bias, capfilt_halves(per_seed, benches),
                   captioning, rounds)


# --------------------------------------------------------------------------------------------
# What the report reads besides the scores


def audit_rows(steps_by_seed: dict[int, list[Step]], name: str) -> list[dict]:
    """The audit JSONs of the bootstrap step `name` (`audit_bootstrap`, ...) of every seed."""
    rows = []
    for steps in steps_by_seed.values():
        step = next((s for s in steps if s.name == name), None)
        path = Path(step.cfg.run) / "audit.json" if step else None
        if path and path.exists():
            rows.append(json.loads(path.read_text()))
    return rows


def curves(steps: list[Step]) -> dict[str, list[tuple[int, float]]]:
    """Loss curves of one seed's training runs, from their metrics.jsonl."""
    out = {}
    for step in steps:
        path = Path(step.out) / "metrics.jsonl"
        if step.stage != "train" or not path.exists():
            continue
        points = []
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "loss" in row and row.get("loss") is not None and "step" in row:
                points.append((row["step"], row["loss"]))
        out[step.name] = points
    return out


# --------------------------------------------------------------------------------------------
# Reports


def write_report(cfg: ExperimentConfig, steps_by_seed: dict[int, list[Step]],
                 out: Path | None = None, quiet: bool = False, res: Results | None = None) -> Path:
    """Write `report.md` (+ `report.json`, plots) of one experiment and print the headline.

    `res`: the experiment's `results` when the caller has them already (a sweep).
    """
    out = Path(out or cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res = res or results(cfg, steps_by_seed)
    if res.students:  # CLIP students (an experiment may train captioning students only)
        plot_pgr(res.pgr, out / "pgr.png")
    first_steps = next(iter(steps_by_seed.values()))
    plot_curves(curves(first_steps), out / "loss_curves.png", "training loss (first seed)")
    _copy_audit_plot(first_steps, out)
    if res.rounds:
        plot_rounds(res.rounds, out / "rounds.png")
    audits = {s.name: audit_rows(steps_by_seed, s.name) for s in first_steps if s.stage == "audit"}
    text = report_markdown(cfg, res, list(steps_by_seed), out, audits, bias_setting(cfg))
    (out / "report.md").write_text(text)
    write_json_atomic(out / "report.json", res.to_json(list(steps_by_seed)))
    if not quiet:
        print_headline(res)
    return out / "report.md"


def _copy_audit_plot(steps: list[Step], out: Path) -> None:
    for step in steps:
        if step.name == "audit_bootstrap":
            src = Path(step.cfg.run) / "audit_web_scores.png"
            if src.exists():
                shutil.copyfile(src, out / "filter_scores.png")


# --------------------------------------------------------------------------------------------
# Sweeps


def _value_slug(index: int, value: Any) -> str:
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("-")[:40]


def write_sweep_report(cfg: ExperimentConfig, variants: list[Variant]) -> Path:
    """One report per swept value under `OUT/sweep/`, and PGR against the value in `OUT/report.md`."""
    out = Path(cfg.out)
    label = cfg.sweep.label or cfg.sweep.key
    per_value: list[tuple[Variant, Results, Path]] = []
    for i, variant in enumerate(variants):
        folder = out / "sweep" / _value_slug(i, variant.value)
        res = results(variant.cfg, variant.steps_by_seed)
        write_report(variant.cfg, variant.steps_by_seed, out=folder, quiet=True, res=res)
        per_value.append((variant, res, folder))
    xs = [v.value for v, _, _ in per_value]
    students = list(dict.fromkeys(s for _, r, _ in per_value for s in r.students))
    series = {s: [r.pgr.get(s, {}).get("mean", NO_VALUE) for _, r, _ in per_value] for s in students}
    plot_lines(xs, series, out / "sweep_pgr.png", label, "mean PGR", f"PGR against {label}",
               refs=(0.0, 1.0))
    pgr_rows = sweep_table(label, students, [(v.value, r, f"{f.relative_to(out)}/report.md") for v, r, f in per_value])
    bias_series = _bias_series(per_value)
    if bias_series:
        setting = bias_setting(variants[-1].cfg) or {"source": "source", "target": "target"}
        ylabel = f"fraction of {setting['source']} called {setting['target']}"
        plot_lines(xs, bias_series, out / "sweep_bias.png", label, ylabel, "bias inherited from the teachers")
    bias_table = sweep_bias_table(label, xs, bias_series) if bias_series else None
    (out / "report.md").write_text(sweep_markdown(cfg, list(variants[0].steps_by_seed), out, pgr_rows, bias_table))
    write_json_atomic(out / "report.json", {"sweep": {"key": cfg.sweep.key, "values": xs},
                                            "pgr": {s: series[s] for s in students},
                                            "reports": [str(f) for _, _, f in per_value]})
    print("\n" + sweep_table(label, students, [(v.value, r, None) for v, r, _ in per_value]))
    return out / "report.md"


def _bias_series(per_value: list[tuple[Variant, Results, Path]]) -> dict[str, list[MeanStd]]:
    """model -> MeanStd of the bias rate per swept value (0 where the world is unbiased)."""
    if not any(r.bias for _, r, _ in per_value):
        return {}
    models = [m for m in (*WEAK, "student_bootstrapped", CEILING)
              if any(r.bias and m in r.bias for _, r, _ in per_value)]
    return {m: [(r.bias or {}).get(m, NO_VALUE) for _, r, _ in per_value] for m in models}
