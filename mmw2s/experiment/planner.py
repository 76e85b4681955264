"""What every experiment pipeline plans with: config-keyed steps and the teachers' stages.

Every stage's output folder is keyed by a hash of its resolved config (`NAME-1a2b3c4d`), and the
input paths of a stage are the output folders of the stages before it, so the key of a stage
changes whenever anything upstream changes. A stage whose output is complete is skipped by the
stage itself (a trained `final/`, a bootstrapped shard with its stats, a results JSON), so a killed
run resumes at the stage, and within the stage at the shard or checkpoint, where it was.

Imports run one way: `config` -> `plan` -> `llava_plan` -> `planner`, and `plan` -> `planner`.
The planning modules read an `ExperimentConfig` but never import its module at run time (it
imports them, to validate every stage section when it is loaded).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmw2s.config import build
from mmw2s.config import deep_merge as merge  # section keys win over the run's defaults

if TYPE_CHECKING:  # annotations only: the config module imports the planners
    from mmw2s.experiment.config import ExperimentConfig

__all__ = ["Step", "Planner", "Teachers", "config_key", "merge", "plan_teachers", "clip_filter"]


@dataclass
class Step:
    """One stage of one seed: its name, its validated config object and where it writes."""

    name: str
    stage: str  # world | train | bootstrap | eval | audit | synthesize
    cfg: Any
    out: Path


def config_key(data: dict, root: Path | None = None) -> str:
    """A short, stable hash of a config, without its output path and relative to the run folder
    (so a copied or moved run folder keeps its keys)."""
    body = {k: v for k, v in data.items() if k != "out"}
    text = json.dumps(body, sort_keys=True, default=str)
    if root is not None:
        text = text.replace(str(root), "<run>")
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class Planner:
    """Builds the steps of one seed, validating each section against its stage's schema."""

    def __init__(self, source: str, root: Path) -> None:
        self.source, self.root = source, root
        self.steps: list[Step] = []

    def add(self, name: str, stage: str, schema: type, data: dict, section: str) -> Step:
        """Validate `data` against `schema` (errors name `section.KEY`) and append the step."""
        out = self.root / f"{name}-{config_key(data, self.root)}"
        data = dict(data, out=str(out))
        # Keys are named as the experiment file spells them: `student.lr`, `bootstrap.decoding...`
        cfg = build(schema, data, self.source, prefix=f"{section}.")
        step = Step(name, stage, cfg, out)
        self.steps.append(step)
        return step


@dataclass
class Teachers:
    """What every pipeline plans first: the world, the weak captioner and filter, the bootstrap."""

    world_dir: Path
    captioner: str  # the captioner's final/ folder
    filter_model: str  # the filter's final/ folder
    boot_common: dict  # bootstrap keys shared by the bootstrap and its filter-only ablation
    bootstrap: Step


def clip_filter(model_folder: str) -> dict:
    """The bootstrap's `filter` section for a CLIP saved in `model_folder` (a trained `final/`)."""
    return {"kind": "clip", "dual_encoder": {"arch": f"local-dir:{model_folder}", "pretrained": None}}


def plan_teachers(p: Planner, cfg: ExperimentConfig, seed: int) -> Teachers:
    """world -> weak captioner (+ pre-training) and weak filter -> CapFilt over world/web."""
    from mmw2s.data_pipelines.world import WorldConfig
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.train.config import TrainConfig

    world = p.add("world", "world", WorldConfig, merge(cfg.world, {"seed": seed}), "world")
    world_dir = Path(world.cfg.out)
    captioner = _plan_captioner(p, cfg, world_dir, seed, TrainConfig)
    filt = p.add("weak_filter", "train", TrainConfig,
                 merge(cfg.weak_filter, {"task": "clip", "data": str(world_dir / "clean"), "seed": seed}),
                 "weak_filter")
    filter_model = str(Path(filt.cfg.out) / "final")
    boot_common = {"input": str(world_dir / "web"), "seed": seed, "filter": clip_filter(filter_model)}
    boot = p.add("bootstrap", "bootstrap", BootstrapConfig,
                 merge(cfg.bootstrap, merge(boot_common, {"captioner": {"name": captioner}})),
                 "bootstrap")
    return Teachers(world_dir, captioner, filter_model, boot_common, boot)


def _plan_captioner(p: Planner, cfg: ExperimentConfig, world_dir: Path, seed: int,
                    schema: type) -> str:
    """The weak captioner: optionally pre-trained on raw web alt-text, then fine-tuned on clean."""
    base = merge(cfg.weak_captioner, {"task": "captioner", "seed": seed})
    if cfg.captioner_pretrain_steps:
        pre = p.add("captioner_pretrain", "train", schema,
                    merge(base, {"data": str(world_dir / "web"), "steps": cfg.captioner_pretrain_steps,
                                 "text": {"source": "txt"}}), "weak_captioner")
        base = merge(base, {"captioner": {"name": str(Path(pre.cfg.out) / "final")}})
    step = p.add("weak_captioner", "train", schema,
                 merge(base, {"data": str(world_dir / "clean")}), "weak_captioner")
    return str(Path(step.cfg.out) / "final")
