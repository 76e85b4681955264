"""What every experiment pipeline plans with: config-keyed steps, their edges, the teachers' stages.

Every stage's output folder is keyed by a hash of its resolved config (`NAME-1a2b3c4d`), and the
input paths of a stage are the output folders of the stages before it, so the key of a stage
changes whenever anything upstream changes. A stage whose output is complete is skipped by the
stage itself (a trained `final/`, a bootstrapped shard with its stats, a results JSON), so a killed
run resumes at the stage, and within the stage at the shard or checkpoint, where it was.

The plan states its edges: where a planner wires a step's output folder into another step's
config, it names that step in the other's `needs`, and the scheduler runs a step once every
earlier step writing a folder it needs is done.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from mmw2s.config import build, deep_merge
from mmw2s.experiment.settings import ExperimentSettings

__all__ = ["EVAL_MODEL", "Step", "Planner", "Teachers", "config_key", "final", "plan_teachers",
           "clip_filter", "plan_filter_only", "steps_to_run"]

EVAL_MODEL = "eval_model"  # the stage of one model's part of an eval (`Planner.add_eval`)


@dataclass
class Step:
    """One stage of one seed: its name, its validated config object and where it writes.

    `needs` are the output folders of the steps whose output it reads (a folder is a step's id:
    it is keyed by the step's config); `parts` are steps that run before it, into its folder.
    """

    name: str
    stage: str  # world | train | bootstrap | eval | eval_model | audit | synthesize
    cfg: Any
    out: Path
    needs: tuple[Path, ...] = ()
    parts: tuple[Step, ...] = ()


def steps_to_run(step: Step) -> list[Step]:
    """The step's parts (an eval's one step per model), then the step itself."""
    return [*step.parts, step]


def final(step: Step) -> str:
    """The trained model folder of a train step, which a later stage loads."""
    return str(Path(step.cfg.out) / "final")


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

    def add(self, name: str, stage: str, schema: type, data: dict, section: str,
            needs: Iterable[Step] = ()) -> Step:
        """Validate `data` against `schema` (errors name `section.KEY`) and append the step, which
        waits for the steps in `needs` (those whose output folders `data` names)."""
        out = self.root / f"{name}-{config_key(data, self.root)}"
        data = dict(data, out=str(out))
        # Keys are named as the experiment file spells them: `student.lr`, `bootstrap.decoding...`
        cfg = build(schema, data, self.source, prefix=f"{section}.")
        step = Step(name, stage, cfg, out, tuple(s.out for s in needs))
        self.steps.append(step)
        return step

    def add_eval(self, schema: type, data: dict, shared: Sequence[Step], models: Sequence[Step]) -> Step:
        """The eval of `data["models"]`, the model at each index trained by the step at that index of
        `models`; every model's part reads `shared` too (the world, a scoring model).

        An eval of several models runs as one part per model, then the eval itself: each part can
        start as soon as its model is trained (the captioner's while the students train), and the
        eval then finds every result written in its folder and only writes the summary.
        """
        step = self.add("eval", "eval", schema, data, "eval", [*shared, *models])
        if len(step.cfg.models) < 2:
            return step
        step.parts = tuple(Step(f"eval_{m.name}", EVAL_MODEL, dataclasses.replace(step.cfg, models=[m]), step.out,
                                tuple(s.out for s in [*shared, trained]))
                           for m, trained in zip(step.cfg.models, models, strict=True))
        step.needs += (step.out,)  # the results its parts write there
        return step

    def add_audit(self, schema: type, bootstrap: Step) -> Step:
        """The audit of a bootstrap run, which it writes into that run's folder."""
        step = Step(f"audit_{bootstrap.name}", "audit", schema(run=bootstrap.cfg.out), bootstrap.out,
                    (bootstrap.out,))
        self.steps.append(step)
        return step


@dataclass
class Teachers:
    """What every pipeline plans first: the world, the weak captioner and filter, the bootstrap."""

    world: Step
    captioner: Step
    filter: Step
    boot_common: dict  # bootstrap keys shared by the bootstrap and its filter-only ablation
    bootstrap: Step


def clip_filter(model_folder: str) -> dict:
    """The bootstrap's `filter` section for a CLIP saved in `model_folder` (a trained `final/`)."""
    return {"kind": "clip", "dual_encoder": {"arch": f"local-dir:{model_folder}", "pretrained": None}}


def plan_teachers(p: Planner, cfg: ExperimentSettings, seed: int) -> Teachers:
    """world -> weak captioner (+ pre-training) and weak filter -> CapFilt over world/web."""
    from mmw2s.data_pipelines.world import WorldConfig
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.train.config import TrainConfig

    world = p.add("world", "world", WorldConfig, deep_merge(cfg.world, {"seed": seed}), "world")
    captioner = _plan_captioner(p, cfg, world, seed, TrainConfig)
    filt = p.add("weak_filter", "train", TrainConfig,
                 deep_merge(cfg.weak_filter, {"task": "clip", "data": str(world.out / "clean"), "seed": seed}),
                 "weak_filter", [world])
    boot_common = {"input": str(world.out / "web"), "seed": seed, "filter": clip_filter(final(filt))}
    boot = p.add("bootstrap", "bootstrap", BootstrapConfig,
                 deep_merge(cfg.bootstrap, deep_merge(boot_common, {"captioner": {"name": final(captioner)}})),
                 "bootstrap", [world, filt, captioner])
    return Teachers(world, captioner, filt, boot_common, boot)


def plan_filter_only(p: Planner, cfg: ExperimentSettings, t: Teachers) -> Step:
    """The bootstrap's filter-only ablation: the same filter over world/web, no synthetic captions."""
    from mmw2s.bootstrap.config import BootstrapConfig

    return p.add("filter_only", "bootstrap", BootstrapConfig,
                 deep_merge(cfg.bootstrap, deep_merge(t.boot_common, {"decoding": {"num_captions": 0}})), "bootstrap",
                 [t.world, t.filter])


def _plan_captioner(p: Planner, cfg: ExperimentSettings, world: Step, seed: int, schema: type) -> Step:
    """The weak captioner: optionally pre-trained on raw web alt-text, then fine-tuned on clean."""
    base = deep_merge(cfg.weak_captioner, {"task": "captioner", "seed": seed})
    needs = [world]
    if cfg.captioner_pretrain_steps:
        pre = p.add("captioner_pretrain", "train", schema,
                    deep_merge(base, {"data": str(world.out / "web"), "steps": cfg.captioner_pretrain_steps,
                                      "text": {"source": "txt"}}), "weak_captioner", [world])
        base = deep_merge(base, {"captioner": {"name": final(pre)}})
        needs.append(pre)
    return p.add("weak_captioner", "train", schema, deep_merge(base, {"data": str(world.out / "clean")}),
                 "weak_captioner", needs)
