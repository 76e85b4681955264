"""Gather one experiment's results over seeds into `report.md`, `report.json` and plots.

A plain run gets one report. A sweep (`sweep.key`) gets one report per value under `OUT/sweep/`
and, in `OUT/report.md`, PGR against the swept value. Iterative rounds add the PGR of each round's
student; a biased world (`world.bias.rate > 0`) adds how often each model names the bias source
colour by the target colour, the bias the students inherit from their teachers.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmw2s.data_pipelines import write_json_atomic
from mmw2s.experiment.captioning import (CaptioningResults, captioning_markdown, captioning_results,
                                         plot_rounds, round_rows, rounds_markdown)
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import Step, Variant
from mmw2s.report.markdown import (benchmark_order, fmt, headline, markdown_table, mean_std, pgr_table, plot_curves,
                          plot_lines, plot_pgr)

WEAK = ("weak_captioner", "weak_filter")
STUDENT_ORDER = ("web", "filtered", "bootstrapped")
CEILING = "student_gold"


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


def aggregate(per_seed: list[dict[str, dict[str, float | None]]]) -> dict[str, dict[str, tuple]]:
    """`{model: {benchmark: (mean, std, n)}}` over seeds."""
    models = dict.fromkeys(m for s in per_seed for m in s)
    out: dict[str, dict[str, tuple]] = {}
    for model in models:
        benches = dict.fromkeys(b for s in per_seed for b in s.get(model, {}))
        out[model] = {b: mean_std([s.get(model, {}).get(b) for s in per_seed]) for b in benches}
    return out


def pgr_over_seeds(per_seed: list[dict], students: list[str], benches: list[str],
                   min_gap: float = 1e-6) -> dict:
    """`{student: {benchmark|mean: (mean, std)}}`: PGR computed per seed, then aggregated."""
    tables = [pgr_table({m: {b: v for b, v in s.get(m, {}).items() if b in benches} for m in s},
                        WEAK, students, CEILING, min_gap) for s in per_seed]
    out = {}
    for student in students:
        keys = list(benches) + ["mean"]
        out[student] = {k: mean_std([t[student].get(k) for t in tables])[:2] for k in keys}
    return out


# Each half of CapFilt, as the difference between two students trained with the same budget:
# (name, student with that half, student without it).
HALVES = (("filter", "student_filtered", "student_web"),
          ("captioner", "student_bootstrapped", "student_filtered"))


def capfilt_halves(per_seed: list[dict], benches: list[str]) -> dict[str, dict[str, tuple]]:
    """`{half: {benchmark|mean: (mean, std)}}`: accuracy points each half adds, per seed then aggregated.

    `filter` = filter-only student minus raw alt-text student; `captioner` = captioner + filter
    student minus filter-only student. Empty when the experiment lacks one of the students.
    """
    out = {}
    for half, with_it, without in HALVES:
        if not all(with_it in s and without in s for s in per_seed):
            continue
        rows = [{b: _difference(s[with_it].get(b), s[without].get(b)) for b in benches} for s in per_seed]
        for row in rows:
            defined = [v for v in row.values() if v is not None]
            row["mean"] = sum(defined) / len(defined) if defined else None
        out[half] = {k: mean_std([r[k] for r in rows])[:2] for k in [*benches, "mean"]}
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


@dataclass
class Results:
    """Everything the report of one experiment (or one sweep value) shows."""

    per_seed: list[dict]
    agg: dict[str, dict[str, tuple]]
    benches: list[str]
    students: list[str]
    pgr: dict[str, dict[str, tuple]]
    bias: dict[str, tuple] | None  # model -> (mean, std) of P(target | source)
    halves: dict[str, dict[str, tuple]]  # what the filter and the captioner each add (points)
    captioning: CaptioningResults | None = None  # the captioning students, when there are any
    rounds: list[dict[str, tuple]] | None = None  # per round: students, filter audit, captions


def results(cfg: ExperimentConfig, steps_by_seed: dict[int, list[Step]]) -> Results:
    """Scores, PGR and bias of one experiment over its seeds."""
    per_seed = [seed_scores(steps) for steps in steps_by_seed.values()]
    agg = aggregate(per_seed)
    benches = cfg.headline or benchmark_order(b for m in agg.values() for b, v in m.items() if v[0] is not None)
    students = [s for s in student_names(cfg) if s in agg]
    pgr = pgr_over_seeds(per_seed, students, benches, cfg.pgr_min_gap)
    bias = None
    setting = bias_setting(cfg)
    if setting:
        rates = [bias_rates(steps, setting["source"], setting["target"]) for steps in steps_by_seed.values()]
        models = dict.fromkeys(m for r in rates for m in r)
        bias = {m: mean_std([r.get(m) for r in rates])[:2] for m in models}
    captioning = captioning_results(cfg, steps_by_seed, per_seed, benches)
    rounds = round_rows(cfg, steps_by_seed, per_seed, benches, captioning) if cfg.rounds > 1 else None
    return Results(per_seed, agg, benches, students, pgr, bias, capfilt_halves(per_seed, benches),
                   captioning, rounds)


# --------------------------------------------------------------------------------------------
# Tables


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
              lambda a: a["synthetic"]["all"].get("exact_match") if a["synthetic"]["all"]["captions"] else None),
             ("colour words of synthetic captions that are right",
              lambda a: _attribute(a, "color")),
             ("shape words of synthetic captions that are right",
              lambda a: _attribute(a, "shape"))]
    for label, get in facts:
        m, s, _ = mean_std([get(a) for a in audits])
        if m is not None:
            lines.append(f"- {label}: {fmt(m, s)}%")
    return "\n".join(lines)


def _attribute(audit: dict, name: str) -> float | None:
    synthetic = audit["synthetic"]["all"]
    if not synthetic.get("captions"):
        return None
    return synthetic.get("attributes", {}).get(name, {}).get("precision")


def scores_table(res: Results) -> str:
    """Models x headline benchmarks (mean ± std)."""
    models = [m for m in (*WEAK, *res.students, CEILING) if m in res.agg]
    return markdown_table(["model", *res.benches],
                          [[m, *[fmt(*res.agg[m].get(b, (None, None, 0))[:2]) for b in res.benches]]
                           for m in models])


def pgr_markdown(res: Results) -> str:
    """Students x benchmarks PGR, with the mean."""
    keys = [*res.benches, "mean"]
    return markdown_table(["student", *keys],
                          [[s, *[fmt(*res.pgr[s][k], pct=False) for k in keys]] for s in res.students])


def halves_markdown(res: Results) -> str:
    """Accuracy points the filter and the captioner each add, per benchmark, with the mean."""
    keys = [*res.benches, "mean"]
    return markdown_table(["half of CapFilt", *keys],
                          [[half, *[_signed(*by[k]) for k in keys]] for half, by in res.halves.items()])


def _signed(value: float | None, std: float | None) -> str:
    text = fmt(value, std)
    return text if value is None or value < 0 else "+" + text


def bias_table(res: Results, setting: dict) -> str:
    """How often each model calls the bias source colour by the target colour."""
    assert res.bias is not None
    models = [m for m in (*WEAK, *res.students, CEILING) if m in res.bias]
    rows = [[m, fmt(*res.bias[m])] for m in models]
    head = f"{setting['source']} objects called {setting['target']} (%)"
    return markdown_table(["model", head], rows)


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
    text = _report_text(cfg, res, steps_by_seed, out)
    (out / "report.md").write_text(text)
    write_json_atomic(out / "report.json", {"seeds": list(steps_by_seed), "scores": res.per_seed,
                                            "aggregate": res.agg, "pgr": res.pgr,
                                            "benchmarks": res.benches, "bias": res.bias,
                                            "capfilt_halves": res.halves,
                                            "captioning": _captioning_json(res.captioning),
                                            "rounds": res.rounds})
    if not quiet:
        _print_headline(res)
    return out / "report.md"


def _print_headline(res: Results) -> None:
    if res.benches:
        print("\n" + scores_table(res))
    if res.students:
        print("\nPGR (performance gap recovered; 0 = best weak teacher, 1 = gold ceiling)\n"
              + pgr_markdown(res))
    if res.halves:
        print("\nWhat each half of CapFilt adds (accuracy points)\n" + halves_markdown(res))
    if res.captioning:
        print("\n" + "\n".join(captioning_markdown(res.captioning, res.agg, res.benches)[4:]))
    if res.rounds:
        print("\nRounds\n" + rounds_markdown(res.rounds))


def _captioning_json(cap: CaptioningResults | None) -> dict | None:
    if cap is None:
        return None
    return {"students": cap.students, "seeds": cap.seeds, "metrics_per_seed": cap.per_seed,
            "metrics": cap.metrics, "pgr_per_seed": cap.pgr_per_seed, "pgr": cap.pgr,
            "zero_shot_pgr": cap.zero_shot_pgr}


def _round_students(cfg: ExperimentConfig) -> list[str]:
    return ["student_bootstrapped"] + [f"student_bootstrapped_r{r}" for r in range(2, cfg.rounds + 1)]


def _copy_audit_plot(steps: list[Step], out: Path) -> None:
    for step in steps:
        if step.name == "audit_bootstrap":
            src = Path(step.cfg.run) / "audit_web_scores.png"
            if src.exists():
                shutil.copyfile(src, out / "filter_scores.png")


def _spread(steps_by_seed: dict) -> str:
    seeds = list(steps_by_seed)
    return (f"mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1
            else f"seed {seeds[0]}")


def _report_text(cfg: ExperimentConfig, res: Results, steps_by_seed: dict, out: Path) -> str:
    sections: list[Any] = [
        "# Weak-to-strong report", "",
        f"Run folder `{out}`; {_spread(steps_by_seed)}. Numbers in %: top-1 accuracy for classification, "
        "the mean of image->text and text->image recall@1 for retrieval, exact match for VQA and for "
        "captions.", "",
    ]
    if res.benches:  # none when every suite is one without a headline number (captions only)
        sections += ["## Models x benchmarks", "", scores_table(res), ""]
    if res.students:
        sections += [
            "## Performance gap recovered", "",
            "PGR = (student − best weak teacher) / (gold ceiling − best weak teacher), per benchmark; n/a "
            f"where the ceiling does not beat the best weak teacher by more than {cfg.pgr_min_gap * 100:g} "
            "points (no gap to recover, or one within evaluation noise).", "", pgr_markdown(res), "",
            "![PGR](pgr.png)", ""]
    if res.captioning:
        sections += captioning_markdown(res.captioning, res.agg, res.benches)
    if res.halves:
        sections += ["## What each half of CapFilt adds", "",
                     "Accuracy points between students trained with the same budget: `filter` = "
                     "filter-only student − raw alt-text student; `captioner` = captioner + filter "
                     "student − filter-only student (the synthetic captions' share).", "",
                     halves_markdown(res), ""]
    if res.rounds:
        renew = ("and round r's bootstrapped captioning student as the captioner"
                 if "captioner_bootstrapped" in cfg.students else
                 "(the weak captioner stays: no captioning student is trained)")
        if cfg.renew == "finetune_on_clean":
            renew += ", each first fine-tuned on the clean split (BLIP's loop: renew=finetune_on_clean)"
        sections += ["## Iterative rounds", "",
                     "Round r+1 bootstraps the same web split again with round r's bootstrapped CLIP "
                     f"student as the filter {renew}; each round's students start from scratch with the "
                     "same budgets. Whether errors compound or shrink shows in the filter audit and the "
                     "synthetic captions' accuracy round by round (%).", "",
                     rounds_markdown(res.rounds), "",
                     markdown_table(["round", "CLIP student", "mean PGR"],
                                    [[r, s, fmt(*res.pgr.get(s, {}).get("mean", (None, None)), pct=False)]
                                     for r, s in enumerate(_round_students(cfg), 1)]), "",
                     "![rounds](rounds.png)", ""]
    setting = bias_setting(cfg)
    if setting and setting["rate"] > 0 and res.bias:
        sections += ["## Systematic bias", "",
                     f"The world calls {setting['source']} objects {setting['target']} at rate "
                     f"{setting['rate']:g} in the web alt-text"
                     + (" and in the clean split the teachers learn from" if setting["clean"] else "")
                     + ". On the colour suite:", "", bias_table(res, setting), ""]
    sections += ["## The filter, audited against the world's truth", "",
                 "### captioner + filter (bootstrap)", "",
                 filter_table(audit_rows(steps_by_seed, "audit_bootstrap")), ""]
    if "filtered" in cfg.students:
        sections += ["### filter only (ablation)", "",
                     filter_table(audit_rows(steps_by_seed, "audit_filter_only")), ""]
    for r in range(2, cfg.rounds + 1):
        sections += [f"### round {r} (teachers: round {r - 1}'s students)", "",
                     filter_table(audit_rows(steps_by_seed, f"audit_bootstrap_r{r}")), ""]
    sections += ["![filter scores per noise type](filter_scores.png)", "",
                 "## Training curves", "", "![loss](loss_curves.png)", ""]
    return "\n".join(str(s) for s in sections)


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
    series = {s: [r.pgr.get(s, {}).get("mean", (None, None)) for _, r, _ in per_value] for s in students}
    plot_lines(xs, series, out / "sweep_pgr.png", label, "mean PGR", f"PGR against {label}",
               refs=(0.0, 1.0))
    rows = [[v.value, *[fmt(*r.pgr.get(s, {}).get("mean", (None, None)), pct=False) for s in students],
             f"[report]({f.relative_to(out)}/report.md)"] for v, r, f in per_value]
    sections = ["# Weak-to-strong sweep", "",
                f"Run folder `{out}`; {_spread(variants[0].steps_by_seed)}; one experiment per value of "
                f"`{cfg.sweep.key}`. Mean PGR over the headline benchmarks (n/a: no benchmark with a gap "
                "to recover).", "", markdown_table([label, *students, "full report"], rows), "",
                "![PGR against the swept value](sweep_pgr.png)", ""]
    bias_series = _bias_series(per_value)
    if bias_series:
        setting = bias_setting(variants[-1].cfg) or {"source": "source", "target": "target"}
        ylabel = f"fraction of {setting['source']} called {setting['target']}"
        plot_lines(xs, bias_series, out / "sweep_bias.png", label, ylabel, "bias inherited from the teachers")
        sections += ["## Bias inherited", "", markdown_table(
            [label, *bias_series], [[x, *[fmt(*bias_series[m][i]) for m in bias_series]] for i, x in enumerate(xs)]),
            "", "![bias](sweep_bias.png)", ""]
    (out / "report.md").write_text("\n".join(str(s) for s in sections))
    write_json_atomic(out / "report.json", {"sweep": {"key": cfg.sweep.key, "values": xs},
                                            "pgr": {s: series[s] for s in students},
                                            "reports": [str(f) for _, _, f in per_value]})
    print("\n" + markdown_table([label, *students], [row[:-1] for row in rows]))
    return out / "report.md"


def _bias_series(per_value: list[tuple[Variant, Results, Path]]) -> dict[str, list[tuple]]:
    """model -> (mean, std) of the bias rate per swept value (0 where the world is unbiased)."""
    if not any(r.bias for _, r, _ in per_value):
        return {}
    models = [m for m in (*WEAK, "student_bootstrapped", CEILING)
              if any(r.bias and m in r.bias for _, r, _ in per_value)]
    return {m: [(r.bias or {}).get(m, (None, None)) for _, r, _ in per_value] for m in models}
