"""The config `mmw2s run` loads: the experiment's settings, checked before any work starts.

`ExperimentConfig` adds the checks to `ExperimentSettings` (`settings.py`, the keys): first the
settings among themselves, then every stage section against its stage's schema, by planning every
variant of the experiment (`plan.py`), so a typo in `student.lr` fails at once, naming the file
and the key. The planners read `ExperimentSettings` only, so imports run one way:
`config` -> `plan` -> `llava_plan` -> `planner` -> `settings`.
"""
from __future__ import annotations

from dataclasses import dataclass

from mmw2s.experiment.plan import plan_variants
from mmw2s.experiment.settings import CAPTIONER_STUDENTS, ExperimentSettings


@dataclass
class ExperimentConfig(ExperimentSettings):
    """The settings of one experiment, checked when it is built (`mmw2s.config.build` calls
    `validate`)."""

    def validate(self) -> None:
        """Raise ValueError for settings no run can use."""
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be >= 0 (0: automatic), got {self.jobs}")
        clip = [s for s in self.students if s not in CAPTIONER_STUDENTS]
        captioners = [s for s in self.students if s in CAPTIONER_STUDENTS]
        if not self.students:
            raise ValueError("students is empty: name at least the gold ceiling")
        if clip and "gold" not in clip:
            raise ValueError("students must include 'gold': it is the ceiling PGR is measured against")
        if captioners and "captioner_gold" not in captioners:
            raise ValueError("captioning students need 'captioner_gold': the ceiling their PGR is measured against")
        if len(set(self.students)) != len(self.students):
            raise ValueError(f"students are repeated: {self.students}")
        if self.captioner_pretrain_steps < 0:
            raise ValueError("captioner_pretrain_steps must be >= 0")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.renew == "finetune_on_clean" and self.rounds < 2:
            raise ValueError("renew=finetune_on_clean renews the teachers of rounds 2..N: set rounds >= 2")
        if self.rounds > 1 and "bootstrapped" not in self.students:
            raise ValueError("rounds > 1 needs the 'bootstrapped' student: it filters the next round")
        if captioners and self.pipeline == "llava":
            raise ValueError("captioning students belong to pipeline=capfilt; LLaVA students are "
                             "named web, filtered, bootstrapped and gold")
        if not 0.0 <= self.pgr_min_gap < 1.0:
            raise ValueError(f"pgr_min_gap must be a fraction in [0, 1), got {self.pgr_min_gap}")
        self._check_bootstrapped_text()
        # Check every stage section against its own schema now, before any work starts.
        plan_variants(self)

    def _check_bootstrapped_text(self) -> None:
        """Errors in `bootstrapped_text` name its own keys, not those of the student it lands in."""
        from mmw2s.config import build
        from mmw2s.train.config import TextConfig

        if self.bootstrapped_text and self.pipeline == "llava":
            raise ValueError("bootstrapped_text applies to the CLIP students of pipeline=capfilt; LLaVA "
                             "students learn from the instructions synthesized from the chosen captions")
        text = build(TextConfig, self.bootstrapped_text, "experiment", prefix="bootstrapped_text.")
        if text.source == "gold":
            raise ValueError("bootstrapped_text.source=gold would train the bootstrapped student on the "
                             "truth; the gold ceiling is the student named 'gold'")
