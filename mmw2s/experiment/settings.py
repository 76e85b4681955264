"""The settings of `mmw2s run`: the weak-to-strong experiment's keys, one section per stage.

Each section holds keys of that stage's own schema (`mmw2s.schema.section` names the stage or
schema, so `mmw2s run --help` and docs/reference/run.md list them); the run fills in the data and
output paths. The planners read these settings; `ExperimentConfig` (`config.py`) is what a run
loads: these settings, checked, every section against its stage's schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mmw2s.schema import section

STUDENT_DATA = ("web", "filtered", "bootstrapped", "gold")
# A student is named by its training data; `captioner_` names a captioning student (task=captioner,
# evaluated on the captions suite and by likelihood on the zero-shot suites) instead of a CLIP one.
CAPTIONER_STUDENTS = tuple(f"captioner_{d}" for d in STUDENT_DATA)
Student = Literal["web", "filtered", "bootstrapped", "gold", "captioner_web", "captioner_filtered",
                  "captioner_bootstrapped", "captioner_gold"]


@dataclass
class SweepConfig:
    """One experiment per value of one key; stages that do not depend on the key run once."""

    key: str = field(default="", metadata={
        "help": "dotted key of this experiment file to vary, e.g. world.noise.total or "
                "student.dual_encoder.arch; empty: no sweep"})
    values: list[Any] = field(default_factory=list, metadata={"help": "the values, in plot order"})
    label: str = field(default="", metadata={"help": "x-axis label of the sweep plot (default: the key)"})

    def validate(self) -> None:
        """Raise ValueError for a sweep without values or over a key no sweep can change."""
        if not self.key:
            return
        if not self.values:
            raise ValueError(f"sweep.values is empty: give the values of {self.key}")
        if self.key.split(".")[0] in ("out", "seed", "seeds", "sweep"):
            raise ValueError(f"sweep.key cannot be {self.key!r}: use seeds=N for repeats")


@dataclass
class ExperimentSettings:
    """world -> weak captioner + weak filter on `clean` -> bootstrap `web` -> students -> eval -> report."""

    out: str = field(default="runs/demo", metadata={
        "help": "run folder: one sub-folder per seed and stage (keyed by config), report.md"})
    seed: int = field(default=0, metadata={"help": "first seed; seed i of the run uses seed + i"})
    seeds: int = field(default=1, metadata={
        "help": "repeat the whole experiment over this many seeds; the report gives mean ± std"})
    jobs: int = field(default=0, metadata={
        "help": "stages run at once where none needs another's output, each with cores/jobs torch "
                "threads (0: 2 on a machine with 2 or more cores; 1: one after another, in this process)"})
    world: dict[str, Any] = section("world", help="keys of `mmw2s world` (out and seed are set by the run)")
    weak_captioner: dict[str, Any] = section(
        "train", help="keys of `mmw2s train` for the weak captioner, fine-tuned on world/clean")
    captioner_pretrain_steps: int = field(default=0, metadata={
        "help": "steps of captioner pre-training on raw web alt-text before fine-tuning on clean "
                "(BLIP pre-trains its captioner on web data); 0: clean only"})
    weak_filter: dict[str, Any] = section(
        "train", help="keys of `mmw2s train` for the weak filter (a CLIP trained on world/clean)")
    bootstrap: dict[str, Any] = section(
        "bootstrap", help="keys of `mmw2s bootstrap` (captioner, filter, input and out are set by the run)")
    student: dict[str, Any] = section("train", help="keys of `mmw2s train` shared by every student: equal budgets")
    students: list[Student] = field(default_factory=lambda: list(STUDENT_DATA), metadata={
        "help": "students to train: web (raw alt-text, baseline), filtered (filter-only ablation), "
                "bootstrapped (captioner + filter), gold (ceiling: the only reader of the truth) are "
                "CLIP students; captioner_web, captioner_filtered, captioner_bootstrapped and "
                "captioner_gold the captioning students trained on the same data"})
    captioner_student: dict[str, Any] = section("train", help=(
        "keys of `mmw2s train` shared by every captioning student, over weak_captioner's "
        "(e.g. captioner.name: ved-mit-small, steps): equal budgets"))
    bootstrapped_text: dict[str, Any] = section("mmw2s.train.config:TextConfig", help=(
        "keys of `mmw2s train`'s `text` section for the bootstrapped student (default: "
        "source txt, the chosen caption; source mix: BLIP's set, kept web and kept "
        "synthetic captions both, drawn at text.mix_synthetic_ratio)"))
    eval: dict[str, Any] = section("eval", help="keys of `mmw2s eval` (models, world and out are set by the run)")
    headline: list[str] = field(default_factory=list, metadata={
        "help": "benchmarks of the headline table and mean PGR (empty: every benchmark)"})
    pgr_min_gap: float = field(default=0.02, metadata={
        "help": "PGR is undefined on a benchmark unless the gold ceiling beats the best weak teacher by "
                "more than this (a fraction: 0.02 = 2 points); a smaller gap is evaluation noise"})
    rounds: int = field(default=1, metadata={
        "help": "iterative bootstrapping: round r+1 bootstraps web again with round r's bootstrapped "
                "CLIP student as the filter and, when captioner_bootstrapped is a student, round r's "
                "captioning student as the captioner (else the weak captioner stays)"})
    renew: Literal["students_as_is", "finetune_on_clean"] = field(default="students_as_is", metadata={
        "help": "rounds > 1: how round r's bootstrapped students become round r+1's teachers. "
                "students_as_is: as they are; finetune_on_clean: BLIP's loop, each first fine-tuned on "
                "world/clean (the CLIP student with its contrastive loss becomes the filter, the "
                "captioning student with its LM loss the captioner)"})
    renew_finetune: dict[str, Any] = section("train", help=(
        "renew=finetune_on_clean: keys of `mmw2s train` for both fine-tunes (e.g. steps, lr, "
        "warmup_steps), over the student's own section (student / captioner_student)"))
    sweep: SweepConfig = field(default_factory=SweepConfig, metadata={
        "help": "run the experiment once per value of one key and plot PGR against it"})
    pipeline: Literal["capfilt", "llava"] = field(default="capfilt", metadata={
        "help": "capfilt: CLIP students on bootstrapped captions; llava: LLaVA-style students "
                "instruction-tuned on data synthesized from them, evaluated on VQA "
                "(mmw2s/experiment/llava_plan.py)"})
    synthesize: dict[str, Any] = section(
        "synthesize", help="pipeline=llava: keys of `mmw2s synthesize` (input, out and seed are set by the run)")
    llava_student: dict[str, Any] = section("train", under=("stage1", "stage2"), help=(
        "pipeline=llava: `stage1` and `stage2`, each keys of `mmw2s train` for the LLaVA "
        "students (task, data, init_from and the vision tower are set by the run)"))
    llava_vision: dict[str, Any] = section("train", help=(
        "pipeline=llava: keys of `mmw2s train` for a CLIP trained on world/clean whose "
        "tower every student shares; empty: the weak filter's tower"))
