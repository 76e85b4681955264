"""Checkpoints of a training run: written atomically, never from non-finite weights.

Layout of a run folder `OUT/`:
```
OUT/checkpoints/step_000100/
    model/               the model as its own library loads it (see `mmw2s.train.models`)
    state/               accelerate `save_state`: weights, optimizer, scheduler, RNG of every rank
    trainer_state.json   step, batches consumed per rank, samples seen, loss tail, data counts
OUT/final/               the model for the next stage, plus trainer_state.json
```
Every folder is written under a temporary name and renamed into place when complete, so a kill
leaves either the whole checkpoint or none; `latest_checkpoint` only sees complete ones. A
checkpoint also lists its files with their sizes (`files.json`), and `resume=latest` checks the
newest against that list (and that its safetensors and trainer state read) before trusting it:
a checkpoint damaged after it was written (a truncated copy, a lost file) is skipped, with a
warning, for the newest intact one.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors import safe_open

from mmw2s.data_pipelines import StateFileError, read_state_json
from mmw2s.errors import StageError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
FINAL = "final"
MODEL = "model"
STATE = "state"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "files.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class NonFiniteWeights(RuntimeError):
    """A model holds NaN or inf parameters; nothing is saved from it."""


def assert_finite(model: torch.nn.Module) -> None:
    """Raise `NonFiniteWeights` naming the first parameter that is not finite (or buffer: NaN).

    Buffers may hold -inf by design (causal attention masks), so only NaN counts there.
    """
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise NonFiniteWeights(f"parameter {name} holds non-finite values; refusing to save")
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and torch.isnan(buffer).any():
            raise NonFiniteWeights(f"buffer {name} holds NaN; refusing to save")


@dataclass(frozen=True)
class RngSnapshot:
    """The process's global random state: Python, NumPy, torch CPU and (when in use) CUDA.

    The training loop takes one when its state is final (seeded, or restored by `load_state`)
    and puts it back just before the first step: whatever runs in between (building the data
    loader, which draws its workers' base seed from torch's global generator; starting workers;
    logging) then cannot move the random stream that dropout and the steps draw from, so a
    resumed run draws exactly what an uninterrupted one draws after the same checkpoint.
    """

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    cuda: Optional[list[torch.Tensor]]

    @classmethod
    def take(cls) -> "RngSnapshot":
        """The current global random state of this process."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        """Make this the process's global random state again."""
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def step_dir(out: str | os.PathLike, step: int) -> Path:
    """`OUT/checkpoints/step_000100`."""
    return Path(out) / CHECKPOINTS / f"step_{step:06d}"


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: str | os.PathLike) -> Optional[Path]:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(out)
    return found[-1] if found else None


def resolve_resume(out: str | os.PathLike, resume: Optional[str]) -> Optional[Path]:
    """The checkpoint to resume from: `latest` (the newest intact one; None when there is none
    yet) or a path (which must be intact)."""
    if resume is None:
        return None
    if resume == "latest":
        return newest_intact(out)
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise StageError(f"resume={resume}: not a complete checkpoint (no {TRAINER_STATE})")
    problem = checkpoint_problem(path)
    if problem:
        raise StageError(f"resume={resume}: the checkpoint is broken: {problem}")
    return path


def newest_intact(out: str | os.PathLike) -> Optional[Path]:
    """The newest checkpoint that passes `checkpoint_problem`; broken newer ones are skipped with
    a warning. Raises `StageError` when there are checkpoints but none is intact."""
    found = list_checkpoints(out)
    for folder in reversed(found):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log.warning("checkpoint %s is broken (%s); resuming from an older one", folder, problem)
    if found:
        raise StageError(f"no intact checkpoint in {Path(out) / CHECKPOINTS} (the newest: "
                         f"{checkpoint_problem(found[-1])}); delete that folder to start anew")
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why checkpoint `folder` cannot be resumed from, or None: its trainer state must parse, every
    file its manifest lists must exist with its size, and every safetensors file must open."""
    try:
        read_trainer_state(folder)
        manifest = read_state_json(folder / MANIFEST) if (folder / MANIFEST).exists() else {}
    except (StateFileError, OSError) as exn:
        return str(exn)
    for name, size in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when written"
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass  # the header and the data size it declares are checked on open
        except Exception as exn:  # noqa: BLE001 - safetensors raises its own error types
            return f"{path.relative_to(folder)} does not open: {exn}"
    return None


def read_trainer_state(folder: str | os.PathLike) -> dict:
    """The `trainer_state.json` of a checkpoint or final folder (`StateFileError` naming it if corrupt)."""
    return read_state_json(Path(folder) / TRAINER_STATE)


def _write_manifest(folder: Path) -> None:
    """`folder/files.json`: every file under `folder` with its size, for `checkpoint_problem`."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    _write_json(folder / MANIFEST, files)


def write_folder_atomic(target: Path, fill: Callable[[Path], None]) -> Path:
    """Create `target` by filling a temporary sibling folder and renaming it into place."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left behind by a killed run
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def save_checkpoint(accelerator: Any, out: str | os.PathLike, step: int, model: torch.nn.Module,
                    export: Callable[[Path], None], trainer_state: dict, keep: int) -> Path:
    """Save a checkpoint from every rank (a collective call); returns its folder.

    `export(folder)` writes the model in its library's format (main process only). Raises
    `NonFiniteWeights` on every rank, before anything is written, when a weight is not finite.
    """
    assert_finite(model)
    target = step_dir(out, step)
    tmp = target.with_name(f".{target.name}.tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / STATE))  # every rank writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export(tmp / MODEL)
        _write_json(tmp / TRAINER_STATE, trainer_state)
        _write_manifest(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        prune_checkpoints(out, keep)
        log.info("checkpoint written: %s", target)
    accelerator.wait_for_everyone()
    return target


def save_final(out: str | os.PathLike, model: torch.nn.Module, export: Callable[[Path], None],
               trainer_state: dict) -> Path:
    """Write `OUT/final/` (main process only): the exported model and its trainer state."""
    assert_finite(model)

    def fill(folder: Path) -> None:
        export(folder)
        _write_json(folder / TRAINER_STATE, trainer_state)

    return write_folder_atomic(Path(out) / FINAL, fill)


def prune_checkpoints(out: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (`keep <= 0` keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
