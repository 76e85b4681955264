"""Who bootstraps which shard: the engines of `mmw2s bootstrap` (`engine=local|ray`).

An engine is a context manager with:

- `is_main`: whether this process writes the run's files (config, thresholds, summary);
- `barrier()`: wait for every process of the run (a no-op with one driver);
- `local_models()`: the models in this process, loaded on first call (calibration only);
- `run_shards(urls, job) -> (workers, ceiling)`: bootstrap the incomplete shards among `urls`
  with `mmw2s.bootstrap.shard`, returning one `{rank, images, seconds, ...}` per worker and the
  throughput ceiling (or None).

The run itself (thresholds, fingerprint, summary) is `mmw2s.bootstrap.run`, the same for all.
"""
from __future__ import annotations

import importlib
from typing import Any

ENGINES = {"local": "mmw2s.bootstrap.engines.local:LocalEngine",
           "ray": "mmw2s.bootstrap.engines.ray:RayEngine"}


def open_engine(cfg: Any) -> Any:
    """The engine `cfg.engine` names, built for `cfg` (imported here: Ray only when asked for)."""
    module, name = ENGINES[cfg.engine].split(":")
    return getattr(importlib.import_module(module), name)(cfg)
