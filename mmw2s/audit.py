"""`mmw2s audit`: score a bootstrap run against the synthetic world's ground truth.

BLIP could only estimate by hand how many noisy web captions its filter removed and how good the
synthetic captions were. In the synthetic world every web caption has a recorded noise type and
every image a gold caption and scene, so this stage measures it: filter precision and recall of
the web-caption decision (a caption is *positive* when its noise type is `correct`), the kept
fraction per noise type, the accuracy of the synthetic and of the chosen training captions (exact
match to the gold caption, and colours / shapes / sizes mentioned vs the scene).

The bootstrap stage never reads the truth; this one reads it from the input shards (by default the
`input` recorded in the run's `config.yaml`), joined to the output by key. Samples missing from the
output were dropped (nothing kept) or skipped; they count as web captions not kept, and their scores
and synthetic captions are unknown: bootstrap with `selection.nothing_kept=flag` for a full audit.

    mmw2s audit run=runs/demo/bootstrap            # writes audit.json, audit.md, audit_web_scores.png
"""
from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger(__name__)

POSITIVE = "correct"


@dataclass
class AuditConfig:
    """Which bootstrap run to audit against which ground truth."""

    run: str = field(metadata={"help": "output folder of an `mmw2s bootstrap` run"})
    truth: Optional[str] = field(
        default=None, metadata={"help": "shards holding the truth blocks (e.g. WORLD/web); "
                                        "default: the input recorded in RUN/config.yaml"})
    out: Optional[str] = field(default=None, metadata={"help": "where the report goes; default: RUN"})
    bins: int = field(default=30, metadata={"help": "bins of the web-score histogram"})

    def validate(self) -> None:
        """Raise ValueError for a non-positive bin count."""
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")


# --------------------------------------------------------------------------------------------
# Reading


def read_truth(spec: str | list[str]) -> dict[str, dict]:
    """key -> truth block of every sample of the input shards (a spec or URL list) that has one."""
    from mmw2s.data_pipelines import ReadLimits, iter_samples

    truth = {}
    for sample in iter_samples(spec, ReadLimits(decode_images=False, require_caption=False)):
        block = sample["json"].get("truth")
        if isinstance(block, dict):
            truth[sample["__key__"]] = block
    return truth


def read_decisions(run: str | Path) -> dict[str, dict]:
    """key -> `mmw2s` block of every written sample of a bootstrap run."""
    from mmw2s.data_pipelines import ReadLimits, iter_samples

    folder = Path(run) / "shards"
    urls = sorted(str(p) for p in folder.glob("*.tar"))
    if not urls:
        raise FileNotFoundError(f"no output shards in {folder}: is {run} a bootstrap run folder?")
    limits = ReadLimits(decode_images=False, require_caption=False)
    return {s["__key__"]: s["json"]["mmw2s"] for s in iter_samples(urls, limits) if "mmw2s" in s["json"]}


def recorded_input(run: str | Path) -> str:
    """The `input` shard spec recorded in a bootstrap run's `config.yaml`."""
    import yaml

    path = Path(run) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; pass truth=SHARDS explicitly")
    return yaml.safe_load(path.read_text())["input"]


# --------------------------------------------------------------------------------------------
# Metrics


def words(text: str) -> list[str]:
    """Lower-case words of a caption."""
    return re.findall(r"[a-z]+", text.lower())


def attribute_counts(caption: str, scene: dict) -> dict[str, tuple[int, int, int]]:
    """Per attribute (color, shape, size): (matched, mentioned, true) counts of distinct values.

    Distinct values, not word counts: a caption names an object again ("... the small yellow
    circle") without being wrong twice.
    """
    from mmw2s.data_pipelines.world import COLORS, SHAPES, SIZES

    said = set(words(caption))
    out = {}
    for name, vocab in (("color", COLORS), ("shape", SHAPES), ("size", SIZES)):
        mentioned = said & set(vocab)
        true = {o[name] for o in scene.get("objects", [])}
        out[name] = (len(mentioned & true), len(mentioned), len(true))
    return out


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def binary_metrics(pairs: Iterable[tuple[bool, bool]]) -> dict:
    """Precision, recall, F1, accuracy of (actual, predicted) pairs; positive = True."""
    c = Counter(pairs)
    tp, fp, fn, tn = c[(True, True)], c[(False, True)], c[(True, False)], c[(False, False)]
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = round(2 * p * r / (p + r), 4) if p and r else None
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": p, "recall": r, "f1": f1,
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn)}


def web_filter_metrics(rows: list[dict]) -> dict:
    """Overall and per-noise-type metrics of the web-caption keep decision.

    Per noise type: its kept fraction, and precision/recall of telling `correct` captions from
    that type alone (computed on the correct captions plus that type).
    """
    overall = binary_metrics((r["noise_type"] == POSITIVE, r["web_kept"]) for r in rows)
    by_type: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_type[r["noise_type"]].append(r)
    correct = by_type.get(POSITIVE, [])
    per_type = {}
    for noise, items in sorted(by_type.items()):
        scores = [r["web_score"] for r in items if r["web_score"] is not None]
        entry = {"samples": len(items), "kept_fraction": _ratio(sum(r["web_kept"] for r in items), len(items)),
                 "mean_score": round(sum(scores) / len(scores), 4) if scores else None}
        if noise != POSITIVE:
            vs = binary_metrics((r["noise_type"] == POSITIVE, r["web_kept"]) for r in correct + items)
            entry.update(precision_vs_correct=vs["precision"], recall=vs["recall"])
        per_type[noise] = entry
    return {"overall": overall, "per_noise_type": per_type}


def caption_attribute_accuracy(pairs: list[tuple[str, dict]]) -> dict:
    """Accuracy of (caption, truth) pairs over all of them: the fraction equal to the gold caption
    word for word (case, punctuation and spacing ignored), the precision / recall of the colours,
    shapes and sizes they name against the scene, and the captions suite's hallucination rate.

    Not the captions suite's `mmw2s.evaluate.metrics.mean_caption_scores`: the audit pools attribute
    counts over captions and compares words, where the suite averages per caption and compares text.
    """
    exact = sum(_norm(c) == _norm(t["gold_caption"]) for c, t in pairs)
    totals = {k: [0, 0, 0] for k in ("color", "shape", "size")}
    for caption, truth in pairs:
        for name, counts in attribute_counts(caption, truth.get("scene", {})).items():
            totals[name] = [a + b for a, b in zip(totals[name], counts)]
    attrs = {name: {"precision": _ratio(m, said), "recall": _ratio(m, true)}
             for name, (m, said, true) in totals.items()}
    from mmw2s.evaluate.metrics import caption_scores  # the captions suite's definition

    rates = [caption_scores(c, t["scene"], t["gold_caption"])["hallucination_rate"]
             for c, t in pairs if t.get("scene")]
    return {"captions": len(pairs), "exact_match": _ratio(exact, len(pairs)), "attributes": attrs,
            "hallucination_rate": round(sum(rates) / len(rates), 4) if rates else None}


def _norm(text: str) -> str:
    return " ".join(words(text))


def synthetic_metrics(rows: list[dict]) -> dict:
    """Accuracy of all synthetic captions, of the kept and the rejected ones, and the synthetic
    filter's precision / recall with exact match to the gold caption as positive."""
    every = [(s, r["truth"]) for r in rows for s in r["synthetic"]]
    out = {"all": caption_attribute_accuracy([(s["caption"], t) for s, t in every])}
    out["kept"] = caption_attribute_accuracy([(s["caption"], t) for s, t in every if s["kept"]])
    out["rejected"] = caption_attribute_accuracy([(s["caption"], t) for s, t in every if not s["kept"]])
    out["filter"] = binary_metrics((_norm(s["caption"]) == _norm(t["gold_caption"]), s["kept"])
                                   for s, t in every)
    return out


def chosen_metrics(rows: list[dict]) -> dict:
    """How often the training caption is right, against the web caption it replaces."""
    chosen = [r for r in rows if r["chosen"] is not None]
    right = [(r["chosen_source"], _norm(r["chosen"]) == _norm(r["truth"]["gold_caption"])
              or (r["chosen_source"] == "web" and r["noise_type"] == POSITIVE)) for r in chosen]
    by_source = {src: _ratio(sum(ok for s, ok in right if s == src), sum(s == src for s, _ in right))
                 for src in ("web", "synthetic")}
    return {"samples": len(rows), "with_caption": len(chosen),
            "chosen_correct": _ratio(sum(ok for _, ok in right), len(right)),
            "chosen_correct_by_source": by_source,
            "web_correct": _ratio(sum(r["noise_type"] == POSITIVE for r in rows), len(rows))}


# --------------------------------------------------------------------------------------------
# The stage


def join(truth: dict[str, dict], decisions: dict[str, dict]) -> list[dict]:
    """One row per sample with a truth: its decision, or "not written" when it is missing."""
    rows = []
    for key, t in sorted(truth.items()):
        block = decisions.get(key)
        row = {"key": key, "truth": t, "noise_type": t.get("noise_type", "unknown"), "written": block is not None,
               "web_kept": False, "web_score": None, "synthetic": [], "chosen": None, "chosen_source": None}
        if block is not None:
            row.update({k: block[k] for k in ("web_kept", "web_score", "synthetic", "chosen", "chosen_source")})
        rows.append(row)
    return rows


def audit(run: str | Path, truth_spec: str | None = None) -> tuple[dict, list[dict]]:
    """All audit numbers of a bootstrap run, and the joined rows they were computed from."""
    from mmw2s.data_pipelines import expand_urls, shard_name

    decisions = read_decisions(run)
    done = {p.stem for p in (Path(run) / "shards").glob("*.tar")}
    # Only the input shards that this run bootstrapped (truth may name a larger set, e.g. WORLD/web).
    urls = [u for u in expand_urls(truth_spec or recorded_input(run)) if shard_name(u) in done]
    truth = read_truth(urls) if urls else {}
    if not truth:
        raise ValueError("no samples with a `truth` block in the input shards: the audit needs "
                         "shards of the synthetic world (mmw2s world)")
    rows = join(truth, decisions)
    result = {
        "run": str(run), "truth": truth_spec or recorded_input(run),
        "samples": len(rows), "written": sum(r["written"] for r in rows),
        "not_written": sum(not r["written"] for r in rows),
        "without_truth": len(set(decisions) - set(truth)),
        "web_filter": web_filter_metrics(rows),
        "synthetic": synthetic_metrics(rows),
        "chosen": chosen_metrics(rows),
    }
    return result, rows


def markdown(result: dict) -> str:
    """The audit as Markdown tables (`mmw2s/report/templates/audit.md.j2`)."""
    from mmw2s.report.markdown import render
    from mmw2s.report.tables import or_na

    noise_rows = [[noise, e["samples"], or_na(e["kept_fraction"]), or_na(e["mean_score"]),
                   or_na(e.get("precision_vs_correct", "-"))]
                  for noise, e in result["web_filter"]["per_noise_type"].items()]
    synthetic_rows = []
    for name in ("all", "kept", "rejected"):
        e = result["synthetic"][name]
        synthetic_rows.append([name, e["captions"], or_na(e["exact_match"]),
                               *[f"{or_na(e['attributes'][a]['precision'])} / {or_na(e['attributes'][a]['recall'])}"
                                 for a in ("color", "shape", "size")]])
    return render("audit.md.j2", result=result, noise_rows=noise_rows, synthetic_rows=synthetic_rows)


def plot_scores(rows: list[dict], path: str | Path, bins: int) -> Path:
    """A PNG histogram of web-caption filter scores, one curve per noise type."""
    from mmw2s.report.plots import pyplot

    plt = pyplot()
    by_type: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["web_score"] is not None:
            by_type[r["noise_type"]].append(r["web_score"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for noise, scores in sorted(by_type.items()):
        ax.hist(scores, bins=bins, histtype="step", linewidth=1.5, label=f"{noise} ({len(scores)})")
    ax.set_xlabel("filter score of the web caption")
    ax.set_ylabel("samples")
    # Dropped samples (nothing kept, selection.nothing_kept=drop) are not in the output: no score.
    ax.set_title("Web-caption filter scores per noise type (written samples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def run(cfg: AuditConfig) -> dict:
    """Audit `cfg.run`; writes `audit.json`, `audit.md` and `audit_web_scores.png`; returns the numbers."""
    from mmw2s.data_pipelines import write_json_atomic

    result, rows = audit(cfg.run, cfg.truth)
    out = Path(cfg.out or cfg.run)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "audit.json", result)
    (out / "audit.md").write_text(markdown(result))
    plot_scores(rows, out / "audit_web_scores.png", cfg.bins)
    o = result["web_filter"]["overall"]
    log.info("audit of %s: web filter precision %s recall %s; synthetic exact match %s -> %s",
             cfg.run, o["precision"], o["recall"], result["synthetic"]["all"]["exact_match"], out / "audit.md")
    return result
