"""The evaluation side of decontamination: each chosen benchmark's images as pHashes, and its
captions, to look every training sample up in.

A benchmark is read once, through `data_pipelines.benchmarks.load_benchmark` (the very loader
`mmw2s eval` scores), so what is checked is what is evaluated: world suites, CLIP_benchmark
webdataset folders (`mmw2s export` writes the world's test split as those) and ImageFolders.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from mmw2s.data_pipelines.benchmarks import load_benchmark
from mmw2s.data_pipelines.benchmark_types import CAPTIONING, RETRIEVAL, SELECTION, Example
from mmw2s.data_pipelines.image_hash import HashIndex, phash

from mmw2s.curate.config import DecontamConfig

log = logging.getLogger(__name__)


def normalize_caption(text: str) -> str:
    """A caption compared by its words: lower case, spacing and end punctuation aside."""
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip(".!?").strip()


def true_captions(example: Example, task: str) -> list[str]:
    """The captions a benchmark example holds as true (a selection's wrong candidates are not)."""
    if task == SELECTION:
        return list(example.texts[:1]) if example.texts else []
    if task == CAPTIONING and example.truth:
        return [example.truth["gold_caption"]]
    if task in (RETRIEVAL, CAPTIONING):
        return list(example.texts or [])
    return []  # classification: a class name is not a caption


@dataclass
class Reference:
    """One benchmark's images (pHash index, in example order) and captions."""

    name: str
    spec: str  # as configured (the name of `wds:/a/b` is `wds:b`)
    keys: list[str] = field(default_factory=list)  # example key of each indexed image
    images: HashIndex | None = None
    captions: dict[str, str] = field(default_factory=dict)  # normalized caption -> first example key
    unreadable: int = 0  # examples whose image could not be hashed


@dataclass(frozen=True)
class Contamination:
    """A training sample matched to a benchmark example."""

    benchmark: str
    example: str  # the benchmark example's key
    match: str  # "image" or "caption"
    distance: int | None = None  # image matches: pHash bits apart


def load_references(cfg: DecontamConfig) -> list[Reference]:
    """Every benchmark of `cfg` hashed, in config order."""
    refs = []
    for spec in cfg.benchmarks:
        bench = load_benchmark(spec, cfg.world)
        ref = Reference(bench.name, spec, images=HashIndex(cfg.max_distance))
        for n, example in enumerate(bench.examples()):
            key = example.key or f"#{n}"
            try:
                ref.images.add(phash(example.image))
                ref.keys.append(key)
            except Exception as exn:  # noqa: BLE001 - an unreadable benchmark image is counted, not fatal
                ref.unreadable += 1
                log.warning("%s: example %s: image not hashed (%s: %s)", bench.name, key, type(exn).__name__, exn)
            if cfg.captions:
                for text in true_captions(example, bench.task):
                    norm = normalize_caption(text)
                    if len(norm) >= cfg.min_caption_chars:
                        ref.captions.setdefault(norm, key)
        log.info("decontamination reference %s: %d images, %d captions", bench.name, len(ref.keys), len(ref.captions))
        refs.append(ref)
    return refs


def find_contamination(refs: list[Reference], image_hash: int, caption: str | None) -> Contamination | None:
    """The first benchmark (config order) this sample copies: by image first, then by caption."""
    norm = normalize_caption(caption) if caption else ""
    for ref in refs:
        match = ref.images.nearest(image_hash) if ref.images is not None else None
        if match is not None:
            return Contamination(ref.name, ref.keys[match.index], "image", match.distance)
        if norm in ref.captions:
            return Contamination(ref.name, ref.captions[norm], "caption")
    return None
