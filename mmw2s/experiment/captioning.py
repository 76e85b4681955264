"""The captioning students in the report, and what each bootstrapping round's teachers did.

Captioning students (`students: [captioner_web, captioner_filtered, captioner_bootstrapped,
captioner_gold]`) are scored on the `world:captions` suite (greedy captions against the scene:
exact match, object recall, hallucination rate) and by likelihood on the zero-shot suites. Their
PGR is measured against the weak captioner, the model whose captions they were trained on, with
`captioner_gold` as the ceiling: PGR = (student − weak) / (ceiling − weak) for metrics where
higher is better, and the same gap with the signs turned for the hallucination rate (lower is
better), so 1 always means "as good as the ceiling". Computed per seed, then mean ± std.
When the eval also ran `world:captioning` (the captioning task: COCO metrics against every gold
caption), its CIDEr and CLIPScore join the table and get a PGR of their own (the "mean" PGR stays
the mean over the three caption-accuracy metrics, so reports with and without them compare).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmw2s.report.experiment import CAPTION_CEILING, CAPTION_WEAK, CaptioningResults
from mmw2s.report.stats import MeanStd, mean_of_defined, pgr, pgr_table, spread

if TYPE_CHECKING:
    from mmw2s.experiment.config import ExperimentConfig
    from mmw2s.experiment.planner import Step

CAPTIONS = "world:captions"
METRICS = ("exact_match", "object_recall", "hallucination_rate")
COCO_SUITE = "world:captioning"  # the captioning task's suite; its metrics join when it ran
COCO_METRICS = ("CIDEr", "clip_score")
LOWER_IS_BETTER = frozenset({"hallucination_rate"})
ORDER = ("captioner_web", "captioner_filtered", "captioner_bootstrapped")


def captioning_students(cfg: ExperimentConfig) -> list[str]:
    """Captioning students compared to their ceiling, in report order (later rounds last)."""
    names = [s for s in ORDER if s in cfg.students]
    if "captioner_bootstrapped" in cfg.students:
        names += [f"captioner_bootstrapped_r{r}" for r in range(2, cfg.rounds + 1)]
    return names


def caption_metrics(steps: list[Step]) -> dict[str, dict[str, float]]:
    """`{model: {metric: value}}` on the captions suite of one seed (models that write captions)."""
    eval_step = next(s for s in steps if s.stage == "eval")
    summary = json.loads((Path(eval_step.cfg.out) / "summary.json").read_text())
    out = {model: {m: by[CAPTIONS][m] for m in METRICS if by[CAPTIONS].get(m) is not None}
           for model, by in summary.items() if CAPTIONS in by}
    for model, by in summary.items():
        coco = by.get(COCO_SUITE) or {}
        out.setdefault(model, {}).update({m: coco[m] for m in COCO_METRICS if coco.get(m) is not None})
    return {model: scores for model, scores in out.items() if scores}


def metric_keys(per_seed: list[dict[str, dict[str, float]]]) -> tuple[str, ...]:
    """The caption-accuracy metrics, plus CIDEr / CLIPScore when some model has them."""
    extra = [m for m in COCO_METRICS if any(m in scores for s in per_seed for scores in s.values())]
    return (*METRICS, *extra)


def caption_pgr(scores: dict[str, dict[str, float]], students: list[str],
                min_gap: float, keys: tuple[str, ...] = METRICS) -> dict[str, dict[str, float | None]]:
    """`{student: {metric|mean: PGR}}` of one seed against the weak captioner (mean over METRICS)."""
    out = {}
    for student in students:
        row = {}
        for metric in keys:
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            values = [scores.get(m, {}).get(metric) for m in (student, CAPTION_WEAK, CAPTION_CEILING)]
            row[metric] = None if None in values else pgr(*(sign * v for v in values), min_gap)
        row["mean"] = mean_of_defined(row.get(k) for k in METRICS)
        out[student] = row
    return out


def captioning_results(cfg: ExperimentConfig, steps_by_seed: dict[int, list[Step]],
                       scores_per_seed: list[dict], benches: list[str]) -> CaptioningResults | None:
    """The captioning students' scores and PGR over seeds; None when the experiment has none."""
    students = captioning_students(cfg)
    if not students:
        return None
    per_seed = [caption_metrics(steps) for steps in steps_by_seed.values()]
    models = list(dict.fromkeys(m for s in per_seed for m in s))
    shown = metric_keys(per_seed)
    metrics = {m: {k: spread([s.get(m, {}).get(k) for s in per_seed]) for k in shown} for m in models}
    pgr_seeds = [caption_pgr(s, students, cfg.pgr_min_gap, shown) for s in per_seed]
    keys = [*shown, "mean"]
    pgr_agg = {st: {k: spread([t[st].get(k) for t in pgr_seeds]).mean_std for k in keys} for st in students}
    zero = [pgr_table({m: {b: v for b, v in s.get(m, {}).items() if b in benches} for m in s},
                      [CAPTION_WEAK], students, CAPTION_CEILING, cfg.pgr_min_gap) for s in scores_per_seed]
    zero_agg = {st: {k: spread([t[st].get(k) for t in zero]).mean_std for k in [*benches, "mean"]}
                for st in students}
    return CaptioningResults(list(steps_by_seed), students, per_seed, metrics, pgr_seeds, pgr_agg, zero_agg, shown)


# --------------------------------------------------------------------------------------------
# Rounds


def round_names(r: int) -> dict[str, str]:
    """Step and model names of round `r` (round 1 has no suffix)."""
    suffix = "" if r == 1 else f"_r{r}"
    return {"clip": f"student_bootstrapped{suffix}", "captioner": f"captioner_bootstrapped{suffix}",
            "audit": f"audit_bootstrap{suffix}"}


def _audit(steps: list[Step], name: str) -> dict | None:
    step = next((s for s in steps if s.name == name), None)
    path = Path(step.cfg.run) / "audit.json" if step else None
    return json.loads(path.read_text()) if path and path.exists() else None


def round_rows(cfg: ExperimentConfig, steps_by_seed: dict[int, list[Step]], scores_per_seed: list[dict],
               benches: list[str], cap: CaptioningResults | None) -> list[dict[str, MeanStd]]:
    """Per round, `{quantity: MeanStd}` over seeds: students' scores, filter audit, captions."""
    rows = []
    for r in range(1, cfg.rounds + 1):
        names = round_names(r)
        per_seed: dict[str, list] = {}
        for i, steps in enumerate(steps_by_seed.values()):
            clip = mean_of_defined(scores_per_seed[i].get(names["clip"], {}).get(b) for b in benches)
            values: dict[str, Any] = {"CLIP student mean accuracy": clip}
            if cap is not None:
                mine = cap.per_seed[i].get(names["captioner"], {})
                values["captioning student exact match"] = mine.get("exact_match")
                values["captioning student object recall"] = mine.get("object_recall")
                values["captioning student hallucination rate"] = mine.get("hallucination_rate")
            values.update(_audit_values(_audit(steps, names["audit"])))
            for key, value in values.items():
                per_seed.setdefault(key, []).append(value)
        rows.append({k: spread(v).mean_std for k, v in per_seed.items()})
    return rows


def _audit_values(audit: dict | None) -> dict[str, float | None]:
    """Filter precision / recall, kept fraction per noise type, synthetic caption accuracy."""
    if audit is None:
        return {}
    overall, synthetic = audit["web_filter"]["overall"], audit["synthetic"]["all"]
    out = {"filter precision": overall.get("precision"), "filter recall": overall.get("recall")}
    for noise, entry in audit["web_filter"].get("per_noise_type", {}).items():
        out[f"kept: {noise}"] = entry.get("kept_fraction")
    if synthetic.get("captions"):
        out["synthetic exact match"] = synthetic.get("exact_match")
        out["synthetic hallucination rate"] = synthetic.get("hallucination_rate")
    return out
