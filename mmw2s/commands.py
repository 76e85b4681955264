"""The command registry: every `mmw2s COMMAND` (the stages and `mmw2s run`), its config schema,
its runner and its default config.

Schemas and runners are named as `module:attribute` strings and imported only when the command
is used, so `mmw2s --help` answers without importing torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmw2s.resources import config_dir

CONFIG_DIR = config_dir()  # the shipped default configs (package data, or the checkout's configs/)


@dataclass(frozen=True)
class Command:
    """One `mmw2s NAME` command: what it does, its config schema, its runner, its default config."""

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


COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("world", "generate the synthetic web world (clean / web / test shards)",
            "mmw2s.data_pipelines.world.spec:WorldConfig", "mmw2s.world:run", "world.yaml"),
    Command("bootstrap", "CapFilt over shards: caption, filter, write bootstrapped shards",
            "mmw2s.bootstrap.config:BootstrapConfig", "mmw2s.bootstrap.run:run", "bootstrap.yaml"),
    Command("curate", "one pass over input shards: exact / near duplicates and benchmark contamination -> index.parquet",
            "mmw2s.curate.config:CurateConfig", "mmw2s.curate.run:run", "curate.yaml"),
    Command("audit", "score a bootstrap run against the synthetic world's truth (filter P/R per noise type)",
            "mmw2s.audit:AuditConfig", "mmw2s.audit:run", "audit.yaml"),
    Command("browse", "a static HTML site of a bootstrap run's decisions (thumbnails, captions, scores, filters)",
            "mmw2s.browse.config:BrowseConfig", "mmw2s.browse.site:run", "browse.yaml"),
    Command("synthesize", "write LLaVA instruction data (conversation, detail, reasoning) from captioned shards",
            "mmw2s.synthesize.config:SynthesizeConfig", "mmw2s.synthesize.run:run", "synthesize.yaml"),
    Command("train", "train a captioner (LM loss) or a CLIP student (contrastive) on shards",
            "mmw2s.train.config:TrainConfig", "mmw2s.train.loop:run", "train.yaml"),
    Command("eval", "zero-shot evaluation of captioners, filters and students (CLIP_benchmark-style JSON)",
            "mmw2s.evaluate.config:EvalConfig", "mmw2s.evaluate.run:run", "eval.yaml"),
    Command("export", "write the world's test suites as CLIP_benchmark webdataset folders (for clip_benchmark eval)",
            "mmw2s.export:ExportConfig", "mmw2s.export:run", "export.yaml"),
    Command("run", "the weak-to-strong experiment: world -> weak teachers -> bootstrap -> students -> eval -> report",
            "mmw2s.experiment.config:ExperimentConfig", "mmw2s.experiment.run:run", "demo.yaml"),
    Command("bench", "ratios of our stages vs the tools users would pick instead (open_clip_train, CLIP_benchmark, webdataset)",
            "mmw2s.bench.config:BenchConfig", "mmw2s.bench.run:run", "bench.yaml"),
]}
