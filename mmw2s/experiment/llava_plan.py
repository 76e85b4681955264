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

from mmw2s.config import ConfigError, deep_merge
from mmw2s.experiment.planner import Planner, Step, Teachers, final, plan_filter_only, plan_teachers
from mmw2s.experiment.settings import ExperimentSettings

STAGE_SECTIONS = ("stage1", "stage2")
NOISE_OFF = {"mismatched": 0.0, "random_words": 0.0, "wrong_attribute": 0.0, "incomplete": 0.0,
             "boilerplate": 0.0}


def plan_llava_seed(cfg: ExperimentSettings, source: str, seed: int) -> list[Step]:
    """The stages of one seed of the LLaVA experiment, in the order they run."""
    from mmw2s.audit import AuditConfig

    _check_student_section(cfg.llava_student, source)
    p = Planner(source, Path(cfg.out) / f"seed_{seed}")
    t = plan_teachers(p, cfg, seed)
    captions = _caption_sources(p, cfg, seed, t)
    tower = _plan_vision_tower(p, cfg, seed, t)
    students = {name: _plan_student(p, cfg, seed, name, *captions[name], tower) for name in cfg.students}
    _plan_eval(p, cfg, t, students)
    audits = [t.bootstrap] + [s for s in p.steps if s.name == "filter_only"]
    for b in audits:
        p.add_audit(AuditConfig, b)
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


def _caption_sources(p: Planner, cfg: ExperimentSettings, seed: int, t: Teachers) -> dict[str, tuple[str, Step]]:
    """`{student: (shards, the step that wrote them)}`: the shards whose captions each student's
    instructions are synthesized from."""
    from mmw2s.data_pipelines.world import WorldConfig

    sources = {"web": (str(t.world.out / "web"), t.world),
               "bootstrapped": (str(t.bootstrap.out / "shards"), t.bootstrap)}
    if "gold" in cfg.students:
        # Same seed, noise off: the same web images with their gold caption as alt-text.
        gold = deep_merge(cfg.world, {"seed": seed, "noise": NOISE_OFF, "bias": {"rate": 0.0},
                                      "clean": {"samples": 0}, "test": {"samples": 0}})
        gold_world = p.add("world_gold", "world", WorldConfig, gold, "world")
        sources["gold"] = (str(gold_world.out / "web"), gold_world)
    if "filtered" in cfg.students:
        only = plan_filter_only(p, cfg, t)
        sources["filtered"] = (str(only.out / "shards"), only)
    return sources


def _plan_vision_tower(p: Planner, cfg: ExperimentSettings, seed: int, t: Teachers) -> Step:
    """The CLIP every student's vision tower comes from (trained on clean): the weak filter, or one
    trained for the purpose (`llava_vision`)."""
    from mmw2s.train.config import TrainConfig

    if not cfg.llava_vision:
        return t.filter
    return p.add("vision_tower", "train", TrainConfig,
                 deep_merge(cfg.llava_vision, {"task": "clip", "data": str(t.world.out / "clean"), "seed": seed}),
                 "llava_vision", [t.world])


def _plan_student(p: Planner, cfg: ExperimentSettings, seed: int, name: str, captions: str, source: Step,
                  tower: Step) -> Step:
    """Synthesize instructions from `captions` (which step `source` wrote), then LLaVA stage 1 and
    stage 2 on them, on `tower`'s vision tower."""
    from mmw2s.synthesize.config import SynthesizeConfig
    from mmw2s.train.config import TrainConfig

    syn = p.add(f"synthesize_{name}", "synthesize", SynthesizeConfig,
                deep_merge(cfg.synthesize, {"input": captions, "seed": seed}), "synthesize", [source])
    spec = {"vision_source": "open_clip", "vision_tower": f"local-dir:{final(tower)}", "vision_pretrained": None,
            "seed": seed}
    stages = cfg.llava_student
    one = p.add(f"student_{name}_stage1", "train", TrainConfig,
                deep_merge(stages.get("stage1", {}), {"task": "llava", "llava_stage": 1, "data": syn.cfg.out,
                                                      "seed": seed, "llava": spec}),
                "llava_student.stage1", [syn, tower])
    return p.add(f"student_{name}", "train", TrainConfig,
                 deep_merge(stages.get("stage2", {}), {"task": "llava", "llava_stage": 2, "data": syn.cfg.out,
                                                       "seed": seed, "init_from": final(one)}),
                 "llava_student.stage2", [syn, one])


def _plan_eval(p: Planner, cfg: ExperimentSettings, t: Teachers, students: dict[str, Step]) -> Step:
    """VQA (and whatever else `eval.benchmarks` names) of the weak captioner and the students."""
    from mmw2s.evaluate.config import EvalConfig

    models = [{"name": "weak_captioner", "kind": "captioner", "path": final(t.captioner)}]
    models += [{"name": f"student_{n}", "kind": "llava", "path": final(s)} for n, s in students.items()]
    defaults = {"benchmarks": ["world:vqa"]}
    section = deep_merge(deep_merge(defaults, cfg.eval), {"world": str(t.world.out), "models": models})
    return p.add_eval(EvalConfig, section, [t.world], [t.captioner, *students.values()])
