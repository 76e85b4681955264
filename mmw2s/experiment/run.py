"""`mmw2s run`: the weak-to-strong experiment end to end, over one or more seeds, then the report."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from data_pipelines.shards import write_json_atomic
from mmw2s.config import save_config
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import Step, describe_step, plan

log = logging.getLogger(__name__)


def run(cfg: ExperimentConfig) -> Path:
    """Run every seed's stages (skipping complete ones), then write `OUT/report.md`."""
    steps_by_seed = plan(cfg)
    out = Path(cfg.out)
    save_config(cfg, out)
    write_json_atomic(out / "plan.json", {seed: [describe_step(s) for s in steps]
                                          for seed, steps in steps_by_seed.items()})
    timings: dict[int, dict[str, float]] = {}
    for seed, steps in steps_by_seed.items():
        timings[seed] = run_seed(seed, steps)
    write_json_atomic(out / "timings.json", timings)
    from mmw2s.experiment.summary import write_report

    report = write_report(cfg, steps_by_seed)
    print(f"\nReport: {report}")
    return report


def run_seed(seed: int, steps: list[Step]) -> dict[str, float]:
    """Run one seed's steps in order; returns seconds per step."""
    seconds = {}
    for i, step in enumerate(steps, 1):
        print(f"\n=== seed {seed} · {i}/{len(steps)} · {step.name} -> {step.out}", flush=True)
        start = time.perf_counter()
        RUNNERS[step.stage](step)
        seconds[step.name] = round(time.perf_counter() - start, 1)
    return seconds


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


RUNNERS = {"world": _world, "train": _train, "bootstrap": _bootstrap, "eval": _eval,
           "audit": _audit}
