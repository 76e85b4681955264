"""Config schema of `mmw2s curate` (kept light: no torch import, `mmw2s --help` loads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class DedupConfig:
    """Duplicates within and across the input shards: the first in shard order is kept."""

    exact: bool = field(default=True, metadata={"help": "same SHA-256 of the image bytes -> duplicate_exact"})
    near: bool = field(default=True, metadata={"help": "pHash within max_distance bits -> duplicate_near"})
    max_distance: int = field(default=4, metadata={
        "help": "bits (of 64) two pHashes may differ by and be near duplicates; 0: identical hashes only"})


@dataclass
class DecontamConfig:
    """Training samples that copy an evaluation image (or caption) -> contaminated:BENCHMARK."""

    benchmarks: list[str] = field(default_factory=list, metadata={
        "help": "benchmark specs as `mmw2s eval` takes them: world:SUITE (needs world=), "
                "wds:/clip_benchmark/folder (e.g. what `mmw2s export` wrote), imagefolder:/folder"})
    world: Optional[str] = field(default=None, metadata={"help": "world folder for world:SUITE benchmarks"})
    max_distance: int = field(default=6, metadata={
        "help": "bits (of 64) an input image's pHash may differ from a benchmark image's and match it"})
    captions: bool = field(default=True, metadata={
        "help": "also match an input caption equal to a benchmark caption (case and spacing aside)"})
    min_caption_chars: int = field(default=30, metadata={
        "help": "shorter captions never match by text: short captions repeat by chance "
                "('a dog'), which is not a copy of the benchmark"})


@dataclass
class CurateConfig:
    """`mmw2s curate`: one pass over the input shards -> out/index.parquet + out/report.json."""

    input: str = field(metadata={"help": "input shards: brace pattern, glob, folder, pipe: or fsspec URL "
                                         "(the same spec the bootstrap's input= will get)"})
    out: str = field(metadata={"help": "folder: index.parquet, report.json, contamination.json, config.yaml"})
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"help": "deduplication"})
    decontam: DecontamConfig = field(default_factory=DecontamConfig, metadata={"help": "decontamination"})
    workers: int = field(default=2, metadata={"help": "data-loader processes reading and hashing shards (0: "
                                                      "in-process); the index is the same for any number"})
    max_pixels: int = field(default=4096 * 4096, metadata={"help": "larger images are skipped unread (as the "
                                                                   "bootstrap skips them)"})
    listed_pairs: int = field(default=10000, metadata={"help": "matched pairs listed in contamination.json "
                                                               "(all are counted)"})

    def validate(self) -> None:
        """Raise ValueError for thresholds out of range and world suites without a world."""
        for name, bits in (("dedup.max_distance", self.dedup.max_distance),
                           ("decontam.max_distance", self.decontam.max_distance)):
            if not 0 <= bits < 32:
                raise ValueError(f"{name} must be in 0..31 bits, got {bits}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if any(b.startswith("world:") for b in self.decontam.benchmarks) and not self.decontam.world:
            raise ValueError("decontam.benchmarks names world:SUITE benchmarks: set decontam.world=WORLD_DIR")
