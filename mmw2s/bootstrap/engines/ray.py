"""engine=ray: a pool of Ray actors, each holding the captioner and filter once, fed one input
shard per task, with retries when an actor dies.

    mmw2s bootstrap --config C.yaml input=... out=... engine=ray ray.address=auto \\
        ray.concurrency=16 ray.num_gpus_per_worker=1

Why actors with a task queue, not Ray Data `map_batches(Callable, compute=ActorPoolStrategy(...))`:
the unit of work is a whole shard (read with our own reader, written by our atomic writer), not a
stream of rows, so Ray Data's blocks, its Arrow conversion and its own webdataset decoder (which
we would not run on untrusted shards) add nothing but overhead per item (docs: performance), and
its `ray[data]` extra brings pyarrow and pandas (~600 MB). And not `ray.util.ActorPool` itself:
its results do not say which shard failed, and it would leave a dead actor's shard to that actor.
Ray still does what we must not write ourselves: it starts the actors on the cluster's nodes and
restarts an actor whose process or node dies (`max_restarts=-1`), wherever it can place it. The
queue here is a few lines: an idle actor takes the next shard, so a slow node simply does fewer
shards, and the shard of an actor that died goes to the next idle actor (`ray.max_retries` times
at most) instead of waiting for the restarted one.

A shard may so be *started* twice (its first actor presumed dead while still writing): the output
shard is the same bytes either way, and `ShardWriter` lets only one writer at a time hold a
shard's `.partial` file, so two starts never mix. The driver calibrates the thresholds before any
actor starts, shows shards done / total and images/s, and merges the summary from the shards'
stats files, as engine=local does. The pool is fixed at `ray.concurrency` actors: nodes that join
later get work only as restarted actors (Ray Data's autoscaling actor pools would grow instead).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from mmw2s.bootstrap.config import BootstrapConfig
from mmw2s.bootstrap.shard import (ShardJob, ShardReader, bootstrap_shard, cpu_threads, is_done, model_threads,
                                   unreadable_shards)
from mmw2s.errors import StageError

log = logging.getLogger(__name__)
INSTALL_HINT = 'engine=ray needs Ray: pip install -e ".[ray]"'


class ShardActor:
    """One worker of the pool: the models, loaded once, and the per-shard function."""

    def __init__(self, job: ShardJob, cores: float) -> None:
        import torch

        from mmw2s.bootstrap.capfilt import CapFilt

        cfg = job.cfg
        # Ray hides the GPUs from an actor that asked for none (CUDA_VISIBLE_DEVICES=""), so
        # device=auto resolves per actor as it does per rank.
        cuda = cfg.device != "cpu" and torch.cuda.is_available()
        if cfg.device == "cuda" and not cuda:
            raise RuntimeError("device=cuda, but this actor sees no CUDA device: set ray.num_gpus_per_worker")
        if not cuda:
            torch.set_num_threads(model_threads(cfg, max(1, int(cores))))
        self.job = job
        self.models = CapFilt.from_config(cfg, torch.device("cuda" if cuda else "cpu"))
        self.reader = ShardReader(cfg, self.models.preprocessor)  # its decoding worker outlives each shard

    def pid(self) -> int:
        """This actor's process id (the driver waits on it: models loaded, actor ready)."""
        return os.getpid()

    def run_shard(self, url: str) -> dict:
        """Bootstrap one input shard; its stats."""
        return bootstrap_shard(url, self.job, self.models, events=self.reader.read(url))


class RayEngine:
    """The Ray driver: connects, starts the pool, hands out shards; see the module docstring."""

    is_main = True

    def __init__(self, cfg: BootstrapConfig) -> None:
        if cfg.ray.address == "local":  # read on import: the instance we start keeps token auth,
            os.environ.setdefault("RAY_AUTH_MODE", "token")  # without Ray's warning about it
        try:
            import ray  # noqa: F401
        except ImportError as exn:
            raise StageError(f"{INSTALL_HINT} ({exn})") from None
        if cfg.measure_ceiling:
            raise StageError("measure_ceiling=true is measured by engine=local (one process, its own batches)")
        self.cfg = cfg
        self._started_ray = False
        self._models = None
        self._threads = contextlib.ExitStack()

    def __enter__(self) -> "RayEngine":
        import ray
        import torch

        self.device = torch.device("cuda" if self.cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
        self._threads.enter_context(cpu_threads(self.cfg, self.device))  # the driver's calibration
        if not ray.is_initialized():  # an in-process caller (tests, a notebook) may have connected already
            address = None if self.cfg.ray.address == "local" else self.cfg.ray.address
            ray.init(address=address, log_to_driver=True)
            self._started_ray = True
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray

        self._threads.close()
        if self._started_ray:
            ray.shutdown()  # ends the actors too

    def barrier(self) -> None:
        """One driver: nothing to wait for."""

    def local_models(self) -> Any:
        """The models on the driver, for calibration only (CUDA when it has one and device allows)."""
        if self._models is None:
            from mmw2s.bootstrap.capfilt import CapFilt

            self._models = CapFilt.from_config(self.cfg, self.device)
        return self._models

    def run_shards(self, urls: list[str], job: ShardJob) -> tuple[list[dict], dict | None]:
        """The incomplete shards among `urls` on the pool; one `{rank, images, shards, seconds}`
        per actor (seconds: the pool's wall time from all actors ready to the last shard)."""
        todo = [u for u in urls if not is_done(Path(self.cfg.out), u, job.fingerprint, self.cfg.verify)]
        log.info("ray: %d input shards, %d complete, %d to do", len(urls), len(urls) - len(todo), len(todo))
        if not todo:  # a finished run starts no actor and loads no model
            return [], None
        actors = self._start_pool(job, min(self.cfg.ray.concurrency, len(todo)))
        start = time.perf_counter()
        done = dispatch(actors, todo, self.cfg.ray.max_retries, progress=self.cfg.progress)
        seconds = round(time.perf_counter() - start, 3)
        return [{"rank": i, "images": sum(s["decoded"] for s in stats), "shards": len(stats), "seconds": seconds,
                 "unreadable": unreadable_shards(stats)} for i, stats in enumerate(done)], None

    def _start_pool(self, job: ShardJob, size: int) -> list[Any]:
        """`size` actors with their models loaded (the clock starts after this, as for engine=local)."""
        import ray

        r = self.cfg.ray
        check_resources(ray.cluster_resources(), r.num_cpus_per_worker, r.num_gpus_per_worker,
                        fixed=r.address == "local")
        # Ray restarts a dead actor (max_restarts=-1); `dispatch` re-queues its shard for any idle
        # actor, rather than Ray re-running it on the same one once restarted (max_task_retries).
        options = dict(num_cpus=r.num_cpus_per_worker, num_gpus=r.num_gpus_per_worker,
                       max_restarts=-1, max_task_retries=0)
        remote = ray.remote(ShardActor).options(**options)
        actors = [remote.remote(job, r.num_cpus_per_worker) for _ in range(size)]
        pids = ray.get([a.pid.remote() for a in actors])
        log.info("ray: %d actors ready (pids %s)", size, pids)
        return actors


def check_resources(cluster: dict, cpus: float, gpus: float, fixed: bool) -> None:
    """Refuse (on a `fixed` local instance; warn on a cluster, whose autoscaler may add nodes) an
    actor bigger than the whole cluster: Ray would wait for it forever."""
    if cluster.get("CPU", 0) >= cpus and cluster.get("GPU", 0) >= gpus:
        return
    message = (f"the Ray cluster has {cluster.get('CPU', 0)} CPUs and {cluster.get('GPU', 0)} GPUs; one actor "
               f"asks for {cpus} and {gpus} (ray.num_cpus_per_worker, ray.num_gpus_per_worker)")
    if fixed:
        raise StageError(message)
    log.warning("%s: waiting for the cluster to grow", message)


def dispatch(actors: list[Any], todo: list[str], retries: int, progress: bool = True) -> list[list[dict]]:
    """Run every shard of `todo` on the first idle actor; returns each actor's shard stats.

    A shard whose actor died goes back to the head of the queue, for another idle actor; Ray
    restarts the dead one, which takes work again once a probe call answers. A shard that fails
    for good (an error raised in it, or its actor died `retries` + 1 times) stops the job with the
    shard named: what is complete stays complete for the rerun.
    """
    import ray

    lost = (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError)
    queue, idle, deaths = deque(todo), deque(range(len(actors))), Counter()
    pending: dict[Any, tuple[str, int]] = {}
    restarting: dict[Any, int] = {}  # probe call -> actor; the probe waits out the restart
    done: list[list[dict]] = [[] for _ in actors]
    bar = ShardProgress(len(todo), progress)
    try:
        while queue or pending:
            while queue and idle:
                i, url = idle.popleft(), queue.popleft()
                pending[actors[i].run_shard.remote(url)] = (url, i)
            [ready], _ = ray.wait([*pending, *restarting], num_returns=1)
            if ready in restarting:
                idle.append(restarting.pop(ready))
                continue
            url, i = pending.pop(ready)
            try:
                stats = ray.get(ready)
            except lost as exn:
                deaths[url] += 1
                if deaths[url] > retries:
                    raise StageError(f"shard {url} failed: its Ray actor died {deaths[url]} times "
                                     f"(ray.max_retries={retries}): {exn}") from exn
                log.warning("ray: the actor running %s died (%s); the shard goes to another actor",
                            url, type(exn).__name__)
                queue.appendleft(url)
                restarting[actors[i].pid.options(max_task_retries=-1).remote()] = i
                continue
            except ray.exceptions.RayError as exn:
                raise StageError(f"shard {url} failed on a Ray actor: {exn}") from exn
            done[i].append(stats)
            idle.appendleft(i)
            bar.update(stats["decoded"])
    finally:
        bar.close()
    return done


class ShardProgress:
    """Shards done / total and images/s on the driver: a tqdm bar in shards, or (progress=false)
    a log line every `every` seconds."""

    def __init__(self, total: int, show: bool, every: float = 30.0) -> None:
        from mmw2s.console import progress_bar as tqdm  # drawn by tqdm, as lines, or by `mmw2s run`

        self.bar = tqdm(total=total, unit="shard", desc="bootstrap (ray)", disable=not show)
        self.images, self.every = 0, every
        self.start = self.logged = time.perf_counter()

    def update(self, images: int) -> None:
        now = time.perf_counter()
        self.images += images
        rate = self.images / max(now - self.start, 1e-9)
        self.bar.set_postfix(images_per_s=f"{rate:.1f}", refresh=False)
        self.bar.update(1)
        if self.bar.disable and now - self.logged >= self.every:
            self.logged = now
            log.info("ray: %d/%d shards, %.1f images/s", self.bar.n, self.bar.total, rate)

    def close(self) -> None:
        self.bar.close()
