"""`mmw2s eval`: every model on every benchmark; one CLIP_benchmark-style JSON per (model, benchmark).

Outputs under ``out``: ``MODEL__BENCHMARK.json`` (skipped on rerun when it exists: the artifact is
keyed by model and benchmark), then ``results.jsonl`` (all results of this config, one per line),
``summary.json`` (model -> benchmark -> metrics) and ``results.md`` (the table).
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from mmw2s.data_pipelines.benchmarks import check_benchmark, load_benchmark, load_world_test, world_suite
from mmw2s.data_pipelines.benchmark_types import Benchmark
from mmw2s.data_pipelines import StateFileError, read_state_json, write_json_atomic
from mmw2s.config import save_config
from mmw2s.errors import InputError
from mmw2s.report.tables import results_table
from mmw2s.evaluate.config import EvalConfig, ModelEntry, PairwiseConfig, VqaConfig
from mmw2s.evaluate.scorers import PairwiseScorer, Scorer
from mmw2s.evaluate.common import Skipped
from mmw2s.evaluate.tasks import TaskSettings, run_task
from mmw2s.evaluate.vqa import vqa_benchmark

log = logging.getLogger(__name__)

class BenchmarkCache:
    """Builds each benchmark once per run; world suites share one read of the test split."""

    def __init__(self, world: str | None = None, vqa: VqaConfig = VqaConfig()) -> None:
        self.world, self.vqa = world, vqa
        self._items: list[dict] | None = None
        self._built: dict[str, Benchmark] = {}

    def get(self, spec: str | Benchmark) -> Benchmark:
        """The benchmark of a spec string (or the benchmark itself)."""
        if isinstance(spec, Benchmark):
            return spec
        if spec not in self._built:
            if spec.startswith("world:") and self.world:
                if self._items is None:
                    self._items = load_world_test(self.world)
                if spec == "world:vqa":
                    self._built[spec] = vqa_benchmark(self.world, self._items, self.vqa.per_type, self.vqa.seed)
                else:
                    self._built[spec] = world_suite(self.world, spec.split(":", 1)[1], self._items)
            else:
                self._built[spec] = load_benchmark(spec, self.world)
        return self._built[spec]


def slug(benchmark: str) -> str:
    """A file-name-safe id of a benchmark spec: ``world:color`` -> ``world-color``."""
    kind, _, arg = benchmark.partition(":")
    if kind in ("wds", "imagefolder", "coco", "wds-captions"):
        arg = Path(arg.partition(".json:")[0].partition("?")[0].rstrip("/")).name.removesuffix(".json")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{kind}-{arg}" if arg else kind).strip("-")


def result_path(out: str | Path, model: str, benchmark: str) -> Path:
    """``out/MODEL__BENCHMARK.json``."""
    return Path(out) / f"{model}__{slug(benchmark)}.json"


def _clean(metrics: dict) -> dict:
    """NaN -> None, so the JSON is strict (CLIP_benchmark itself writes NaN)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def evaluate_one(scorer: Scorer, bench: Benchmark, spec: str, settings: TaskSettings, kind: str = "") -> dict:
    """One result record in CLIP_benchmark's shape, plus ``model_kind``, ``details``, ``seconds``,
    ``cpu_seconds`` and, for a pair that makes no sense, ``skipped`` (with empty metrics)."""
    start, cpu = time.perf_counter(), time.process_time()
    record = {"dataset": spec, "model": scorer.name, "pretrained": scorer.pretrained, "task": bench.task,
              "language": "en", "model_kind": kind or ("pairwise" if isinstance(scorer, PairwiseScorer) else "embedding")}
    try:
        metrics, details = run_task(scorer, bench, settings)
        record.update(metrics=_clean(metrics), details={**details, "notes": _notes(bench, details)})
    except Skipped as exn:
        record.update(metrics={}, skipped=str(exn), details={})
    # CPU time too: wall time on a shared machine says little about the cost of a model.
    record.update(seconds=round(time.perf_counter() - start, 2), cpu_seconds=round(time.process_time() - cpu, 2))
    return record


def _notes(bench: Benchmark, details: dict) -> str:
    return "; ".join(n for n in (bench.notes, details.get("notes", "")) if n)


def evaluate_model(model: Scorer | ModelEntry, benchmarks: Iterable[str | Benchmark], out_dir: str | Path,
                   settings: TaskSettings | None = None, world: str | None = None, device: str = "auto",
                   pairwise: PairwiseConfig = PairwiseConfig(), overwrite: bool = False,
                   cache: BenchmarkCache | None = None, vqa: VqaConfig = VqaConfig()) -> dict[str, dict]:
    """Evaluate one model (a scorer, or a config entry built lazily) on ``benchmarks``.

    Writes ``out_dir/MODEL__BENCHMARK.json`` per benchmark, reusing files that exist unless
    ``overwrite``; returns benchmark -> metrics (``{}`` for a skipped pair). The model is only
    loaded when some result is missing.
    """
    settings = settings or _settings(pairwise)
    cache = cache or BenchmarkCache(world, vqa)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = model.name
    results, scorer, curation = {}, model if isinstance(model, Scorer) else None, None
    for spec in benchmarks:
        key = spec if isinstance(spec, str) else spec.name
        path = result_path(out_dir, name, key)
        done = _finished_metrics(path) if path.exists() and not overwrite else None
        if done is not None:
            log.debug("%s exists: skipped", path)
            results[key] = done
            continue
        if scorer is None:
            from mmw2s.evaluate.adapters import build_scorer  # loads torch and the models

            scorer = build_scorer(model, device, pairwise, vqa)
        kind = model.kind if isinstance(model, ModelEntry) else ""
        bench = cache.get(spec)
        record = evaluate_one(scorer, bench, key, replace(settings, result_file=str(path)), kind)
        if isinstance(model, ModelEntry) and model.training_data:
            curation = curation or training_data_curation(model.training_data)  # read once per model
            record["training_data"] = decontamination(model.training_data, key, bench.name, curation)
        write_json_atomic(path, record)
        log.debug("%s on %s: %s (%.1fs)", name, key, record.get("skipped") or record["metrics"], record["seconds"])
        results[key] = record["metrics"]
    return results


def training_data_curation(bootstrap_run: str) -> tuple[dict, dict]:
    """The `curation` section of a bootstrap run's config, and the benchmarks its curation report
    checked (`{}` without an index)."""
    from mmw2s.config import yaml_load
    from mmw2s.curate.run import CONTAMINATION_FILE

    config = Path(bootstrap_run) / "config.yaml"
    try:
        curation = (yaml_load(config.read_text()) or {}).get("curation") or {}
    except (OSError, ValueError) as exn:
        raise InputError(f"models[].training_data={bootstrap_run}: cannot read {config} ({exn})") from None
    if not curation.get("index"):
        return curation, {}
    report = Path(curation["index"]).parent / CONTAMINATION_FILE
    try:
        return curation, read_state_json(report).get("benchmarks", {})
    except (OSError, StateFileError) as exn:
        raise InputError(f"models[].training_data={bootstrap_run}: its curation report {report}: {exn}") from None


def decontamination(bootstrap_run: str, spec: str, name: str, curation: tuple[dict, dict]) -> dict:
    """Whether the training data a bootstrap run made was decontaminated against this benchmark:
    its `curation.index` comes from a `mmw2s curate` run that checked the benchmark, and
    `curation.action=drop` removed the copies it found (`flag` keeps them, marked). ``curation``:
    what `training_data_curation` read of the run (once per model, for all its benchmarks)."""
    section, checked = curation
    found = next((b for n, b in checked.items() if n == name or b.get("spec") == spec), None)
    return {"bootstrap_run": str(bootstrap_run), "curation_index": section.get("index"),
            "action": section.get("action"), "checked": found is not None,
            "contaminated_found": found.get("contaminated") if found else None,
            "decontaminated": found is not None and section.get("action") == "drop"}


def _finished_metrics(path: Path) -> dict | None:
    """The metrics of an earlier result file, or None (with a warning) when it is corrupt: redo it."""
    try:
        metrics = read_state_json(path)["metrics"]
        if isinstance(metrics, dict):
            return metrics
        problem = "its metrics are not an object"
    except (StateFileError, KeyError) as exn:
        problem = str(exn)
    log.warning("%s cannot be used (%s); evaluating that pair again", path, problem)
    return None


def _settings(pairwise: PairwiseConfig, cfg: EvalConfig | None = None) -> TaskSettings:
    kwargs = dict(pairwise_max_templates=pairwise.max_templates, pairwise_retrieval_images=pairwise.retrieval_images)
    if cfg is not None:
        kwargs.update(batch_size=cfg.batch_size, recall_k=tuple(cfg.recall_k), limit=cfg.limit,
                      retrieval_images=cfg.retrieval_images, retrieval_positives=cfg.retrieval_positives,
                      captioning=cfg.captioning, device=cfg.device)
    return TaskSettings(**kwargs)


def run(cfg: EvalConfig) -> dict:
    """Evaluate every model of ``cfg`` on every benchmark; write the per-pair JSONs and the summary."""
    out = Path(cfg.out)
    cache = BenchmarkCache(cfg.world, cfg.vqa)  # built once: checked first, then evaluated
    check_benchmarks(cfg.benchmarks, cache)
    save_config(cfg, out)
    evaluate_models(cfg, cfg.models, cache)
    records = [json.loads(result_path(out, m.name, b).read_text()) for m in cfg.models for b in cfg.benchmarks]
    return write_summary(records, out)


def check_benchmarks(specs: Iterable[str], cache: BenchmarkCache) -> None:
    """Build and check every benchmark before any model is evaluated (a bad folder found after an
    hour of evaluation costs that hour); an `InputError` lists every problem, one per benchmark."""
    problems = []
    for spec in specs:
        try:
            check_benchmark(cache.get(spec))
        except (ValueError, FileNotFoundError) as exn:
            problems.append(f"{spec}: {exn}")
    if problems:
        raise InputError("cannot evaluate on " + "; ".join(problems))


def evaluate_models(cfg: EvalConfig, entries: Iterable[ModelEntry], cache: BenchmarkCache | None = None) -> None:
    """Write the per-pair JSONs of ``entries`` (models of ``cfg``) into ``cfg.out``, no summary.

    Each file is its own (model, benchmark) pair, written atomically: evaluations of different
    models may run at once into the same folder (`mmw2s run` starts each as soon as its model is
    trained), and `run` then finds them and writes the summary.
    """
    cache = cache or BenchmarkCache(cfg.world, cfg.vqa)
    settings = _settings(cfg.pairwise, cfg)
    for entry in entries:
        evaluate_model(entry, cfg.benchmarks, Path(cfg.out), settings, device=cfg.device, pairwise=cfg.pairwise,
                       overwrite=cfg.overwrite, cache=cache, vqa=cfg.vqa)


def write_summary(records: list[dict], out: Path) -> dict:
    """``results.jsonl``, ``summary.json`` and ``results.md`` of these records; returns the summary."""
    (out / "results.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    summary: dict = {}
    for r in records:
        summary.setdefault(r["model"], {})[r["dataset"]] = r["metrics"] or {"skipped": r.get("skipped", "")}
    write_json_atomic(out / "summary.json", summary)
    table = results_table(records)  # the run's report uses the same headline per benchmark and order
    (out / "results.md").write_text(table)
    print(table)
    return summary
