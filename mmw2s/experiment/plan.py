"""The experiment as a plan of stage configs, built and validated before anything runs.

Every stage's output folder is keyed by a hash of its resolved config (`NAME-1a2b3c4d`), and the
input paths of a stage are the output folders of the stages before it, so the key of a stage
changes whenever anything upstream changes. A stage whose output is complete is skipped by the
stage itself (a trained `final/`, a bootstrapped shard with its stats, a results JSON), so a killed
run resumes at the stage, and within the stage at the shard or checkpoint, where it was.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmw2s.config import build, set_dotted, to_dict
from mmw2s.config import deep_merge as merge  # section keys win over the run's defaults
from mmw2s.experiment.config import ExperimentConfig


@dataclass
class Step:
    """One stage of one seed: its name, its validated config object and where it writes."""

    name: str
    stage: str  # world | train | bootstrap | eval | audit
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
        out = self.root / f"{name}-{config_key(data, self.root)}"
        data = dict(data, out=str(out))
        # Keys are named as the experiment file spells them: `student.lr`, `bootstrap.decoding...`
        cfg = build(schema, data, self.source, prefix=f"{section}.")
        step = Step(name, stage, cfg, out)
        self.steps.append(step)
        return step


def plan_seed(cfg: ExperimentConfig, source: str, seed: int) -> list[Step]:
    """The stages of one seed of the experiment, in the order they run."""
    if cfg.pipeline == "llava":
        from mmw2s.experiment.llava_plan import plan_llava_seed

        return plan_llava_seed(cfg, source, seed)
    from mmw2s.audit import AuditConfig
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.evaluate.config import EvalConfig
    from mmw2s.train.config import TrainConfig

    p = Planner(source, Path(cfg.out) / f"seed_{seed}")
    t = plan_teachers(p, cfg, seed)
    world_dir, captioner, filter_model, boot_common, boot = (
        t.world_dir, t.captioner, t.filter_model, t.boot_common, t.bootstrap)
    boot_text = merge({"source": "txt"}, cfg.bootstrapped_text)
    data = {"web": (str(world_dir / "web"), {"source": "txt"}),
            "bootstrapped": (str(Path(boot.cfg.out) / "shards"), boot_text),
            "gold": (str(world_dir / "web"), {"source": "gold"})}
    if "filtered" in cfg.students:
        only = p.add("filter_only", "bootstrap", BootstrapConfig,
                     merge(cfg.bootstrap, merge(boot_common, {"decoding": {"num_captions": 0}})),
                     "bootstrap")
        data["filtered"] = (str(Path(only.cfg.out) / "shards"), {"source": "txt"})
    students = {}
    for name in cfg.students:
        shards, text = data[name]
        section = merge(cfg.student, {"task": "clip", "data": shards, "seed": seed, "text": text,
                                      "reads_truth": name == "gold"})
        students[name] = p.add(f"student_{name}", "train", TrainConfig, section, "student")
    students.update(_plan_rounds(p, cfg, boot_common, captioner, students.get("bootstrapped"), seed))
    models = [{"name": "weak_captioner", "kind": "captioner", "path": captioner},
              {"name": "weak_filter", "kind": "dual_encoder", "path": filter_model}]
    models += [{"name": f"student_{n}", "kind": "dual_encoder", "path": str(Path(s.cfg.out) / "final")}
               for n, s in students.items()]
    p.add("eval", "eval", EvalConfig,
          merge(cfg.eval, {"world": str(world_dir), "models": models}), "eval")
    audits = [s for s in p.steps if s.stage == "bootstrap"]
    for b in audits:
        p.steps.append(Step(f"audit_{b.name}", "audit", AuditConfig(run=b.cfg.out), Path(b.cfg.out)))
    return p.steps


@dataclass
class Teachers:
    """What every pipeline plans first: the world, the weak captioner and filter, the bootstrap."""

    world_dir: Path
    captioner: str  # the captioner's final/ folder
    filter_model: str  # the filter's final/ folder
    boot_common: dict  # bootstrap keys shared by the bootstrap and its filter-only ablation
    bootstrap: Step


def plan_teachers(p: Planner, cfg: ExperimentConfig, seed: int) -> Teachers:
    """world -> weak captioner (+ pre-training) and weak filter -> CapFilt over world/web."""
    from data_pipelines.world import WorldConfig
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.train.config import TrainConfig

    world = p.add("world", "world", WorldConfig, merge(cfg.world, {"seed": seed}), "world")
    world_dir = Path(world.cfg.out)
    captioner = _plan_captioner(p, cfg, world_dir, seed, TrainConfig)
    filt = p.add("weak_filter", "train", TrainConfig,
                 merge(cfg.weak_filter, {"task": "clip", "data": str(world_dir / "clean"), "seed": seed}),
                 "weak_filter")
    filter_model = str(Path(filt.cfg.out) / "final")
    boot_common = {"input": str(world_dir / "web"), "seed": seed,
                   "filter": {"kind": "clip", "dual_encoder": {"arch": f"local-dir:{filter_model}",
                                                                "pretrained": None}}}
    boot = p.add("bootstrap", "bootstrap", BootstrapConfig,
                 merge(cfg.bootstrap, merge(boot_common, {"captioner": {"name": captioner}})),
                 "bootstrap")
    return Teachers(world_dir, captioner, filter_model, boot_common, boot)


def _plan_rounds(p: Planner, cfg: ExperimentConfig, boot_common: dict, captioner: str,
                 student: Step | None, seed: int) -> dict[str, Step]:
    """Rounds 2..N: bootstrap web again, filtering with the last round's bootstrapped student."""
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.train.config import TrainConfig

    out = {}
    for r in range(2, cfg.rounds + 1):
        assert student is not None  # validate() requires the bootstrapped student for rounds > 1
        new_filter = {"kind": "clip", "dual_encoder": {"arch": f"local-dir:{Path(student.cfg.out) / 'final'}",
                                                       "pretrained": None}}
        boot = p.add(f"bootstrap_r{r}", "bootstrap", BootstrapConfig,
                     merge(cfg.bootstrap, merge(boot_common, {"filter": new_filter,
                                                              "captioner": {"name": captioner}})),
                     "bootstrap")
        section = merge(cfg.student, {"task": "clip", "data": str(Path(boot.cfg.out) / "shards"),
                                      "seed": seed, "text": {"source": "txt"}, "reads_truth": False})
        student = p.add(f"student_bootstrapped_r{r}", "train", TrainConfig, section, "student")
        out[f"bootstrapped_r{r}"] = student
    return out


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


def plan(cfg: ExperimentConfig, source: str = "experiment") -> dict[int, list[Step]]:
    """Every seed's steps; raises `ConfigError` before any work if a section is wrong."""
    return {cfg.seed + i: plan_seed(cfg, source, cfg.seed + i) for i in range(cfg.seeds)}


@dataclass
class Variant:
    """One point of a sweep (the whole experiment when there is no sweep)."""

    value: Any
    cfg: ExperimentConfig
    steps_by_seed: dict[int, list[Step]]


def plan_variants(cfg: ExperimentConfig, source: str = "experiment") -> list[Variant]:
    """One variant per sweep value (or the experiment itself), each planned and validated.

    All variants plan into the same seed folders, so a stage whose config does not depend on the
    swept key (the world of a student-size sweep, say) has the same key and runs once.
    """
    if not cfg.sweep.key:
        return [Variant(None, cfg, plan(cfg, source))]
    from mmw2s.config import ConfigError

    variants = []
    for value in cfg.sweep.values:
        data = to_dict(cfg)
        data["sweep"] = {}
        section = cfg.sweep.key.split(".")[0]
        if section not in data:
            raise ConfigError(f"{source}: sweep.key {cfg.sweep.key!r}: {section!r} is not a key of the "
                              f"experiment; keys: {sorted(data)}")
        set_dotted(data, cfg.sweep.key, value)
        variant_cfg = build(ExperimentConfig, data, f"{source} (sweep {cfg.sweep.key}={value})")
        variants.append(Variant(value, variant_cfg, plan(variant_cfg, source)))
    return variants


def run_order(variants: list[Variant]) -> dict[int, list[Step]]:
    """Each seed's steps over all variants, in order, every output folder once."""
    merged: dict[int, list[Step]] = {}
    for variant in variants:
        for seed, steps in variant.steps_by_seed.items():
            seen = {(s.stage, s.out) for s in merged.setdefault(seed, [])}
            merged[seed] += [s for s in steps if (s.stage, s.out) not in seen]
    return merged


def describe_step(step: Step) -> dict:
    """The step as plain data (for the run's plan.json)."""
    return {"name": step.name, "stage": step.stage, "out": str(step.out), "config": to_dict(step.cfg)}
