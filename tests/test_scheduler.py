"""The experiment scheduler: the plan is the dependency graph; independent stages run side by side."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmw2s.config import load_config
from mmw2s.errors import StageError
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import plan_variants, run_order
from mmw2s.experiment.planner import Step, steps_to_run
from mmw2s.experiment.scheduler import dependencies, resolve_jobs, run_steps, threads_per_job
from mmw2s.commands import CONFIG_DIR


def test_the_demo_plan_says_which_stage_waits_for_which(tmp_path):
    cfg = load_config(ExperimentConfig, CONFIG_DIR / "demo.yaml", [f"out={tmp_path}"])
    steps = [part for s in run_order(plan_variants(cfg))[0] for part in steps_to_run(s)]
    names = [s.name for s in steps]
    deps = {names[j]: {names[i] for i in d} for j, d in enumerate(dependencies(steps))}
    assert deps["world"] == set()
    assert deps["weak_filter"] == {"world"}  # beside the captioner, not after it
    assert deps["weak_captioner"] == {"world", "captioner_pretrain"}
    assert deps["bootstrap"] >= {"weak_captioner", "weak_filter"}
    assert deps["student_web"] == deps["student_gold"] == {"world"}  # they need no teacher
    assert "bootstrap" in deps["student_bootstrapped"]
    # each model's evaluation waits for that model only; the eval's summary waits for them all
    assert deps["eval_weak_captioner"] == {"world", "weak_captioner"}
    assert deps["eval_student_web"] == {"world", "student_web"}
    assert {f"eval_{m}" for m in ["weak_captioner", "weak_filter"] + [f"student_{s}" for s in cfg.students]} <= deps["eval"]


def test_a_step_waits_for_the_steps_it_needs_not_for_what_its_config_mentions(tmp_path):
    world = world_step(tmp_path, "world", 8)
    named = world_step(tmp_path, "named", 8)
    named.cfg.out = str(world.out / "web")  # its config names world's folder, yet it needs nothing
    student = Step("student", "train", None, tmp_path / "student", needs=(world.out,))
    audit = Step("audit_world", "audit", None, world.out, needs=(world.out,))  # writes into world's folder
    late = Step("late", "train", None, tmp_path / "late", needs=(world.out, student.out))
    assert dependencies([world, named, student, audit, late]) == [set(), set(), {0}, {0}, {0, 2, 3}]


def test_jobs_and_threads_share_the_cores():
    assert resolve_jobs(0, cores=2) == 2 and resolve_jobs(0, cores=1) == 1 and resolve_jobs(3, cores=2) == 3
    assert threads_per_job(2, cores=2) == 1 and threads_per_job(2, cores=16) == 8 and threads_per_job(4, cores=2) == 1


def world_step(root: Path, name: str, samples: int) -> Step:
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig

    out = root / name
    return Step(name, "world", WorldConfig(out=str(out), workers=1, samples_per_shard=8, clean=SplitConfig(0),
                                           web=SplitConfig(samples), test=SplitConfig(0)), out)


@pytest.mark.slow
def test_two_jobs_run_every_stage_once_and_a_failure_names_its_stage(tmp_path):
    steps = [world_step(tmp_path, "a", 8), world_step(tmp_path, "b", 16)]
    seen = []
    run_steps(steps, jobs=2, done=lambda i, step, seconds, before: seen.append((step.name, before)))
    assert sorted(seen) == [("a", False), ("b", False)]
    assert (tmp_path / "a" / "web" / "00000.tar").exists() and (tmp_path / "b" / "web" / "00001.tar").exists()
    seen.clear()
    run_steps(steps, jobs=2, done=lambda i, step, seconds, before: seen.append((step.name, before)))
    assert sorted(seen) == [("a", True), ("b", True)]  # complete: found, not redone

    (tmp_path / "broken").write_text("a file where the stage wants its folder")
    broken = world_step(tmp_path, "broken", 8)  # fails in the worker
    with pytest.raises(StageError, match=r"stage broken .* failed"):
        run_steps([world_step(tmp_path, "c", 8), broken], jobs=2, done=lambda *a: None)
    assert (tmp_path / "c" / "web" / "00000.tar").exists()  # the stage beside it still finished
