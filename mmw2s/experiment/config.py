"""Config schema of `mmw2s run`: the weak-to-strong experiment, one section per stage.

Each section holds keys of that stage's own schema (`mmw2s STAGE --help` lists them); the run fills
in the data and output paths, and every section is validated against its stage's schema before any
work starts, so a typo in `student.lr` fails at once, naming the file and the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

STUDENT_DATA = ("web", "filtered", "bootstrapped", "gold")
Student = Literal["web", "filtered", "bootstrapped", "gold"]


@dataclass
class ExperimentConfig:
    """world -> weak captioner + weak filter on `clean` -> bootstrap `web` -> students -> eval -> report."""

    out: str = field(default="runs/demo", metadata={
        "help": "run folder: one sub-folder per seed and stage (keyed by config), report.md"})
    seed: int = field(default=0, metadata={"help": "first seed; seed i of the run uses seed + i"})
    seeds: int = field(default=1, metadata={
        "help": "repeat the whole experiment over this many seeds; the report gives mean ± std"})
    world: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keys of `mmw2s world` (out and seed are set by the run)"})
    weak_captioner: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keys of `mmw2s train` for the weak captioner, fine-tuned on world/clean"})
    captioner_pretrain_steps: int = field(default=0, metadata={
        "help": "steps of captioner pre-training on raw web alt-text before fine-tuning on clean "
                "(BLIP pre-trains its captioner on web data); 0: clean only"})
    weak_filter: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keys of `mmw2s train` for the weak filter (a CLIP trained on world/clean)"})
    bootstrap: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keys of `mmw2s bootstrap` (captioner, filter, input and out are set by the run)"})
    student: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keys of `mmw2s train` shared by every student: equal budgets"})
    students: list[Student] = field(default_factory=lambda: list(STUDENT_DATA), metadata={
        "help": "students to train: web (raw alt-text, baseline), filtered (filter-only ablation), "
                "bootstrapped (captioner + filter), gold (ceiling: the only reader of the truth)"})
    eval: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keys of `mmw2s eval` (models, world and out are set by the run)"})
    headline: list[str] = field(default_factory=list, metadata={
        "help": "benchmarks of the headline table and mean PGR (empty: every benchmark)"})

    def validate(self) -> None:
        """Raise ValueError for settings no run can use."""
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if "gold" not in self.students:
            raise ValueError("students must include 'gold': it is the ceiling PGR is measured against")
        if len(set(self.students)) != len(self.students):
            raise ValueError(f"students are repeated: {self.students}")
        if self.captioner_pretrain_steps < 0:
            raise ValueError("captioner_pretrain_steps must be >= 0")
        # Check every stage section against its own schema now, before any work starts.
        from mmw2s.experiment.plan import plan

        plan(self)
