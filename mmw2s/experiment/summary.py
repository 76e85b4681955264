"""Gather one experiment's results over seeds into `report.md`, `report.json` and plots."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from data_pipelines.shards import write_json_atomic
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import Step
from mmw2s.report import (fmt, headline, markdown_table, mean_std, pgr_table, plot_curves,
                          plot_pgr)

WEAK = ("weak_captioner", "weak_filter")
STUDENT_ORDER = ("web", "filtered", "bootstrapped")


def seed_scores(steps: list[Step]) -> dict[str, dict[str, float | None]]:
    """`{model: {benchmark: headline}}` of one seed, from its eval summary."""
    step = next(s for s in steps if s.stage == "eval")
    summary = json.loads((Path(step.cfg.out) / "summary.json").read_text())
    return {model: {bench: headline(metrics) for bench, metrics in by_bench.items()}
            for model, by_bench in summary.items()}


def aggregate(per_seed: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, tuple]]:
    """`{model: {benchmark: (mean, std, n)}}` over seeds."""
    models = dict.fromkeys(m for s in per_seed for m in s)
    out: dict[str, dict[str, tuple]] = {}
    for model in models:
        benches = dict.fromkeys(b for s in per_seed for b in s.get(model, {}))
        out[model] = {b: mean_std([s.get(model, {}).get(b) for s in per_seed]) for b in benches}
    return out


def pgr_over_seeds(per_seed: list[dict], students: list[str], benches: list[str]) -> dict:
    """`{student: {benchmark|mean: (mean, std)}}`: PGR computed per seed, then aggregated."""
    tables = [pgr_table({m: {b: v for b, v in s.get(m, {}).items() if b in benches} for m in s},
                        WEAK, students, "student_gold") for s in per_seed]
    out = {}
    for student in students:
        keys = list(benches) + ["mean"]
        out[student] = {k: mean_std([t[student].get(k) for t in tables])[:2] for k in keys}
    return out


def audit_rows(steps_by_seed: dict[int, list[Step]], name: str) -> list[dict]:
    """The audit JSONs of the bootstrap step `name` (`audit_bootstrap`, ...) of every seed."""
    rows = []
    for steps in steps_by_seed.values():
        step = next((s for s in steps if s.name == name), None)
        path = Path(step.cfg.run) / "audit.json" if step else None
        if path and path.exists():
            rows.append(json.loads(path.read_text()))
    return rows


def filter_table(audits: list[dict]) -> str:
    """Per noise type: kept fraction of the web caption (mean ± std over seeds)."""
    if not audits:
        return "_no audit_"
    per_type = audits[0]["web_filter"].get("per_noise_type", {})
    rows = []
    for noise in per_type:
        kept = [a["web_filter"]["per_noise_type"].get(noise, {}).get("kept_fraction") for a in audits]
        m, s, _ = mean_std(kept)
        rows.append([noise, fmt(m, s)])
    overall = [a["web_filter"]["overall"] for a in audits]
    lines = [markdown_table(["noise type", "web caption kept (%)"], rows), ""]
    for key in ("precision", "recall", "f1"):
        m, s, _ = mean_std([o.get(key) for o in overall])
        lines.append(f"- web-caption filter {key} (positive = correct alt-text): {fmt(m, s)}%")
    facts = [("training captions that are right", lambda a: a["chosen"].get("chosen_correct")),
             ("raw web alt-text that is right", lambda a: a["chosen"].get("web_correct")),
             ("synthetic captions equal to the gold caption",
              lambda a: a["synthetic"]["all"].get("exact_match") if a["synthetic"]["all"]["captions"] else None)]
    for label, get in facts:
        m, s, _ = mean_std([get(a) for a in audits])
        if m is not None:
            lines.append(f"- {label}: {fmt(m, s)}%")
    return "\n".join(lines)


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


def write_report(cfg: ExperimentConfig, steps_by_seed: dict[int, list[Step]]) -> Path:
    """Write `OUT/report.md` (+ `report.json`, `pgr.png`, `loss_curves.png`) and print the headline."""
    out = Path(cfg.out)
    per_seed = [seed_scores(steps) for steps in steps_by_seed.values()]
    agg = aggregate(per_seed)
    benches = cfg.headline or sorted({b for m in agg.values() for b, v in m.items() if v[0] is not None})
    students = [f"student_{s}" for s in STUDENT_ORDER if s in cfg.students]
    pgr = pgr_over_seeds(per_seed, students, benches)
    models = [m for m in (*WEAK, *students, "student_gold") if m in agg]
    table = markdown_table(["model", *benches],
                           [[m, *[fmt(*agg[m].get(b, (None, None, 0))[:2]) for b in benches]] for m in models])
    pgr_md = markdown_table(["student", *benches, "mean"],
                            [[s, *[fmt(*pgr[s][b], pct=False) for b in [*benches, "mean"]]] for s in students])
    plot_pgr(pgr, out / "pgr.png")
    first_steps = next(iter(steps_by_seed.values()))
    plot_curves(curves(first_steps), out / "loss_curves.png", "training loss (first seed)")
    _copy_audit_plot(first_steps, out)
    text = _report_text(cfg, table, pgr_md, steps_by_seed)
    (out / "report.md").write_text(text)
    write_json_atomic(out / "report.json", {"seeds": list(steps_by_seed), "scores": per_seed,
                                            "aggregate": agg, "pgr": pgr, "benchmarks": benches})
    print("\n" + table + "\n\nPGR (performance gap recovered; 0 = best weak teacher, 1 = gold ceiling)\n"
          + pgr_md)
    return out / "report.md"


def _copy_audit_plot(steps: list[Step], out: Path) -> None:
    for step in steps:
        if step.name == "audit_bootstrap":
            src = Path(step.cfg.run) / "audit_web_scores.png"
            if src.exists():
                shutil.copyfile(src, out / "filter_scores.png")


def _report_text(cfg: ExperimentConfig, table: str, pgr_md: str, steps_by_seed: dict) -> str:
    seeds = list(steps_by_seed)
    n = len(seeds)
    spread = f"mean ± std over {n} seeds ({', '.join(map(str, seeds))})" if n > 1 else f"seed {seeds[0]}"
    sections: list[Any] = [
        "# Weak-to-strong report", "",
        f"Run folder `{cfg.out}`; {spread}. Numbers in %: top-1 accuracy for classification, the mean "
        "of image->text and text->image recall@1 for retrieval.", "",
        "## Models x benchmarks", "", table, "",
        "## Performance gap recovered", "",
        "PGR = (student − best weak teacher) / (gold ceiling − best weak teacher), per benchmark; "
        "n/a where the ceiling does not beat the weak teacher.", "", pgr_md, "",
        "![PGR](pgr.png)", "",
        "## The filter, audited against the world's truth", "",
        "### captioner + filter (bootstrap)", "", filter_table(audit_rows(steps_by_seed, "audit_bootstrap")), "",
    ]
    if "filtered" in cfg.students:
        sections += ["### filter only (ablation)", "",
                     filter_table(audit_rows(steps_by_seed, "audit_filter_only")), ""]
    sections += ["![filter scores per noise type](filter_scores.png)", "",
                 "## Training curves", "", "![loss](loss_curves.png)", ""]
    return "\n".join(str(s) for s in sections)
