"""Run an experiment's steps, several at once where none needs another's output.

The plan is the graph: each step names the output folders it reads (`Step.needs`, set by the
planner where it wires one step's output folder into another's config: a student's data is the
bootstrap's shards, the eval's models are the students' folders), and a step waits for every
earlier step that writes one of them.

With ``jobs`` > 1 the stages run in that many worker processes (spawned, so each starts clean),
each with ``cores // jobs`` torch threads. On a small machine two single-threaded stages side by
side do more work per second than one stage on two threads: a small model's operators are too
short to split well across threads, and when the machine is busy with anything else a
multi-threaded step waits at every barrier for its slowest thread. ``jobs=1`` runs the stages in
order in this process, as `mmw2s STAGE` would. Results are deterministic for a given ``jobs`` and
core count; the thread count of a stage can change its last float bits, so compare runs made
with the same ``jobs``.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from mmw2s.errors import StageError
from mmw2s.experiment.display import StageDisplay
from mmw2s.experiment.planner import Step
from mmw2s.experiment.worker import run_step

Done = Callable[[int, Step, dict, bool], None]  # (index, step, seconds, was complete before)


def dependencies(steps: Sequence[Step]) -> list[set[int]]:
    """For each step, the earlier steps it waits for: those that write a folder it needs.

    Several steps may write one folder (an eval's per-model parts and the eval, a bootstrap and its
    audit); a step that needs the folder waits for all of them.
    """
    writers: dict[Path, list[int]] = defaultdict(list)
    waits: list[set[int]] = []
    for j, step in enumerate(steps):
        waits.append({i for folder in step.needs for i in writers[folder]})
        writers[step.out].append(j)
    return waits


def resolve_jobs(jobs: int, cores: int | None = None) -> int:
    """``jobs=0`` (automatic): 2 on a machine with 2 or more cores, else 1."""
    return jobs if jobs > 0 else min(2, cores or os.cpu_count() or 1)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def run_steps(steps: Sequence[Step], jobs: int, done: Done) -> None:
    """Run every step once its dependencies are done, ``jobs`` at a time; ``done`` hears of each."""
    jobs = resolve_jobs(jobs)
    if jobs == 1:
        for i, step in enumerate(steps):
            done(i, step, *run_step(step))
        return
    deps = dependencies(steps)
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("mmw2s").getEffectiveLevel()
    # The workers' logs, prints and progress bars are drawn by this process, in one place.
    with StageDisplay(context) as display, ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker,
            initargs=(threads_per_job(jobs), level, display.queue)) as pool:
        _drive(pool, steps, deps, jobs, done)


def _drive(pool: ProcessPoolExecutor, steps: Sequence[Step], deps: list[set[int]], jobs: int,
           done: Done) -> None:
    finished: set[int] = set()
    running: dict[Future, int] = {}
    waiting = list(range(len(steps)))
    failure: tuple[Step, BaseException] | None = None
    while waiting or running:
        if failure is None:  # after a failure: no new stage, the running ones finish (resumable)
            for i in [i for i in waiting if deps[i] <= finished][: jobs - len(running)]:
                waiting.remove(i)
                print(f"=== start {steps[i].name} -> {steps[i].out}", flush=True)
                running[pool.submit(run_step, steps[i])] = i
        if not running:
            break
        complete, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in complete:
            i = running.pop(future)
            try:
                seconds, before = future.result()
            except BaseException as exn:  # noqa: BLE001 - reported with the stage's name below
                failure = failure or (steps[i], exn)
                continue
            finished.add(i)
            done(i, steps[i], seconds, before)
    if failure is not None:
        step, exn = failure
        raise StageError(f"stage {step.name} ({step.out}) failed: {type(exn).__name__}: {exn}") from exn


def _init_worker(threads: int, level: int, display: Any) -> None:
    """Each worker: this many torch threads (data-loader workers keep their own single thread), and
    the command line's log level (a spawned process starts without it), its output sent to the
    parent's display."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # A spawned process inherits "spawn" as its default start method; the stages' data loaders
    # start their workers as `mmw2s STAGE` does (fork), whose datasets need not pickle.
    multiprocessing.set_start_method("fork", force=True)
    from mmw2s.console import attach_worker

    attach_worker(display, level)
    import torch

    torch.set_num_threads(threads)
