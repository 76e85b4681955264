"""The LLaVA-style experiment (`pipeline: llava`) as a plan of stage configs.

    world -> weak captioner (web pre-training + clean fine-tuning) and weak filter (CLIP on clean)
          -> CapFilt over web -> synthesize instructions (template backend) from each student's
             captions -> LLaVA students, stage 1 (projector on captions) then stage 2 (projector
             + LM on the instructions) -> VQA of the weak captioner and the students -> report

Students differ only in the captions their instructions were written from:
- `bootstrapped`: the CapFilt output (the weak teacher's labels);
- `gold`: the gold captions of the same web images (the ceiling). They come from a second world
  with the same seed and the noise model off: the world draws scenes, pixels and alt-text from
  separate streams, so its web split holds the same images with the gold caption as alt-text;
- `web` (raw alt-text) and `filtered` (filter-only CapFilt) as in the CapFilt experiment.

Every student shares one frozen vision tower: the CLIP trained on the clean split (the weak
filter, or a CLIP trained for the purpose when `llava_vision` is set). Its image features come from
data the weak teacher also had, so the students compare the instruction data and nothing else.
"""
from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from mmw2s.config import ConfigError
from mmw2s.experiment.planner import Planner, Step, merge, plan_teachers

if TYPE_CHECKING:  # annotations only: the config module imports the planners
    from mmw2s.experiment.config import ExperimentConfig

STAGE_SECTIONS = ("stage1", "stage2")
NOISE_OFF = {"mismatched": 0.0, "random_words": 0.0, "wrong_attribute": 0.0, "incomplete": 0.0,
             "boilerplate": 0.0}


def plan_llava_seed(cfg: ExperimentConfig, source: str, seed: int) -> list[Step]:
    """The stages of one seed of the LLaVA experiment, in the order they run."""
    from mmw2s.audit import AuditConfig

    _check_student_section(cfg.llava_student, source)
    p = Planner(source, Path(cfg.out) / f"seed_{seed}")
    t = plan_teachers(p, cfg, seed)
    world_dir, captioner, filter_model, boot_common, boot = (
        t.world_dir, t.captioner, t.filter_model, t.boot_common, t.bootstrap)
    captions = _caption_sources(p, cfg, seed, world_dir, boot, boot_common)
    tower = _plan_vision_tower(p, cfg, seed, world_dir, filter_model)
    students = {name: _plan_student(p, cfg, seed, name, captions[name], tower) for name in cfg.students}
    _plan_eval(p, cfg, world_dir, captioner, students)
    audits = [boot] + [s for s in p.steps if s.name == "filter_only"]
    for b in audits:
        p.steps.append(Step(f"audit_{b.name}", "audit", AuditConfig(run=b.cfg.out), Path(b.cfg.out)))
    return p.steps


def _check_student_section(section: dict, source: str) -> None:
    """`llava_student` holds `stage1` and `stage2` only (each a `mmw2s train` section)."""
    for key, value in section.items():
        if key not in STAGE_SECTIONS:
            raise ConfigError(f"{source}: unknown key 'llava_student.{key}' (expected "
                              f"{' or '.join(STAGE_SECTIONS)}, each with keys of `mmw2s train`)")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key 'llava_student.{key}' expects a mapping of "
                              f"`mmw2s train` keys, got {type(value).__name__}")


def _caption_sources(p: Planner, cfg: ExperimentConfig, seed: int, world_dir: Path, boot: Step,
                     boot_common: dict) -> dict[str, str]:
    """Shards whose captions each student's instructions are synthesized from."""
    from mmw2s.data_pipelines.world import WorldConfig
    from mmw2s.bootstrap.config import BootstrapConfig

    sources = {"web": str(world_dir / "web"), "bootstrapped": str(Path(boot.cfg.out) / "shards")}
    if "gold" in cfg.students:
        # Same seed, noise off: the same web images with their gold caption as alt-text.
        gold = merge(cfg.world, {"seed": seed, "noise": NOISE_OFF, "bias": {"rate": 0.0},
                                 "clean": {"samples": 0}, "test": {"samples": 0}})
        gold_world = p.add("world_gold", "world", WorldConfig, gold, "world")
        sources["gold"] = str(Path(gold_world.cfg.out) / "web")
    if "filtered" in cfg.students:
        only = p.add("filter_only", "bootstrap", BootstrapConfig,
                     merge(cfg.bootstrap, merge(boot_common, {"decoding": {"num_captions": 0}})), "bootstrap")
        sources["filtered"] = str(Path(only.cfg.out) / "shards")
    return sources


def _plan_vision_tower(p: Planner, cfg: ExperimentConfig, seed: int, world_dir: Path,
                       filter_model: str) -> str:
    """The `local-dir:` CLIP every student's vision tower comes from (trained on clean)."""
    from mmw2s.train.config import TrainConfig

    if not cfg.llava_vision:
        return filter_model
    step = p.add("vision_tower", "train", TrainConfig,
                 merge(cfg.llava_vision, {"task": "clip", "data": str(world_dir / "clean"), "seed": seed}),
                 "llava_vision")
    return str(Path(step.cfg.out) / "final")


def _plan_student(p: Planner, cfg: ExperimentConfig, seed: int, name: str, captions: str,
                  tower: str) -> Step:
    """Synthesize instructions from `captions`, then LLaVA stage 1 and stage 2 on them."""
    from mmw2s.synthesize.config import SynthesizeConfig
    from mmw2s.train.config import TrainConfig

    syn = p.add(f"synthesize_{name}", "synthesize", SynthesizeConfig,
                merge(cfg.synthesize, {"input": captions, "seed": seed}), "synthesize")
    spec = {"vision_source": "open_clip", "vision_tower": f"local-dir:{tower}", "vision_pretrained": None,
            "seed": seed}
    stages = cfg.llava_student
    one = p.add(f"student_{name}_stage1", "train", TrainConfig,
                merge(stages.get("stage1", {}), {"task": "llava", "llava_stage": 1, "data": syn.cfg.out,
                                                 "seed": seed, "llava": spec}), "llava_student.stage1")
    return p.add(f"student_{name}", "train", TrainConfig,
                 merge(stages.get("stage2", {}), {"task": "llava", "llava_stage": 2, "data": syn.cfg.out,
                                                  "seed": seed, "init_from": str(Path(one.cfg.out) / "final")}),
                 "llava_student.stage2")


def _plan_eval(p: Planner, cfg: ExperimentConfig, world_dir: Path, captioner: str,
               students: dict[str, Step]) -> Step:
    """VQA (and whatever else `eval.benchmarks` names) of the weak captioner and the students."""
    from mmw2s.evaluate.config import EvalConfig

    models = [{"name": "weak_captioner", "kind": "captioner", "path": captioner}]
    models += [{"name": f"student_{n}", "kind": "llava", "path": str(Path(s.cfg.out) / "final")}
               for n, s in students.items()]
    defaults = {"benchmarks": ["world:vqa"]}
    return p.add("eval", "eval", EvalConfig,
                 merge(merge(defaults, cfg.eval), {"world": str(world_dir), "models": models}), "eval")
