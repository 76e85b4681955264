"""The ray row: `mmw2s bootstrap engine=ray` with 2 CPU actors against `engine=local` with 2
`accelerate launch` ranks, on the same shards, models and settings (target >= 0.9), and what an
actor killed mid-shard costs (extra seconds against the unkilled run).

All runs are subprocesses of the bench's bootstrap command on CPU (2 actors and 2 ranks
are CPU workers on any machine), each timed from its models loaded to its last shard
(`summary.json` images/s): Ray's start and the actors' model loading are not charged, as the
ranks' loading is not. The killed run loses one actor as soon as it runs a shard; Ray restarts
the actor (a new process loading the models) and re-runs that shard.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mmw2s.bench.bootstrap import bootstrap_args
from mmw2s.bench.common import REPO_ROOT, child_env, missing_peer, row, run_child, skipped
from mmw2s.bench.config import BenchConfig
from mmw2s.bench.fixtures import web_shards

TARGET = 0.9
REPEATS = 2  # runs per side; the best counts (the other rows' `repeats`, fixed here: each run is ~20 s)
ACTOR_TITLE = "ray::ShardActor.run_shard"  # Ray titles a worker `ray::Class.method` while it runs it


def bench_ray(cfg: BenchConfig, world: Path, models: Path) -> dict:
    """engine=ray (2 actors) vs engine=local (2 ranks) images/s, best of `REPEATS` interleaved runs
    each, plus the killed-actor overhead against the best unkilled Ray run."""
    reason = missing_peer("ray")
    if reason:
        return skipped("ray", reason, "images/s", TARGET)
    shards = web_shards(world, cfg.bootstrap.shards)
    runs, pool_args = Path(cfg.out) / "runs", ("engine=ray", "ray.concurrency=2")
    local, pool = [], []
    for _ in range(REPEATS):  # interleaved: a load that comes and goes on a shared machine hits both
        local.append(run_bootstrap(cfg, models, shards, runs / "ray_local", launch=launch_args(2)))
        pool.append(run_bootstrap(cfg, models, shards, runs / "ray_pool", extra=pool_args))
    killed = run_bootstrap(cfg, models, shards, runs / "ray_killed", extra=pool_args, kill_one_actor=True)
    best_local = max(local, key=lambda s: s["images_per_s"])
    best_pool = max(pool, key=lambda s: s["images_per_s"])
    return row("ray", best_pool["images_per_s"], best_local["images_per_s"], "images/s", TARGET,
               images=best_pool["images_this_run"], seconds=best_pool["seconds"], local_seconds=best_local["seconds"],
               all_seconds={"ray": [s["seconds"] for s in pool], "local": [s["seconds"] for s in local]},
               killed_actor=killed["killed_pid"] is not None,
               killed_actor_extra_seconds=round(killed["seconds"] - best_pool["seconds"], 3),
               killed_run_seconds=killed["seconds"],
               outputs_identical=same_tars(runs / "ray_pool", runs / "ray_local")
               and same_tars(runs / "ray_killed", runs / "ray_local"),
               ours_is="engine=ray, 2 CPU actors (ray.concurrency=2)",
               theirs_is="engine=local, accelerate launch --num_processes 2 (CPU ranks)")


def launch_args(ranks: int) -> list[str]:
    """`accelerate launch` of `ranks` CPU processes (`--multi_gpu` starts torchrun; `--cpu` one process)."""
    with socket.socket() as s:  # a free port: other runs on this machine may hold accelerate's default
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(ranks), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def run_bootstrap(cfg: BenchConfig, models: Path, shards: list[str], out: Path, launch: list[str] = (),
                  extra: tuple[str, ...] = (), kill_one_actor: bool = False) -> dict:
    """One bootstrap subprocess into a fresh `out`; its summary (plus `killed_pid` when asked to kill)."""
    shutil.rmtree(out, ignore_errors=True)
    args = [*launch, *bootstrap_args(cfg, models, shards, out, "cpu", "fp32", *extra)]
    log = out.parent / f"{out.name}.log"
    killed = None
    if kill_one_actor:
        killed = run_killing_one_actor(args, cfg.threads, log)
    else:
        run_child(args, cfg.threads, log)
    return {**json.loads((out / "summary.json").read_text()), "killed_pid": killed}


def run_killing_one_actor(args: list[str], threads: int, log_path: Path, timeout: float = 1800) -> int | None:
    """Run `python ARGS`, SIGKILL the first of its Ray actors seen running a shard; that actor's pid
    (None when the run ended before one was seen). Raises RuntimeError when the run fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    killed, deadline = None, time.monotonic() + timeout
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(threads), cwd=REPO_ROOT)
        while proc.poll() is None and time.monotonic() < deadline:
            if killed is None:
                busy = descendant_pids(proc.pid, ACTOR_TITLE)
                if busy:
                    killed = busy[0]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.005)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"the killed-actor run failed ({proc.returncode}); {log_path}:\n{tail}")
    return killed


def descendant_pids(root: int, title: str) -> list[int]:
    """Processes below `root` (children, grandchildren, ...) whose command line starts with `title`,
    less their own children (an actor's data-loader worker is forked with the actor's title)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _titled(int(entry.name), title):
            continue
        chain = ancestors(int(entry.name))
        if root in chain and not (chain and _titled(chain[0], title.split(".")[0])):
            found.append(int(entry.name))
    return found


def _titled(pid: int, title: str) -> bool:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(title.encode())
    except OSError:
        return False


def ancestors(pid: int) -> list[int]:
    """Parent, grandparent, ... of `pid` up to init (from /proc/PID/stat; the name may hold spaces)."""
    chain = []
    while pid > 1:
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        chain.append(pid)
    return chain


def same_tars(a: Path, b: Path) -> bool:
    """Whether two bootstrap runs wrote the same output shards, byte for byte."""
    tars = sorted(p.name for p in (a / "shards").glob("*.tar"))
    return tars == sorted(p.name for p in (b / "shards").glob("*.tar")) and all(
        (a / "shards" / n).read_bytes() == (b / "shards" / n).read_bytes() for n in tars)
