"""The stage registry: every `mmw2s STAGE` command, its config schema and its default config.

Schemas and run functions are named as `module:attribute` strings and imported only when the stage
is used, so `mmw2s --help` answers without importing torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    schema: str  # "module:Class" of the config dataclass
    runner: str  # "module:function" taking the config object
    default_config: str  # file name under configs/

    def load_schema(self) -> type:
        return _resolve(self.schema)

    def load_runner(self) -> Callable[[Any], Any]:
        return _resolve(self.runner)

    @property
    def default_config_path(self) -> Path:
        return CONFIG_DIR / self.default_config


def _resolve(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("world", "generate the synthetic web world (clean / web / test shards)",
          "data_pipelines.world.spec:WorldConfig", "mmw2s.world:run", "world.yaml"),
]}
