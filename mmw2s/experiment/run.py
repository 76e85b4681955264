"""`mmw2s run`: the weak-to-strong experiment end to end, over one or more seeds, then the report."""
from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

from data_pipelines.shards import write_json_atomic
from mmw2s.config import save_config
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.progress import StageProgress
from mmw2s.experiment.plan import Step, describe_step, plan_variants, run_order

log = logging.getLogger(__name__)


def run(cfg: ExperimentConfig) -> Path:
    """Run every seed's stages (skipping complete ones), then write `OUT/report.md`."""
    variants = plan_variants(cfg)
    steps_by_seed = run_order(variants)
    out = Path(cfg.out)
    save_config(cfg, out)
    write_json_atomic(out / "plan.json", {seed: [describe_step(s) for s in steps]
                                          for seed, steps in steps_by_seed.items()})
    timings: dict[int, dict[str, dict[str, float]]] = {}
    progress, offset = StageProgress([stage_kind(s) for steps in steps_by_seed.values() for s in steps]), 0
    for seed, steps in steps_by_seed.items():
        timings[seed] = run_seed(seed, steps, progress, offset)
        offset += len(steps)
    write_json_atomic(out / "timings.json", timings)
    from mmw2s.experiment.summary import write_report, write_sweep_report

    if cfg.sweep.key:
        report = write_sweep_report(cfg, variants)
    else:
        report = write_report(cfg, variants[0].steps_by_seed)
    print(f"\nReport: {report}")
    from mmw2s.report_html import write_experiment_html

    print(f"Report (HTML, with a browser of each bootstrap stage): {write_experiment_html(report, variants)}")
    return report


def stage_kind(step: Step) -> str:
    """What a stage costs like: every student alike, else the stage itself (for the estimate)."""
    return "student" if step.name.startswith("student_") else step.name


def run_seed(seed: int, steps: list[Step], progress: StageProgress | None = None,
             offset: int = 0) -> dict[str, dict[str, float]]:
    """Run one seed's steps in order; returns wall and CPU seconds per step.

    The seconds of a stage are those of the invocation that completed it: each stage's are kept
    next to its output, so a resumed run reports what the finished stages cost, not the second
    it took to find them complete.
    """
    seconds: dict[str, dict[str, float]] = {}
    for i, step in enumerate(steps, 1):
        print(f"\n=== seed {seed} · {i}/{len(steps)} · {step.name} -> {step.out}", flush=True)
        record = step.out / f"timing.{step.stage}.json"
        done_before = json.loads(record.read_text()) if record.exists() else None
        start, cpu = time.perf_counter(), _cpu_seconds()
        RUNNERS[step.stage](step)  # a complete stage only checks its outputs
        spent = {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(_cpu_seconds() - cpu, 1)}
        if done_before is None:
            write_json_atomic(record, spent)
        if progress is not None:
            print(progress.done(offset + i - 1, f"seed {seed} {step.name}", spent["wall_s"],
                                skipped=done_before is not None), flush=True)
        key = step.name if step.name not in seconds else f"{step.name} ({step.out.name})"  # sweeps
        seconds[key] = done_before or spent
    return seconds


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (data-loader and world workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _world(step: Step) -> Any:
    from mmw2s.world import run as world_run

    return world_run(step.cfg)


def _train(step: Step) -> Any:
    from mmw2s.train.loop import run as train_run

    return train_run(step.cfg)


def _bootstrap(step: Step) -> Any:
    from mmw2s.bootstrap.run import run as bootstrap_run

    return bootstrap_run(step.cfg)


def _eval(step: Step) -> Any:
    from mmw2s.evaluate.run import run as eval_run

    return eval_run(step.cfg)


def _audit(step: Step) -> dict:
    from mmw2s.audit import run as audit_run

    path = Path(step.cfg.run) / "audit.json"
    if path.exists():  # the audit of a finished bootstrap run never changes
        return json.loads(path.read_text())
    return audit_run(step.cfg)


def _synthesize(step: Step) -> Any:
    from mmw2s.synthesize.run import run as synthesize_run

    return synthesize_run(step.cfg)


RUNNERS = {"world": _world, "train": _train, "bootstrap": _bootstrap, "eval": _eval,
           "audit": _audit, "synthesize": _synthesize}
