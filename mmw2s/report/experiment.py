"""The weak-to-strong report of an experiment (`report.md`, `report.json`, the printed headline) and
of a sweep, from the numbers `mmw2s.experiment.summary` gathers over seeds.

The pages are `templates/experiment.md.j2` (with `captioning.md.j2`) and `templates/sweep.md.j2`;
the tables they show are built here, one function per table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mmw2s.report.markdown import render
from mmw2s.report.stats import NO_VALUE, MeanStd, Spread, spread
from mmw2s.report.tables import fmt, fmt_spread, markdown_table, signed

# The models of a weak-to-strong experiment the tables compare, in row order around the students.
WEAK = ("weak_captioner", "weak_filter")
CEILING = "student_gold"
# The captioning students' teacher and ceiling.
CAPTION_WEAK = "weak_captioner"
CAPTION_CEILING = "captioner_gold"
CAPTION_NAMES = {"exact_match": "exact match", "object_recall": "object recall",
                 "hallucination_rate": "hallucination rate", "CIDEr": "CIDEr", "clip_score": "CLIPScore"}


@dataclass
class CaptioningResults:
    """What the captioning section of a report shows."""

    seeds: list[int]
    students: list[str]
    per_seed: list[dict[str, dict[str, float]]]  # caption metrics of every model, per seed
    metrics: dict[str, dict[str, Spread]]  # model -> metric
    pgr_per_seed: list[dict[str, dict[str, float | None]]]
    pgr: dict[str, dict[str, MeanStd]]  # student -> metric|mean
    zero_shot_pgr: dict[str, dict[str, MeanStd]]  # student -> benchmark|mean
    keys: tuple[str, ...]  # the metrics shown (CIDEr, CLIPScore too when they were measured)

    def to_json(self) -> dict:
        """The `captioning` section of report.json."""
        return {"students": self.students, "seeds": self.seeds, "metrics_per_seed": self.per_seed,
                "metrics": self.metrics, "pgr_per_seed": self.pgr_per_seed, "pgr": self.pgr,
                "zero_shot_pgr": self.zero_shot_pgr}


@dataclass
class Results:
    """Everything the report of one experiment (or one sweep value) shows."""

    per_seed: list[dict]
    agg: dict[str, dict[str, Spread]]
    benches: list[str]
    students: list[str]
    pgr: dict[str, dict[str, MeanStd]]
    bias: dict[str, MeanStd] | None  # model -> P(target | source)
    halves: dict[str, dict[str, MeanStd]]  # what the filter and the captioner each add (points)
    captioning: CaptioningResults | None = None  # the captioning students, when there are any
    rounds: list[dict[str, MeanStd]] | None = None  # per round: students, filter audit, captions

    def to_json(self, seeds: list[int]) -> dict:
        """report.json."""
        return {"seeds": seeds, "scores": self.per_seed, "aggregate": self.agg, "pgr": self.pgr,
                "benchmarks": self.benches, "bias": self.bias, "capfilt_halves": self.halves,
                "captioning": self.captioning.to_json() if self.captioning else None, "rounds": self.rounds}


# --------------------------------------------------------------------------------------------
# Tables


def scores_table(res: Results) -> str:
    """Models x headline benchmarks (mean ± std)."""
    models = [m for m in (*WEAK, *res.students, CEILING) if m in res.agg]
    return markdown_table(["model", *res.benches],
                          [[m, *[fmt_spread(res.agg[m].get(b, NO_VALUE)) for b in res.benches]] for m in models])


def pgr_markdown(res: Results) -> str:
    """Students x benchmarks PGR, with the mean."""
    keys = [*res.benches, "mean"]
    return markdown_table(["student", *keys],
                          [[s, *[fmt_spread(res.pgr[s][k], pct=False) for k in keys]] for s in res.students])


def halves_markdown(res: Results) -> str:
    """Accuracy points the filter and the captioner each add, per benchmark, with the mean."""
    keys = [*res.benches, "mean"]
    return markdown_table(["half of CapFilt", *keys],
                          [[half, *[signed(by[k]) for k in keys]] for half, by in res.halves.items()])


def bias_table(res: Results, setting: dict) -> str:
    """How often each model calls the bias source colour by the target colour."""
    assert res.bias is not None
    models = [m for m in (*WEAK, *res.students, CEILING) if m in res.bias]
    head = f"{setting['source']} objects called {setting['target']} (%)"
    return markdown_table(["model", head], [[m, fmt_spread(res.bias[m])] for m in models])


def round_pgr_table(res: Results, rounds: int) -> str:
    """The mean PGR of each round's bootstrapped CLIP student."""
    students = ["student_bootstrapped"] + [f"student_bootstrapped_r{r}" for r in range(2, rounds + 1)]
    return markdown_table(["round", "CLIP student", "mean PGR"],
                          [[r, s, fmt_spread(res.pgr.get(s, {}).get("mean", NO_VALUE), pct=False)]
                           for r, s in enumerate(students, 1)])


def rounds_markdown(rows: list[dict[str, MeanStd]]) -> str:
    """Round x quantity table (percentages)."""
    keys = list(dict.fromkeys(k for row in rows for k in row if not k.startswith("kept: ")))
    return markdown_table(["round", *keys], [[r, *[fmt_spread(row.get(k, NO_VALUE)) for k in keys]]
                                             for r, row in enumerate(rows, 1)])


def captioning_scores_table(cap: CaptioningResults, agg: dict[str, dict[str, Spread]], benches: list[str]) -> str:
    """Captioners x caption metrics and zero-shot benchmarks (mean ± std)."""
    models = [m for m in (CAPTION_WEAK, *cap.students, CAPTION_CEILING) if m in cap.metrics or m in agg]
    return markdown_table(
        ["captioner", *[CAPTION_NAMES[k] for k in cap.keys], *benches],
        [[m, *[fmt_spread(cap.metrics.get(m, {}).get(k, NO_VALUE)) for k in cap.keys],
          *[fmt_spread(agg.get(m, {}).get(b, NO_VALUE)) for b in benches]] for m in models])


def caption_pgr_table(cap: CaptioningResults) -> str:
    """Each captioning student's PGR per caption metric: per seed, then mean ± std."""
    rows = [[st, CAPTION_NAMES.get(k, k), *[fmt(t[st].get(k), pct=False) for t in cap.pgr_per_seed],
             fmt_spread(cap.pgr[st][k], pct=False)] for st in cap.students for k in [*cap.keys, "mean"]]
    return markdown_table(["student", "metric", *[f"seed {s}" for s in cap.seeds], "mean ± std"], rows)


def zero_shot_pgr_table(cap: CaptioningResults, benches: list[str]) -> str:
    """The captioning students' PGR on the zero-shot suites against the weak captioner."""
    keys = [*benches, "mean"]
    return markdown_table(["student", *keys], [[st, *[fmt_spread(cap.zero_shot_pgr[st][k], pct=False)
                                                      for k in keys]] for st in cap.students])


@dataclass
class FilterAudit:
    """A bootstrap stage's audit over seeds: the web caption kept per noise type, the filter's
    precision / recall / F1, and how right the training and synthetic captions are."""

    kept: list[list[str]]  # table rows: noise type, kept fraction
    precision: Spread
    recall: Spread
    f1: Spread
    chosen_correct: Spread
    web_correct: Spread
    synthetic_exact: Spread
    colour: Spread
    shape: Spread


def filter_audit(audits: list[dict]) -> FilterAudit | None:
    """The audit JSONs of one bootstrap stage, one per seed, over seeds (None without any)."""
    if not audits:
        return None
    kept = [[noise, fmt_spread(spread([a["web_filter"]["per_noise_type"].get(noise, {}).get("kept_fraction")
                                       for a in audits]))]
            for noise in audits[0]["web_filter"].get("per_noise_type", {})]
    overall = {key: spread([a["web_filter"]["overall"].get(key) for a in audits]) for key in ("precision", "recall", "f1")}
    synthetic = [a["synthetic"]["all"] for a in audits]
    return FilterAudit(
        kept, **overall,
        chosen_correct=spread([a["chosen"].get("chosen_correct") for a in audits]),
        web_correct=spread([a["chosen"].get("web_correct") for a in audits]),
        synthetic_exact=spread([s.get("exact_match") if s["captions"] else None for s in synthetic]),
        colour=spread([_attribute_precision(s, "color") for s in synthetic]),
        shape=spread([_attribute_precision(s, "shape") for s in synthetic]))


def _attribute_precision(synthetic: dict, name: str) -> float | None:
    if not synthetic.get("captions"):
        return None
    return synthetic.get("attributes", {}).get(name, {}).get("precision")


# --------------------------------------------------------------------------------------------
# Pages


def seeds_phrase(seeds: Sequence[int]) -> str:
    """`mean ± std over 3 seeds (0, 1, 2)`, or `seed 0`."""
    return (f"mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1
            else f"seed {seeds[0]}")


def report_markdown(cfg: Any, res: Results, seeds: Sequence[int], out: Path,
                    audits: dict[str, list[dict]], bias: dict | None) -> str:
    """report.md of an experiment `cfg` (an `ExperimentConfig`): `audits` are the audit JSONs of each
    audit step by name, `bias` the world's colour bias when it sets one."""
    return render("experiment.md.j2", cfg=cfg, res=res, out=out, seeds=seeds_phrase(seeds), bias=bias,
                  audits={name: filter_audit(rows) for name, rows in audits.items()}, **TABLES)


def captioning_markdown(res: Results) -> str:
    """The captioning section's tables and what they show (what `mmw2s run` also prints)."""
    return render("captioning.md.j2", res=res, **TABLES)


TABLES = {f.__name__: f for f in (scores_table, pgr_markdown, halves_markdown, bias_table, round_pgr_table,
                                  rounds_markdown, captioning_scores_table, caption_pgr_table,
                                  zero_shot_pgr_table)}


def print_headline(res: Results) -> None:
    """The report's tables on stdout."""
    if res.benches:
        print("\n" + scores_table(res))
    if res.students:
        print("\nPGR (performance gap recovered; 0 = best weak teacher, 1 = gold ceiling)\n"
              + pgr_markdown(res))
    if res.halves:
        print("\nWhat each half of CapFilt adds (accuracy points)\n" + halves_markdown(res))
    if res.captioning:
        print("\n" + captioning_markdown(res))
    if res.rounds:
        print("\nRounds\n" + rounds_markdown(res.rounds))


def sweep_table(label: str, students: list[str], values: list[tuple[Any, Results, str | None]]) -> str:
    """Swept value x students' mean PGR, with a link to each value's report when `link` is given."""
    links = ["full report"] if values and values[0][2] else []
    return markdown_table([label, *students, *links],
                          [[x, *[fmt_spread(r.pgr.get(s, {}).get("mean", NO_VALUE), pct=False) for s in students],
                            *([f"[report]({link})"] if link else [])] for x, r, link in values])


def sweep_bias_table(label: str, xs: list[Any], series: dict[str, list[MeanStd]]) -> str:
    """Swept value x models: how often each calls the bias source colour by the target colour (%)."""
    return markdown_table([label, *series], [[x, *[fmt_spread(series[m][i]) for m in series]]
                                             for i, x in enumerate(xs)])


def sweep_markdown(cfg: Any, seeds: Sequence[int], out: Path, pgr_table: str, bias_table: str | None) -> str:
    """report.md of a sweep `cfg`: `pgr_table` from `sweep_table`, `bias_table` from `sweep_bias_table`
    (None: no bias)."""
    return render("sweep.md.j2", cfg=cfg, out=out, seeds=seeds_phrase(seeds), pgr_table=pgr_table,
                  bias_table=bias_table)
