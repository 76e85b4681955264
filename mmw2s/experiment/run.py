"""`mmw2s run`: the weak-to-strong experiment end to end, over one or more seeds, then the report.

The plan (`plan.py`) lists each seed's steps and the steps each needs; the scheduler
(`scheduler.py`) runs them, ``jobs`` at a time where none needs another's output, every seed's in
one pool.
"""
from __future__ import annotations

import logging
from pathlib import Path

from mmw2s.data_pipelines import write_json_atomic
from mmw2s.config import save_config
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import describe_step, plan_variants, run_order
from mmw2s.experiment.planner import Step, steps_to_run
from mmw2s.experiment.progress import StageProgress
from mmw2s.experiment.scheduler import resolve_jobs, run_steps
from mmw2s.experiment.worker import timing_path

log = logging.getLogger(__name__)


def run(cfg: ExperimentConfig) -> Path:
    """Run every seed's stages (skipping complete ones), then write `OUT/report.md`."""
    variants = plan_variants(cfg)
    steps_by_seed = run_order(variants)
    out = Path(cfg.out)
    save_config(cfg, out)
    write_json_atomic(out / "plan.json", {seed: [describe_step(s) for s in steps]
                                          for seed, steps in steps_by_seed.items()})
    timings = run_all(steps_by_seed, cfg.jobs)
    write_json_atomic(out / "timings.json", timings)
    from mmw2s.experiment.summary import write_report, write_sweep_report

    if cfg.sweep.key:
        report = write_sweep_report(cfg, variants)
    else:
        report = write_report(cfg, variants[0].steps_by_seed)
    print(f"\nReport: {report}")
    from mmw2s.report.html import write_experiment_html

    print(f"Report (HTML, with a browser of each bootstrap stage): {write_experiment_html(report, variants)}")
    return report


def stage_kind(step: Step) -> str:
    """What a stage costs like: every student alike (and their evals), else the stage itself."""
    for kind in ("student_", "eval_student_"):
        if step.name.startswith(kind):
            return kind
    return step.name


def run_all(steps_by_seed: dict[int, list[Step]], jobs: int) -> dict[int, dict[str, dict[str, float]]]:
    """Run every seed's steps; returns wall and CPU seconds per seed and step."""
    flat: list[tuple[int, Step]] = []
    for seed, steps in steps_by_seed.items():
        seen = {str(s.out) for _, s in flat}
        flat += [(seed, part) for s in steps if str(s.out) not in seen  # a stage two seeds share runs once
                 for part in steps_to_run(s)]
    complete = [i for i, (_, s) in enumerate(flat) if timing_path(s).exists()]  # found done: ~0 s each
    progress = StageProgress([stage_kind(s) for _, s in flat], resolve_jobs(jobs), complete)
    timings: dict[int, dict[str, dict[str, float]]] = {seed: {} for seed in steps_by_seed}

    def done(i: int, step: Step, seconds: dict, before: bool) -> None:
        seed = flat[i][0]
        print(progress.done(i, f"seed {seed} {step.name}", seconds["wall_s"], skipped=before), flush=True)
        key = step.name if step.name not in timings[seed] else f"{step.name} ({step.out.name})"  # sweeps
        timings[seed][key] = seconds

    run_steps([s for _, s in flat], jobs, done)
    return timings
