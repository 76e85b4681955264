"""The `mmw2s bench` runner: build the world and models, run the enabled comparisons, print one
table and write `out/bench.json`.

Every ratio compares two sides measured in this run, on this machine, back to back after a
warm-up; absolute times of different runs are not comparable (shared, noisy machines).
"""
from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Callable

from mmw2s.data_pipelines import write_json_atomic
from mmw2s.bench.common import format_table, set_threads, skipped
from mmw2s.bench.config import BenchConfig
from mmw2s.bench.fixtures import make_models, make_world, resolve_device, web_shards

log = logging.getLogger(__name__)
RESULT_FILE = "bench.json"
UNITS = {"curate": "images/s", "engine": "images/s", "bootstrap": "images/s", "caption_vlm": "images/s", "train": "samples/s", "eval": "images/s", "loading": "samples/s",
         "memory": "MiB peak", "ray": "images/s", "browse": "seconds", "gpu": ""}
TARGETS = {"curate": 0.5, "engine": 3.0, "bootstrap": 0.8, "caption_vlm": 0.85, "train": 1.0, "eval": 1.5, "loading": 1.0, "memory": 1.1, "ray": 0.9, "browse": 2.0, "gpu": None}


def run(cfg: BenchConfig) -> dict:
    """Run the comparisons of `cfg.only`; returns what `out/bench.json` holds."""
    from mmw2s.config import save_config

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    set_threads(cfg.threads)
    device, precision = resolve_device(cfg)
    world = make_world(cfg)
    models = make_models(cfg, world) if {"bootstrap", "caption_vlm", "memory", "ray", "eval", "engine"} & set(cfg.only) \
        else None
    rows = [r for name in cfg.only for r in _guarded(name, _comparison(name, cfg, world, models, device, precision))]
    result = {"rows": rows, "machine": machine(device, precision, cfg),
              "note": "ratio = ours / theirs, both measured side by side in this run; never compare "
                      "absolute numbers across runs"}
    write_json_atomic(out / RESULT_FILE, result)
    print(format_table(rows))
    print(f"-> {out / RESULT_FILE}")
    return result


def _comparison(name: str, cfg: BenchConfig, world: Path, models: Path | None, device: str,
                precision: str) -> Callable[[], dict]:
    """The function measuring one row (imports deferred: each row loads only what it needs)."""
    if name == "bootstrap":
        from mmw2s.bench.bootstrap import bench_bootstrap
        return lambda: bench_bootstrap(cfg, world, models, device, precision)
    if name == "caption_vlm":
        from mmw2s.bench.caption_vlm import bench_caption_vlm
        return lambda: bench_caption_vlm(cfg, world, models, device, precision)
    if name == "memory":
        from mmw2s.bench.bootstrap import bench_memory
        return lambda: bench_memory(cfg, world, models, device, precision)
    if name == "loading":
        from mmw2s.bench.loading import bench_loading
        return lambda: bench_loading(cfg, web_shards(world, cfg.world.web_shards))
    if name == "train":
        from mmw2s.bench.training import bench_train
        return lambda: bench_train(cfg, world, device, precision)
    if name == "browse":
        from mmw2s.bench.browse import bench_browse
        return lambda: bench_browse(cfg, world)
    if name == "ray":
        from mmw2s.bench.ray_engine import bench_ray
        return lambda: bench_ray(cfg, world, models)
    if name == "gpu":
        from mmw2s.bench.gpu import bench_gpu
        return lambda: bench_gpu(cfg, device)
    if name == "curate":
        from mmw2s.bench.curation import bench_curate
        return lambda: bench_curate(cfg, web_shards(world, cfg.world.web_shards))
    if name == "engine":
        from mmw2s.bench.engine import bench_engine
        return lambda: bench_engine(cfg, world, models, device, precision)
    from mmw2s.bench.evaluation import bench_eval
    return lambda: bench_eval(cfg, world, models, device, precision)


def _guarded(name: str, measure: Callable[[], dict | list[dict]]) -> list[dict]:
    """Run one comparison (one row, or several for `gpu`); a failure becomes a skip reason, the
    other comparisons still run."""
    log.info("bench: %s ...", name)
    start = time.perf_counter()
    try:
        result = measure()
    except Exception as exn:  # one broken side must not lose the whole table
        log.exception("bench: %s failed", name)
        return [skipped(name, f"failed: {type(exn).__name__}: {str(exn)[:400]}", UNITS[name], TARGETS[name])]
    results = result if isinstance(result, list) else [result]
    for r in results:
        r.setdefault("details", {})["bench_seconds"] = round(time.perf_counter() - start, 1)
    return results


def machine(device: str, precision: str, cfg: BenchConfig) -> dict:
    """What the numbers were measured on."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_cores": cores, "device": device, "precision": precision, "threads": cfg.threads,
            "workers": cfg.workers, "compile": cfg.compile and device == "cuda"}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info
