"""A training run interrupted after a checkpoint and resumed with `resume=latest` ends with the
same weights, bit for bit, as a run never interrupted, for every task.

The captioner is the case that used to fail: its decoder's dropout draws from the global torch
generator, and building the resumed run's data loader drew one number from it after the
checkpoint's random state was restored (0 of 134 tensors equal after resuming). CLIP students
have no dropout, so they resumed exactly even then.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from mmw2s.config import load_config
from mmw2s.train.config import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_shards  # noqa: E402  (tiny world shards, shared with test_train)

STEPS, EVERY, STOP_AT = 8, 4, 6  # interrupted mid-way between the checkpoints of steps 4 and 8
TASKS = {
    "captioner-ved": ["task=captioner", "captioner.name=ved-mit-tiny", "captioner.image_size=32",
                      "captioner.max_length=20"],
    "captioner-blip": ["task=captioner", "captioner.name=blip-tiny", "captioner.image_size=32",
                       "captioner.max_length=20"],
    "clip": ["task=clip", "dual_encoder.arch=mmw2s-conv-tiny", "dual_encoder.image_size=32",
             "dual_encoder.context_length=20"],
    "llava-stage1": ["task=llava", "llava_stage=1", "train_lm=true", "llava.vision_source=timm",
                     "llava.vision_tower=mmw2s_convnet_tiny", "llava.lm=llama-tiny", "llava.max_length=48",
                     "llava.image_size=32"],
}


class Interrupted(Exception):
    """Stands for the kill: raised inside the loop, so nothing after it runs (no final/)."""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("shards"), shards=2, per_shard=32, split="clean")


def config(shards: str, out: Path, task: list[str], workers: int, *extra: str) -> TrainConfig:
    base = [f"data={shards}", f"out={out}", f"steps={STEPS}", "batch_size=8", "lr=0.002",
            "warmup_steps=2", "log_every=1", f"checkpoint_every={EVERY}", "keep_checkpoints=0",
            f"workers={workers}", "shuffle_buffer=16"]
    return load_config(TrainConfig, None, base + task + list(extra))


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint's weights as accelerate saved them (every trained tensor, any task)."""
    state = sorted((out / "checkpoints").glob("step_*"))[-1] / "state" / "model.safetensors"
    return safetensors.torch.load_file(state)


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the loop stop dead when it is about to run optimizer step `step`."""
    from mmw2s.train import loop

    real = loop._train_step

    def step_or_stop(r, batches):
        if r.progress.step + 1 == step:
            raise Interrupted(f"interrupted before step {step}")
        return real(r, batches)

    monkeypatch.setattr(loop, "_train_step", step_or_stop)


@pytest.mark.parametrize("workers", [1, 0], ids=["worker", "in-process"])
@pytest.mark.parametrize("task", list(TASKS), ids=list(TASKS))
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(shards, tmp_path, monkeypatch, task, workers):
    from mmw2s.train import loss_history, run

    run(config(shards, tmp_path / "straight", TASKS[task], workers))
    with monkeypatch.context() as patch:
        interrupt_at(patch, STOP_AT)
        with pytest.raises(Interrupted):
            run(config(shards, tmp_path / "resumed", TASKS[task], workers))
    assert not (tmp_path / "resumed" / "final").exists()
    assert [p.name for p in sorted((tmp_path / "resumed" / "checkpoints").glob("step_*"))] == ["step_000004"]
    run(config(shards, tmp_path / "resumed", TASKS[task], workers, "resume=latest"))

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differ, f"{len(differ)} of {len(straight)} tensors differ after resuming, e.g. {differ[:3]}"
    # the loss curve continues exactly, not merely close
    assert loss_history(tmp_path / "resumed") == loss_history(tmp_path / "straight")
    # and the trained weights moved since the checkpoint it resumed from (the test can fail)
    restored = safetensors.torch.load_file(
        tmp_path / "resumed" / "checkpoints" / "step_000004" / "state" / "model.safetensors")
    assert any(not torch.equal(restored[k], resumed[k]) for k in resumed)


@pytest.mark.slow
def test_captioner_killed_twice_with_sigkill_resumes_to_the_same_weights(shards, tmp_path):
    """What a user does: `mmw2s train task=captioner`, `kill -9` after a checkpoint, twice, and
    `resume=latest` each time (the real command line, a fresh interpreter per attempt)."""
    import os
    import signal
    import subprocess
    import time

    from test_train import cli, cli_env, overrides

    from mmw2s.train import run

    steps = ["steps=12", "checkpoint_every=4"]
    cfg = config(shards, tmp_path / "killed", TASKS["captioner-ved"], 1, *steps)
    for checkpoint in ("step_000004", "step_000008"):
        proc = subprocess.Popen(cli(*overrides(cfg)), env=cli_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 180
            while (not (tmp_path / "killed" / "checkpoints" / checkpoint).exists()
                   and proc.poll() is None and time.time() < deadline):
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        assert not (tmp_path / "killed" / "final").exists(), "the run ended before it was killed"
    done = subprocess.run(cli(*overrides(cfg)), env=cli_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    run(config(shards, tmp_path / "straight", TASKS["captioner-ved"], 1, *steps))
    straight, killed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert all(torch.equal(straight[k], killed[k]) for k in straight) and straight.keys() == killed.keys()
