"""The CapFilt experiment as a plan of stage configs, built and validated before anything runs.

    world -> weak captioner + weak filter -> CapFilt over web (and its filter-only ablation)
          -> CLIP students and captioning students, equal budgets per kind: raw alt-text (web),
             filter-only (filtered), captioner + filter (bootstrapped), gold captions (ceiling)
          -> rounds 2..N: CapFilt again over the same web split with round r's bootstrapped
             students as the teachers (the CLIP student filters; the captioning student, when
             there is one, captions), as they are or (renew=finetune_on_clean, BLIP's loop)
             first fine-tuned on the clean split, and new students on the result
          -> eval of teachers and students -> audit of every bootstrap

Stage folders are keyed by config and each step names the steps it needs
(`mmw2s.experiment.planner`); `pipeline: llava` plans in `mmw2s.experiment.llava_plan`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmw2s.config import build, deep_merge, set_dotted, to_dict
from mmw2s.experiment.llava_plan import plan_llava_seed
from mmw2s.experiment.planner import (Planner, Step, Teachers, clip_filter, final, plan_filter_only,
                                     plan_teachers)
from mmw2s.experiment.settings import ExperimentSettings

CAPTIONER_PREFIX = "captioner_"  # `students:` names of captioning students: captioner_web, ...


def plan_seed(cfg: ExperimentSettings, source: str, seed: int) -> list[Step]:
    """The stages of one seed of the experiment, in the order they run."""
    if cfg.pipeline == "llava":
        return plan_llava_seed(cfg, source, seed)
    from mmw2s.audit import AuditConfig
    from mmw2s.evaluate.config import EvalConfig

    p = Planner(source, Path(cfg.out) / f"seed_{seed}")
    t = plan_teachers(p, cfg, seed)
    data = _student_data(p, cfg, t)
    students = {name: _plan_student(p, cfg, name, *data[_kind(name)], seed) for name in cfg.students}
    students.update(_plan_rounds(p, cfg, t, students, seed))
    models = [{"name": "weak_captioner", "kind": "captioner", "path": final(t.captioner)},
              {"name": "weak_filter", "kind": "dual_encoder", "path": final(t.filter)}]
    models += [{"name": _model_name(n), "kind": "captioner" if is_captioner(n) else "dual_encoder",
                "path": final(s)} for n, s in students.items()]
    scorer = _clip_score_model(cfg, t)
    p.add_eval(EvalConfig, deep_merge(cfg.eval, {"world": str(t.world.out), "models": models, **scorer}),
               [t.world, t.filter] if scorer else [t.world], [t.captioner, t.filter, *students.values()])
    for b in [s for s in p.steps if s.stage == "bootstrap"]:
        p.add_audit(AuditConfig, b)
    return p.steps


def _clip_score_model(cfg: ExperimentSettings, t: Teachers) -> dict:
    """CLIPScore's model for the world's captioning suite: the weak filter, a CLIP trained on the
    clean split, which no captioner being scored was trained by. Hessel et al.'s ViT-B/32 cannot be
    had offline and has never seen the world's 32 px shapes; an eval section that names its own
    `captioning.clip` or `clip_path` keeps it."""
    own = cfg.eval.get("captioning") or {}
    if "world:captioning" not in (cfg.eval.get("benchmarks") or []) or "clip" in own or own.get("clip_path"):
        return {}
    return {"captioning": {**own, "clip_path": final(t.filter)}}


def is_captioner(student: str) -> bool:
    """Whether a `students:` name (or a round's) is a captioning student."""
    return student.startswith(CAPTIONER_PREFIX)


def _kind(student: str) -> str:
    """The training data a student name asks for: web, filtered, bootstrapped or gold."""
    return student[len(CAPTIONER_PREFIX):] if is_captioner(student) else student


def _model_name(student: str) -> str:
    """Eval name: CLIP students are `student_web`...; captioning students keep their name."""
    return student if is_captioner(student) else f"student_{student}"


def _student_data(p: Planner, cfg: ExperimentSettings, t: Teachers) -> dict[str, tuple[str, dict, Step]]:
    """`{kind: (shards, text section, the step that wrote the shards)}` of the training data each
    kind of student reads."""
    boot_text = deep_merge({"source": "txt"}, cfg.bootstrapped_text)
    data = {"web": (str(t.world.out / "web"), {"source": "txt"}, t.world),
            "bootstrapped": (str(t.bootstrap.out / "shards"), boot_text, t.bootstrap),
            "gold": (str(t.world.out / "web"), {"source": "gold"}, t.world)}
    if any(_kind(s) == "filtered" for s in cfg.students):
        only = plan_filter_only(p, cfg, t)
        data["filtered"] = (str(only.out / "shards"), {"source": "txt"}, only)
    return data


def _plan_student(p: Planner, cfg: ExperimentSettings, name: str, shards: str, text: dict, source: Step,
                  seed: int, suffix: str = "") -> Step:
    """One student with its kind's shared section: `student` (CLIP) or `captioner_student` (over
    `weak_captioner`'s keys: the captioning students train as the weak one did, larger), trained on
    `shards`, which step `source` wrote."""
    from mmw2s.train.config import TrainConfig

    fixed = {"data": shards, "seed": seed, "text": text, "reads_truth": text.get("source") == "gold"}
    if is_captioner(name):
        section = deep_merge(deep_merge(cfg.weak_captioner, cfg.captioner_student), {"task": "captioner", **fixed})
        return p.add(name + suffix, "train", TrainConfig, section, "captioner_student", [source])
    return p.add(f"student_{name}{suffix}", "train", TrainConfig, deep_merge(cfg.student, {"task": "clip", **fixed}),
                 "student", [source])


def _plan_rounds(p: Planner, cfg: ExperimentSettings, t: Teachers, students: dict[str, Step],
                 seed: int) -> dict[str, Step]:
    """Rounds 2..N: CapFilt over the same web split with the last round's bootstrapped students
    as the teachers, then new students (from scratch, the same budgets) on its output.

    The filter is the last round's bootstrapped CLIP student; the captioner its bootstrapped
    captioning student when the experiment trains one, else the weak captioner throughout. With
    `renew=finetune_on_clean` each is first fine-tuned on world/clean (`_plan_finetunes`).
    """
    from mmw2s.bootstrap.config import BootstrapConfig

    out: dict[str, Step] = {}
    clip, captioner = students.get("bootstrapped"), students.get("captioner_bootstrapped")
    text = deep_merge({"source": "txt"}, cfg.bootstrapped_text)
    for r in range(2, cfg.rounds + 1):
        assert clip is not None  # validate() requires the bootstrapped CLIP student for rounds > 1
        filter_from, captioner_from = clip, captioner
        if cfg.renew == "finetune_on_clean":
            filter_from, captioner_from = _plan_finetunes(p, cfg, t, clip, captioner, seed, r)
        captioner_from = captioner_from or t.captioner
        teachers = {"filter": clip_filter(final(filter_from)), "captioner": {"name": final(captioner_from)}}
        boot = p.add(f"bootstrap_r{r}", "bootstrap", BootstrapConfig,
                     deep_merge(cfg.bootstrap, deep_merge(t.boot_common, teachers)), "bootstrap",
                     [t.world, filter_from, captioner_from])
        shards = str(boot.out / "shards")
        clip = out[f"bootstrapped_r{r}"] = _plan_student(p, cfg, "bootstrapped", shards, text, boot, seed, f"_r{r}")
        if captioner is not None:
            captioner = _plan_student(p, cfg, "captioner_bootstrapped", shards, text, boot, seed, f"_r{r}")
            out[f"captioner_bootstrapped_r{r}"] = captioner
    return out


def _plan_finetunes(p: Planner, cfg: ExperimentSettings, t: Teachers, clip: Step, captioner: Step | None,
                    seed: int, r: int) -> tuple[Step, Step | None]:
    """BLIP's renewal: round r-1's bootstrapped students fine-tuned on world/clean (the split the
    weak teachers learned from) become round r's filter (contrastive loss) and captioner (LM loss).

    Each starts from the student's trained `final/` and keeps its own section's settings (its
    architecture, batch size), with `renew_finetune`'s keys over them; the caption is the clean
    split's own (`text.source=txt`), and no tower prior is loaded again (the student holds it).
    """
    from mmw2s.train.config import TrainConfig

    clean = {"data": str(t.world.out / "clean"), "seed": seed, "text": {"source": "txt"}, "reads_truth": False}
    dual = {"arch": f"local-dir:{final(clip)}", "pretrained": None, "image_tower_weights": None}
    section = deep_merge(deep_merge(cfg.student, cfg.renew_finetune), {"task": "clip", "dual_encoder": dual, **clean})
    new_filter = p.add(f"filter_finetune_r{r}", "train", TrainConfig, section, "renew_finetune", [t.world, clip])
    if captioner is None:
        return new_filter, None
    section = deep_merge(deep_merge(deep_merge(cfg.weak_captioner, cfg.captioner_student), cfg.renew_finetune),
                         {"task": "captioner", "captioner": {"name": final(captioner)}, **clean})
    return new_filter, p.add(f"captioner_finetune_r{r}", "train", TrainConfig, section, "renew_finetune",
                             [t.world, captioner])


def plan(cfg: ExperimentSettings, source: str = "experiment") -> dict[int, list[Step]]:
    """Every seed's steps; raises `ConfigError` before any work if a section is wrong."""
    return {cfg.seed + i: plan_seed(cfg, source, cfg.seed + i) for i in range(cfg.seeds)}


@dataclass
class Variant:
    """One point of a sweep (the whole experiment when there is no sweep)."""

    value: Any
    cfg: ExperimentSettings
    steps_by_seed: dict[int, list[Step]]


def plan_variants(cfg: ExperimentSettings, source: str = "experiment") -> list[Variant]:
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
        variant_cfg = build(type(cfg), data, f"{source} (sweep {cfg.sweep.key}={value})")
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
