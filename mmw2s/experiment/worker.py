"""One planned step of an experiment, run in a worker: its stage's runner, its seconds, its timing
record.

Kept apart from the scheduler so that a worker process imports only this (and the stage it runs).
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from mmw2s.data_pipelines import write_json_atomic
from mmw2s.console import stage_label
from mmw2s.experiment.planner import EVAL_MODEL, Step


def timing_path(step: Step) -> Path:
    """Where a step's seconds are kept: next to its output."""
    if step.stage == EVAL_MODEL:  # several share the eval's folder
        return step.out / f"timing.eval.{step.cfg.models[0].name}.json"
    return step.out / f"timing.{step.stage}.json"


def run_step(step: Step) -> tuple[dict[str, float], bool]:
    """Run ``step`` (a complete stage only checks its outputs); returns its seconds and whether it
    was complete before.

    The seconds of a stage are those of the invocation that completed it: they are kept next to its
    output, so a resumed run reports what the finished stages cost, not the second it took to find
    them complete.
    """
    record = timing_path(step)
    done_before = json.loads(record.read_text()) if record.exists() else None
    start, cpu = time.perf_counter(), cpu_seconds()
    with stage_label(step.name):
        RUNNERS[step.stage](step)
    spent = {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu_seconds() - cpu, 1)}
    if done_before is None:
        write_json_atomic(record, spent)
    return done_before or spent, done_before is not None


def cpu_seconds() -> float:
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


def _eval_model(step: Step) -> Any:
    from mmw2s.evaluate.run import evaluate_models

    return evaluate_models(step.cfg, step.cfg.models)


def _audit(step: Step) -> dict:
    from mmw2s.audit import run as audit_run

    path = Path(step.cfg.run) / "audit.json"
    if path.exists():  # the audit of a finished bootstrap run never changes
        return json.loads(path.read_text())
    return audit_run(step.cfg)


def _synthesize(step: Step) -> Any:
    from mmw2s.synthesize.run import run as synthesize_run

    return synthesize_run(step.cfg)


RUNNERS = {"world": _world, "train": _train, "bootstrap": _bootstrap, "eval": _eval, EVAL_MODEL: _eval_model,
           "audit": _audit, "synthesize": _synthesize}
