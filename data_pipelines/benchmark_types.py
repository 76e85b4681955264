"""What a zero-shot benchmark is: a task (named as in CLIP_benchmark), its examples, and the two
helpers every CLIP_benchmark-style folder reader needs. Shared by the classification / retrieval
readers (`benchmarks`) and the captioning readers (`caption_benchmarks`), which import it and not
each other's modules.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"
SELECTION = "image_caption_selection"
CAPTIONING = "caption_accuracy"


@dataclass
class Example:
    """One evaluation item; which fields are set depends on the benchmark's task."""
    image: Image.Image
    key: str = ""
    label: int | None = None  # classification: index into classnames
    texts: list[str] | None = None  # retrieval: true captions; selection: candidates, true first
    truth: dict | None = None  # captioning: {"scene", "gold_caption"}


@dataclass
class Benchmark:
    """A named task over a re-iterable stream of examples."""
    name: str
    task: str
    source: Callable[[], Iterator[Example]]
    classnames: list[str] | None = None
    templates: list[str] | dict[str, list[str]] | None = None
    notes: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def examples(self) -> Iterator[Example]:
        """A fresh iterator over the examples."""
        return self.source()

    def class_texts(self, classname: str) -> list[str]:
        """The prompts of one class: its own list (class-specific prompts) or every template filled."""
        if isinstance(self.templates, dict):
            return list(self.templates[classname])
        return [t.format(c=classname) for t in (self.templates or ["{c}"])]


def read_lines(path: Path) -> list[str] | None:
    """Non-empty stripped lines of a text file, or None when it does not exist."""
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wds_shards(folder: str | os.PathLike, split: str = "test") -> list[str]:
    """The shard paths of a CLIP_benchmark split: ``{0..n-1}.tar`` per ``nshards.txt``, else every
    ``*.tar`` in numeric order."""
    split_dir = Path(folder) / split
    nshards = read_lines(split_dir / "nshards.txt")
    if nshards:
        return [str(split_dir / f"{i}.tar") for i in range(int(nshards[0]))]
    found = sorted(split_dir.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
    if not found:
        raise FileNotFoundError(f"no shards in {split_dir} (expected {split_dir}/0.tar ...)")
    return [str(p) for p in found]
