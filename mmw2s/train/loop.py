"""`mmw2s train`: the accelerate training loop shared by captioners and CLIP students.

One command trains the weak captioner or filter on the clean split and the students on noisy,
bootstrapped or gold captions; what differs is the task adapter (`mmw2s.train.tasks`), the text
source and the loss. The loop counts optimizer steps, so every rank runs exactly `steps` of them.

Robustness: a non-finite loss or gradient skips the optimizer step on every rank (the decision is
reduced across ranks), is counted, and `max_nonfinite_in_a_row` of them stop the run with
`TrainingDiverged`. Checkpoints are written atomically and never from non-finite weights;
`resume=latest` restores weights, optimizer, scheduler, RNG and the data position, and a
resumed run ends with the same weights, bit for bit, as one never interrupted: the global random
state the steps draw from (dropout) is put back just before the first step, whatever setting up
the data loader drew from it (`checkpoint.RngSnapshot`), and the loader's workers are seeded from
the run's seed and rank, not from that state.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mmw2s.errors import StageError
from mmw2s.config import save_config
from mmw2s.train import checkpoint as ckpt
from mmw2s.train.config import TrainConfig
from mmw2s.train.data import LISTED_SKIPS, DataStats, hash_seed, loader_settings, make_loader
from mmw2s.train.metrics import MetricsLogger, plot_loss
from mmw2s.train.tasks import TrainTask, build_task, model_path
from mmw2s.train.texts import TextSelector

log = logging.getLogger(__name__)
LOSS_TAIL = 200  # (step, loss) pairs kept in trainer_state.json


class TrainingDiverged(StageError):
    """The loss (or gradient) was non-finite for `max_nonfinite_in_a_row` steps in a row."""


@dataclass
class Progress:
    """Everything about a run's position that a checkpoint must restore."""

    step: int = 0
    batches_consumed: int = 0  # micro-batches this rank took from its loader
    samples_seen: int = 0  # over all ranks
    nonfinite_skipped: int = 0
    nonfinite_in_a_row: int = 0
    loss_tail: deque = field(default_factory=lambda: deque(maxlen=LOSS_TAIL))
    data: DataStats = field(default_factory=DataStats)


@dataclass
class Run:
    """The objects of one training run, passed between the loop's small functions."""

    cfg: TrainConfig
    accelerator: Accelerator
    task: TrainTask
    model: torch.nn.Module  # prepared (DDP-wrapped when several processes)
    optimizer: Any
    scheduler: Any
    progress: Progress
    rng: ckpt.RngSnapshot  # the random state the first step must start from
    metrics: Optional[MetricsLogger] = None


def run(cfg: TrainConfig) -> Path:
    """Train as `cfg` says and return the path of the final model (what the next stage loads)."""
    out = Path(cfg.out)
    if (out / ckpt.FINAL / ckpt.TRAINER_STATE).is_file():
        log.info("%s is complete (final/ exists): nothing to do", out)
        return model_path(cfg.task, out / ckpt.FINAL)
    resume = ckpt.resolve_resume(out, cfg.resume)
    if resume is None and ckpt.latest_checkpoint(out) is not None:
        raise StageError(f"{out} holds checkpoints of an earlier run: pass resume=latest to "
                              "continue it, or choose another out= folder")
    accelerator = _accelerator(cfg.mixed_precision)
    set_seed(cfg.seed)  # the same data-independent RNG state on every rank
    if accelerator.is_main_process:
        _announce(cfg, out, resume)
    r = _setup(cfg, accelerator, resume)
    try:
        _train(r)
    finally:
        if r.metrics is not None:
            r.metrics.close()
    return _finish(r)


def _accelerator(mixed_precision: str) -> Accelerator:
    """An `Accelerator` that sees every launched process, also on machines without a GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # Launched as several processes (torchrun, `accelerate launch --multi_gpu`) on a machine
    # without GPUs, accelerate forms a CPU (gloo) process group only when told `cpu=True`;
    # otherwise every process would silently train alone, all writing the same run folder.
    cpu = world > 1 and not torch.cuda.is_available()
    try:
        acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError:
        # accelerate keeps its state in a process-wide singleton and refuses a second precision.
        # In a single process (e.g. the experiment runner training models one after another)
        # nothing else holds that state, so it is reset; under a multi-process launch it is not.
        if world > 1:
            raise
        AcceleratorState._reset_state()
        acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    if acc.num_processes != world:
        raise RuntimeError(f"launched as {world} processes but accelerate formed a group of "
                           f"{acc.num_processes}; check the launcher's device settings")
    return acc


def _announce(cfg: TrainConfig, out: Path, resume: Optional[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    if cfg.reads_truth:
        log.warning("text.source=gold: this run READS THE EVALUATION-ONLY TRUTH BLOCK "
                    "(gold-ceiling setting); config.yaml and metrics.jsonl record reads_truth: true")
    log.info("training %s for %d steps -> %s%s", cfg.task, cfg.steps, out,
             f" (resuming from {resume})" if resume else "")


def _setup(cfg: TrainConfig, accelerator: Accelerator, resume: Optional[Path]) -> Run:
    """Build task, optimizer and scheduler, prepare them, and restore a checkpoint if any."""
    selector = TextSelector(cfg.text)
    task = build_task(cfg, selector, resume / ckpt.MODEL if resume else None)
    # fused: one kernel over all parameters instead of a loop of small ops (~6x faster on CPU for
    # our from-scratch models, whose 49k-token text embedding dominates the parameter count)
    optimizer = torch.optim.AdamW(_param_groups(task.module, cfg.weight_decay), lr=cfg.lr, fused=True)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    # The scheduler is stepped by hand once per optimizer step (accelerate would step a prepared
    # one once per process); registering it puts it in save_state/load_state.
    accelerator.register_for_checkpointing(scheduler)
    model, optimizer = accelerator.prepare(task.module, optimizer)
    task.attach(_compiled(model) if cfg.compile else model)
    progress = Progress()
    if resume is not None:
        accelerator.load_state(str(resume / ckpt.STATE))
        progress = _restore_progress(ckpt.read_trainer_state(resume), accelerator)
    # Taken here, where a fresh run's state is final and a resumed run's is the checkpoint's.
    r = Run(cfg, accelerator, task, model, optimizer, scheduler, progress, ckpt.RngSnapshot.take())
    if accelerator.is_main_process:
        r.metrics = MetricsLogger(cfg.out, progress.step, {"reads_truth": cfg.reads_truth})
        if cfg.reads_truth:
            r.metrics.note("reads_truth", "text.source=gold: trained on the truth block (gold ceiling)")
    return r


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its forward compiled in place (`nn.Module.compile`), returned for chaining.

    In place rather than `torch.compile(model)` or accelerate's `dynamo_backend`: no wrapper
    module, so state dicts keep their keys (no `_orig_mod.` prefix), a checkpoint resumes with or
    without `compile`, and exports are the same either way. Under DDP the inner module is compiled.
    """
    log.info("compile=true: the first steps are slower while torch.compile compiles the model")
    getattr(model, "module", model).compile()
    return model


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings' scales and the logit scale (as open_clip)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _restore_progress(state: dict, accelerator: Accelerator) -> Progress:
    if state.get("world_size") != accelerator.num_processes:
        log.warning("resuming a %s-process checkpoint with %d processes: the data order will "
                    "differ from an uninterrupted run", state.get("world_size"), accelerator.num_processes)
    by_rank = state.get("data_by_rank") or [{}]
    rank = accelerator.process_index
    return Progress(
        step=state["step"], batches_consumed=state["batches_consumed"],
        samples_seen=state["samples_seen"], nonfinite_skipped=state["nonfinite_skipped"],
        nonfinite_in_a_row=state["nonfinite_in_a_row"],
        loss_tail=deque(map(tuple, state.get("loss_tail", [])), maxlen=LOSS_TAIL),
        data=DataStats.from_dict(by_rank[rank] if rank < len(by_rank) else {}))


def _train(r: Run) -> None:
    cfg, acc, p = r.cfg, r.accelerator, r.progress
    if p.step >= cfg.steps:
        return  # killed after its last checkpoint, before final/: only final/ is left to write
    # A task may read other shards than `data` names (llava: a synthesize folder's images/).
    loader = make_loader(getattr(r.task, "data", cfg.data), r.task.selector, r.task.images_to_tensor,
                         batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                         rank=acc.process_index, world=acc.num_processes,
                         consumed=p.batches_consumed, shuffle_buffer=cfg.shuffle_buffer, replay_mb=cfg.replay_mb,
                         tokenize=getattr(r.task, "texts_to_tokens", None),
                         generator=_loader_generator(cfg.seed, acc.process_index),
                         **loader_settings(cfg.prefetch_factor, cfg.pin_memory, cfg.persistent_workers,
                                           acc.device))
    batches = iter(loader)
    bar = tqdm(total=cfg.steps, initial=p.step, disable=not acc.is_main_process,
               desc=f"train {cfg.task}", dynamic_ncols=True)
    r.rng.restore()  # nothing drawn since setup (loader, workers, logging) reaches the steps
    window: list[float] = []
    clock = time.perf_counter()
    window_start = p.step
    while p.step < cfg.steps:
        loss = _train_step(r, batches)
        p.step += 1
        bar.update(1)
        if loss is not None:
            window.append(loss)
        if p.step % cfg.log_every == 0 or p.step == cfg.steps:
            rate = _samples_per_s(cfg, acc, p.step - window_start, time.perf_counter() - clock)
            _log_window(r, window, rate, bar)
            window, clock, window_start = [], time.perf_counter(), p.step
        if (cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0) or p.step == cfg.steps:
            _save(r)
            clock, window_start = time.perf_counter(), p.step  # keep saving out of samples/s
    bar.close()


def _loader_generator(seed: int, rank: int) -> torch.Generator:
    """The DataLoader's own generator: its workers' base seed is then the same in a fresh and a
    resumed run, and drawing it leaves the global generator (dropout's) alone."""
    return torch.Generator().manual_seed(hash_seed(seed, rank, 0x10ad))


def _train_step(r: Run, batches: Iterator[dict]) -> Optional[float]:
    """One optimizer step over `grad_accum` micro-batches; the loss, or None when skipped."""
    cfg, acc, p = r.cfg, r.accelerator, r.progress
    r.model.train()
    total = torch.zeros(())
    for micro in range(cfg.grad_accum):
        batch = next(batches)
        p.batches_consumed += 1
        p.data.samples += len(batch["keys"])
        p.data.add(batch["events"])
        last = micro == cfg.grad_accum - 1
        # Gradients are all-reduced on the last micro-batch only (DDP no_sync before it).
        with nullcontext() if last else acc.no_sync(r.model), acc.autocast():
            loss = r.task.loss(batch, p.step) / cfg.grad_accum
        acc.backward(loss)
        total += loss.detach().float().cpu()
    grad_norm = acc.clip_grad_norm_(r.model.parameters(), cfg.max_grad_norm or math.inf)
    finite = bool(torch.isfinite(total))
    if cfg.mixed_precision != "fp16":  # under fp16 the grad scaler handles overflowing gradients
        finite = finite and bool(torch.isfinite(torch.as_tensor(grad_norm)))
    # Every rank must take the same decision, or their weights drift apart.
    finite = bool(acc.gather(torch.tensor([int(finite)], device=acc.device)).min())
    if finite:
        r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    r.scheduler.step()
    p.samples_seen += cfg.batch_size * cfg.grad_accum * acc.num_processes
    return _count_finite(r, finite, float(total))


def _count_finite(r: Run, finite: bool, loss: float) -> Optional[float]:
    p = r.progress
    if finite:
        p.nonfinite_in_a_row = 0
        p.loss_tail.append((p.step + 1, loss))
        return loss
    p.nonfinite_skipped += 1
    p.nonfinite_in_a_row += 1
    log.warning("step %d: non-finite loss or gradient (loss=%s); optimizer step skipped "
                "(%d in a row, %d in all)", p.step + 1, loss, p.nonfinite_in_a_row, p.nonfinite_skipped)
    if p.nonfinite_in_a_row >= r.cfg.max_nonfinite_in_a_row:
        raise TrainingDiverged(
            f"training diverged: {p.nonfinite_in_a_row} non-finite steps in a row at step "
            f"{p.step + 1} (max_nonfinite_in_a_row={r.cfg.max_nonfinite_in_a_row}). Skipped steps "
            f"leave the weights unchanged and no checkpoint is written from non-finite weights. "
            f"Lower lr, raise warmup_steps or max_grad_norm clipping, or use mixed_precision=no; "
            f"resume=latest continues from the newest checkpoint, a new out= starts afresh.")
    return None


def _samples_per_s(cfg: TrainConfig, acc: Accelerator, steps: int, seconds: float) -> float:
    return steps * cfg.batch_size * cfg.grad_accum * acc.num_processes / max(seconds, 1e-9)


def _log_window(r: Run, window: list[float], rate: float, bar: Any) -> None:
    """Average the window's loss over ranks and write one metrics row (main process)."""
    acc, p = r.accelerator, r.progress
    local = torch.tensor([sum(window), len(window)], dtype=torch.float64, device=acc.device)
    total, count = acc.reduce(local, "sum").tolist()
    loss = total / count if count else None  # null: every step of the window was skipped
    if r.metrics is None:
        return
    lr = r.scheduler.get_last_lr()[0]
    r.metrics.log(p.step, {"loss": loss, "lr": lr, "samples_per_s": rate,
                           "nonfinite_skipped": p.nonfinite_skipped, "samples_seen": p.samples_seen,
                           "data_skipped": sum(p.data.skipped.values())})
    bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "skipped", samples_s=f"{rate:.0f}",
                    refresh=False)


def _trainer_state(r: Run, data_by_rank: list[dict]) -> dict:
    p = r.progress
    return {"step": p.step, "steps": r.cfg.steps, "task": r.cfg.task,
            "batches_consumed": p.batches_consumed, "samples_seen": p.samples_seen,
            "nonfinite_skipped": p.nonfinite_skipped, "nonfinite_in_a_row": p.nonfinite_in_a_row,
            "loss_tail": list(p.loss_tail), "world_size": r.accelerator.num_processes,
            "reads_truth": r.cfg.reads_truth, "loss": r.cfg.loss_name,
            "data_by_rank": data_by_rank, "data": _sum_data(data_by_rank)}


def _sum_data(data_by_rank: list[dict]) -> dict:
    total = DataStats()
    for d in data_by_rank:
        part = DataStats.from_dict(d)
        total.samples += part.samples
        total.skipped.update(part.skipped)
        total.skipped_samples.extend(part.skipped_samples[:LISTED_SKIPS - len(total.skipped_samples)])
        total.shards_read += part.shards_read
        total.damaged.extend(part.damaged)
    return total.to_dict()


def _save(r: Run) -> None:
    """A checkpoint from every rank; fails before writing anything when weights are not finite."""
    data_by_rank = gather_object([r.progress.data.to_dict()])
    state = _trainer_state(r, data_by_rank)
    try:
        ckpt.save_checkpoint(r.accelerator, r.cfg.out, r.progress.step, r.task.module,
                             r.task.export, state, r.cfg.keep_checkpoints)
    except ckpt.NonFiniteWeights as exn:
        raise TrainingDiverged(f"step {r.progress.step}: {exn}") from None


def _finish(r: Run) -> Path:
    """Write `final/`, the loss plot and a summary line; returns the final model path."""
    out = Path(r.cfg.out)
    acc = r.accelerator
    final = out / ckpt.FINAL
    if acc.is_main_process:
        state = ckpt.read_trainer_state(ckpt.latest_checkpoint(out))
        ckpt.save_final(out, r.task.module, r.task.export, state)
        plot_loss(out)
        data = state["data"]
        log.info("done: %d steps, %d samples, %d non-finite steps skipped, data skipped %s%s -> %s",
                 state["step"], state["samples_seen"], state["nonfinite_skipped"], data["skipped"],
                 f", damaged shards {data['damaged']}" if data["damaged"] else "", final)
    acc.wait_for_everyone()
    return model_path(r.cfg.task, final)
