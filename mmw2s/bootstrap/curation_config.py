"""Config schema of the bootstrap's curation filters (kept light: `mmw2s --help` loads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class SafetyConfig:
    """A transformers image classifier (NSFW, watermark, ...) as a filter before captioning."""

    name: Optional[str] = field(default=None, metadata={
        "help": "hub id or folder of an AutoModelForImageClassification checkpoint; null: no safety filter"})
    revision: Optional[str] = field(default=None, metadata={"help": "hub revision of name"})
    unsafe_labels: list[str] = field(default_factory=list, metadata={
        "help": "labels of the checkpoint's id2label that count as unsafe (their probabilities add up)"})
    threshold: float = field(default=0.5, metadata={"help": "an image with unsafe score >= this is unsafe"})
    action: Literal["drop", "flag"] = field(default="drop", metadata={
        "help": "drop: skipped before captioning, counted under `unsafe`; flag: written, with "
                "mmw2s.curation.safety.unsafe=true (every sample records its score either way)"})


@dataclass
class CurationConfig:
    """Filters around CapFilt: the `mmw2s curate` index (duplicates, contamination) and safety."""

    index: Optional[str] = field(default=None, metadata={
        "help": "index.parquet written by `mmw2s curate` over the same input=; null: no dedup/decontam"})
    action: Literal["drop", "flag"] = field(default="drop", metadata={
        "help": "drop: duplicates and contaminated samples are skipped before captioning, counted under "
                "their reason; flag: written, with the reason in mmw2s.curation"})
    safety: SafetyConfig = field(default_factory=SafetyConfig, metadata={"help": "the safety classifier"})

    @property
    def active(self) -> bool:
        return self.index is not None or self.safety.name is not None

    def validate(self) -> None:
        """Raise ValueError for a safety filter without unsafe labels, or a threshold out of [0, 1]."""
        if self.safety.name is not None and not self.safety.unsafe_labels:
            raise ValueError("curation.safety.name is set: name its unsafe labels in curation.safety.unsafe_labels")
        if not 0.0 <= self.safety.threshold <= 1.0:
            raise ValueError(f"curation.safety.threshold must be in [0, 1], got {self.safety.threshold}")
