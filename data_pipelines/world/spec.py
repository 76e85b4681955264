"""Config schema of the synthetic web world: a plain dataclass tree.

mmw2s's typed-config loader reads YAML into exactly these classes, so fields keep to plain types
(int, float, str, bool, nested dataclasses) and every field carries a ``help`` string.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from mmw2s.data_pipelines.world.vocab import COLORS

# The key of a sample keeps 4 digits for its index inside a shard and 5 for the shard (img2dataset).
MAX_SAMPLES_PER_SHARD = 10_000
MAX_SHARDS = 100_000


@dataclass
class SplitConfig:
    """Size of one split."""

    samples: int = field(default=1000, metadata={"help": "number of image-text pairs in the split"})

    def validate(self, name: str = "split") -> None:
        """Raise ValueError when the size is negative."""
        if self.samples < 0:
            raise ValueError(f"{name}.samples must be >= 0, got {self.samples}")


@dataclass
class NoiseConfig:
    """Fractions of web alt-text per noise type; whatever is left over is the correct caption."""

    mismatched: float = field(default=0.15, metadata={"help": "fraction with another sample's caption"})
    random_words: float = field(default=0.05, metadata={"help": "fraction of random word salad"})
    wrong_attribute: float = field(
        default=0.15, metadata={"help": "fraction with one colour, shape, size or spatial word wrong"})
    incomplete: float = field(
        default=0.10, metadata={"help": "fraction with objects or attributes dropped"})
    boilerplate: float = field(
        default=0.10, metadata={"help": "fraction of boilerplate such as 'IMG_2031.jpg'"})
    total: Optional[float] = field(
        default=None, metadata={"help": "rescale the fractions above to sum to this noisy fraction "
                                        "(noise-rate sweeps keep the mix of types); null: as given"})

    def _noisy(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name != "total"}

    def fractions(self) -> dict[str, float]:
        """Noise type -> fraction, including ``correct`` (the remainder)."""
        noisy = self._noisy()
        if self.total is not None and sum(noisy.values()) > 0:
            scale = self.total / sum(noisy.values())
            noisy = {k: v * scale for k, v in noisy.items()}
        return {"correct": 1.0 - sum(noisy.values()), **noisy}

    def validate(self) -> None:
        """Raise ValueError unless every fraction is in [0, 1] and they sum to at most 1."""
        noisy = self._noisy()
        for name, value in noisy.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"noise.{name} must be a fraction in [0, 1], got {value}")
        if self.total is not None and not 0.0 <= self.total <= 1.0:
            raise ValueError(f"noise.total must be a fraction in [0, 1], got {self.total}")
        total = sum(noisy.values())
        if total > 1.0 + 1e-9 and self.total is None:
            parts = " + ".join(f"{k}={v}" for k, v in noisy.items())
            raise ValueError(
                f"noise fractions must sum to <= 1 (the rest is correct captions), got {parts} = {total:g}")


@dataclass
class BiasConfig:
    """A systematic substitution of the web annotators, e.g. purple is always called blue."""

    source: str = field(default="purple", metadata={"help": "true colour that gets misnamed"})
    target: str = field(default="blue", metadata={"help": "colour word used instead"})
    rate: float = field(
        default=0.0,
        metadata={"help": "probability that a web caption describing a source-coloured object "
                          "calls it the target colour"})
    clean: bool = field(
        default=False,
        metadata={"help": "also bias the clean split's captions at the same rate, so that teachers "
                          "trained on clean learn the bias (the truth's gold captions stay unbiased)"})

    def validate(self) -> None:
        """Raise ValueError for unknown or equal colours or a rate outside [0, 1]."""
        for name in ("source", "target"):
            value = getattr(self, name)
            if value not in COLORS:
                raise ValueError(f"bias.{name} must be one of {list(COLORS)}, got {value!r}")
        if self.source == self.target:
            raise ValueError(f"bias.source and bias.target must differ, both are {self.source!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"bias.rate must be a probability in [0, 1], got {self.rate}")


@dataclass
class WorldConfig:
    """Everything that determines the bytes of a generated world."""

    out: str = field(metadata={"help": "output folder; splits go to OUT/clean, OUT/web, OUT/test"})
    seed: int = field(default=0, metadata={"help": "seed of the whole world"})
    image_size: int = field(default=64, metadata={"help": "side of the square images in pixels"})
    max_objects: int = field(default=3, metadata={"help": "objects per scene: 1 to this (at most 3)"})
    workers: int = field(default=2, metadata={"help": "processes that render shards in parallel"})
    samples_per_shard: int = field(default=1000, metadata={"help": "samples per tar shard"})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of the images (1-100)"})
    clean: SplitConfig = field(
        default_factory=lambda: SplitConfig(samples=1000),
        metadata={"help": "small human-annotated-like split with gold captions"})
    web: SplitConfig = field(
        default_factory=lambda: SplitConfig(samples=10000),
        metadata={"help": "web split with noisy alt-text"})
    test: SplitConfig = field(
        default_factory=lambda: SplitConfig(samples=1000),
        metadata={"help": "held-out split with gold captions for benchmarks"})
    noise: NoiseConfig = field(
        default_factory=NoiseConfig, metadata={"help": "noise model of the web alt-text"})
    bias: BiasConfig = field(
        default_factory=BiasConfig, metadata={"help": "systematic colour bias of the web alt-text"})

    def splits(self) -> dict[str, SplitConfig]:
        """Split name -> its config, in generation order."""
        return {"clean": self.clean, "web": self.web, "test": self.test}

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot produce a world."""
        if not self.out:
            raise ValueError("out must name an output folder")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 so small objects stay visible, got {self.image_size}")
        if not 1 <= self.max_objects <= 3:
            raise ValueError(f"max_objects must be 1, 2 or 3, got {self.max_objects}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 1 <= self.samples_per_shard <= MAX_SAMPLES_PER_SHARD:
            raise ValueError(
                f"samples_per_shard must be in [1, {MAX_SAMPLES_PER_SHARD}] (4-digit key suffix), "
                f"got {self.samples_per_shard}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        for name, split in self.splits().items():
            split.validate(name)
            if split.samples > MAX_SHARDS * self.samples_per_shard:
                raise ValueError(f"{name}.samples needs more than {MAX_SHARDS} shards (5-digit names)")
        self.noise.validate()
        self.bias.validate()
