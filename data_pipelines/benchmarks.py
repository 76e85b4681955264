"""Zero-shot benchmark data: suites built from the world's test split, CLIP_benchmark-style webdataset
folders and ImageFolders. Data only: no model is imported here.

A `Benchmark` is a task (named as in CLIP_benchmark), its class names and prompt templates for
classification, and a re-iterable stream of `Example`s (an image plus its label, its captions, its
candidate captions or its scene truth).

World suites (``world:NAME``), read from ``WORLD/test`` (the one place allowed to read ``truth``):

- ``color``, ``shape``, ``size``: images whose objects all share that attribute, so exactly one
  class is correct (every one-object scene, and the multi-object scenes that agree). Templates are
  the gold-caption noun phrase with the other attributes enumerated: ``"a {size} {c} {shape}"`` ...
- ``position``: one-object scenes (the only captions that state a position); templates
  ``"a {size} {color} {shape} in the {c}"``.
- ``count``: every scene, classes one/two/three objects; each class is described by gold captions
  of fixed random scenes with that many objects (class-specific prompts, as CLIP_benchmark's CuPL
  support allows), because the caption grammar has no number words.
- ``relation``: scenes of 2+ objects; an image-caption selection between the caption of its first
  two objects with their stated relation and the same caption with the inverse relation (CLIP_benchmark
  ``image_caption_selection``, the true caption first). Pairs with identical descriptions are left out.
- ``retrieval``: every scene with all its true captions: the gold caption of every ordering of its
  objects (1, 2 or 6 paraphrases from the world's own grammar).
- ``captions``: every scene with its gold caption and scene truth, for caption accuracy.
"""
from __future__ import annotations

import io
import itertools
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from mmw2s.data_pipelines.benchmark_types import (CAPTIONING, CLASSIFICATION, RETRIEVAL, SELECTION, Benchmark, Example,
                                                  read_lines, wds_shards)
from mmw2s.data_pipelines.caption_benchmarks import load_caption_benchmark, world_captioning
from mmw2s.data_pipelines.loader import iter_samples
from mmw2s.data_pipelines.sample_decode import IMAGE_EXTS, ReadLimits, Skip, decode_sample
from mmw2s.data_pipelines.writer import ShardWriter
from mmw2s.data_pipelines.tar_reader import iter_tar_groups
from mmw2s.data_pipelines.world import COLORS, POSITIONS, SHAPES, SIZES, gold_caption, sample_scene
from mmw2s.data_pipelines.world.scene import gold_plan, paraphrases, render_plan
from mmw2s.data_pipelines.world.vocab import INVERSE_RELATION

log = logging.getLogger(__name__)

WORLD_SUITES = ("color", "shape", "size", "position", "count", "relation", "retrieval", "captions", "captioning")
COUNT_CLASSES = ("one object", "two objects", "three objects")
COUNT_PROMPTS_PER_CLASS = 16
COUNT_PROMPT_SEED = 1234  # fixed, so the count classifier is the same text for every model
DEFAULT_TEMPLATES = ("a photo of a {c}.",)  # CLIP's plain prompt, when a folder ships none
_IMAGE_FILE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# --------------------------------------------------------------------------------------------
# Entry point


def load_benchmark(spec: str, world: str | None = None) -> Benchmark:
    """Build a benchmark from its spec: ``world:color`` (needs ``world``), ``wds:/folder`` or
    ``imagefolder:/folder``. Raises ValueError for an unknown spec."""
    kind, _, arg = spec.partition(":")
    if kind == "world":
        if not world:
            raise ValueError(f"benchmark {spec!r} needs the world folder (world=DIR)")
        return world_suite(world, arg)
    if kind == "wds":
        return read_wds_benchmark(arg)
    if kind == "imagefolder":
        return read_imagefolder(arg)
    if kind in ("coco", "wds-captions"):
        return load_caption_benchmark(spec)
    raise ValueError(f"unknown benchmark {spec!r}: use world:<{'|'.join(WORLD_SUITES)}>, "
                     "wds:/path/to/clip_benchmark_folder, imagefolder:/path, coco:ANNOTATIONS.json[:IMAGE_DIR] "
                     "or wds-captions:/path/to/clip_benchmark_folder")


# --------------------------------------------------------------------------------------------
# World suites


def load_world_test(world: str | os.PathLike) -> list[dict]:
    """Every sample of ``WORLD/test`` as ``{"key", "image", "scene", "gold_caption"}``, in order."""
    items = []
    for sample in iter_samples(str(Path(world) / "test")):
        truth = sample["json"].get("truth")
        if not truth:
            raise ValueError(f"{sample['__url__']}: sample {sample['__key__']} has no truth block; "
                             "world suites need the world's test split")
        items.append({"key": sample["__key__"], "image": sample["image"], "scene": truth["scene"],
                      "gold_caption": truth["gold_caption"]})
    return items


def world_suite(world: str | os.PathLike, name: str, items: list[dict] | None = None) -> Benchmark:
    """The world suite ``name`` (one of WORLD_SUITES) built from the test split of ``world``."""
    builders = {"color": _attribute_suite, "shape": _attribute_suite, "size": _attribute_suite,
                "position": _position_suite, "count": _count_suite, "relation": _relation_suite,
                "retrieval": _retrieval_suite, "captions": _captions_suite, "captioning": _captioning_suite}
    if name not in builders:
        raise ValueError(f"unknown world suite {name!r}; choose from {', '.join(WORLD_SUITES)}")
    items = load_world_test(world) if items is None else items
    bench = builders[name](name, items)
    bench.info["images"] = len(_materialise(bench))
    if bench.info["images"] < 1000:
        log.warning("world:%s has %d images; differences of a few points are noise below ~1000 "
                    "(generate a larger test split)", name, bench.info["images"])
    return bench


def _materialise(bench: Benchmark) -> list[Example]:
    return list(bench.examples())


def _fixed(examples: list[Example]) -> Callable[[], Iterator[Example]]:
    return lambda: iter(examples)


_ATTRIBUTE_VOCAB = {"color": COLORS, "shape": SHAPES, "size": SIZES}


def attribute_templates(attribute: str) -> list[str]:
    """Gold-caption noun phrases with ``{c}`` in the slot of ``attribute``, others enumerated."""
    slots = {"size": SIZES, "color": COLORS, "shape": SHAPES}
    others = [a for a in ("size", "color", "shape") if a != attribute]
    templates = []
    for values in itertools.product(*(slots[a] for a in others)):
        words = dict(zip(others, values), **{attribute: "{c}"})
        phrase = f"{words['size']} {words['color']} {words['shape']}"
        templates.append(f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}")
    return templates


def _attribute_suite(name: str, items: list[dict]) -> Benchmark:
    classes = list(_ATTRIBUTE_VOCAB[name])
    examples = []
    for item in items:
        values = {o[name] for o in item["scene"]["objects"]}
        if len(values) == 1:  # all objects agree: exactly one class is correct
            examples.append(Example(item["image"], item["key"], label=classes.index(values.pop())))
    return Benchmark(f"world:{name}", CLASSIFICATION, _fixed(examples), classes,
                     attribute_templates(name),
                     notes=f"images whose objects all have the same {name}")


def _position_suite(name: str, items: list[dict]) -> Benchmark:
    classes = list(POSITIONS)
    examples = [Example(it["image"], it["key"], label=classes.index(it["scene"]["objects"][0]["position"]))
                for it in items if len(it["scene"]["objects"]) == 1]
    templates = [t + " in the {c}" for t in _noun_phrases()]
    return Benchmark("world:position", CLASSIFICATION, _fixed(examples), classes, templates,
                     notes="one-object scenes (only their captions state a position)")


def _noun_phrases() -> list[str]:
    phrases = [f"{s} {c} {h}" for s in SIZES for c in COLORS for h in SHAPES]
    return [f"{'an' if p[0] in 'aeiou' else 'a'} {p}" for p in phrases]


def count_prompts(per_class: int = COUNT_PROMPTS_PER_CLASS, seed: int = COUNT_PROMPT_SEED) -> dict[str, list[str]]:
    """Class-specific prompts of the count suite: gold captions of random scenes with 1, 2, 3 objects."""
    rng = np.random.default_rng(seed)
    prompts: dict[str, list[str]] = {c: [] for c in COUNT_CLASSES}
    while any(len(p) < per_class for p in prompts.values()):
        scene = sample_scene(rng, 64, 3)
        texts = prompts[COUNT_CLASSES[len(scene["objects"]) - 1]]
        if len(texts) < per_class:
            texts.append(gold_caption(scene))
    return prompts


def _count_suite(name: str, items: list[dict]) -> Benchmark:
    examples = [Example(it["image"], it["key"], label=len(it["scene"]["objects"]) - 1) for it in items]
    return Benchmark("world:count", CLASSIFICATION, _fixed(examples), list(COUNT_CLASSES),
                     count_prompts(), notes="all scenes; classes described by example captions")


def relation_candidates(scene: dict) -> list[str] | None:
    """[true caption of objects 0 and 1, the same with the inverse relation], or None when the
    scene has one object or the two objects read the same (the swap would still be true)."""
    objects = scene["objects"][:2]
    if len(objects) < 2:
        return None
    describe = [(o["size"], o["color"], o["shape"]) for o in objects]
    if describe[0] == describe[1]:
        return None
    plan = gold_plan({"objects": objects})
    true = render_plan(plan)
    plan["relations"][0][1] = INVERSE_RELATION[plan["relations"][0][1]]
    return [true, render_plan(plan)]


def _relation_suite(name: str, items: list[dict]) -> Benchmark:
    examples = []
    for it in items:
        texts = relation_candidates(it["scene"])
        if texts is not None:
            examples.append(Example(it["image"], it["key"], texts=texts))
    return Benchmark("world:relation", SELECTION, _fixed(examples),
                     notes="true relation of the first two objects vs the inverse relation (chance 50%)")


def _retrieval_suite(name: str, items: list[dict]) -> Benchmark:
    examples = [Example(it["image"], it["key"], texts=paraphrases(it["scene"])) for it in items]
    return Benchmark("world:retrieval", RETRIEVAL, _fixed(examples),
                     notes="gold captions of every object ordering as the positives of an image")


def _captioning_suite(name: str, items: list[dict]) -> Benchmark:
    return world_captioning(items)


def _captions_suite(name: str, items: list[dict]) -> Benchmark:
    examples = [Example(it["image"], it["key"], texts=[it["gold_caption"]],
                        truth={"scene": it["scene"], "gold_caption": it["gold_caption"]}) for it in items]
    return Benchmark("world:captions", CAPTIONING, _fixed(examples),
                     notes="greedy captions compared with the gold caption and the scene")


# --------------------------------------------------------------------------------------------
# CLIP_benchmark webdataset folders


def write_wds_benchmark(bench: Benchmark, folder: str | os.PathLike, split: str = "test",
                        shard_size: int = 10000) -> Path:
    """Write ``bench`` as a CLIP_benchmark webdataset folder, what `clip_benchmark_export_wds` writes.

    Classification: ``SPLIT/N.tar`` with ``png`` + ``cls`` (class index), ``classnames.txt``,
    ``zeroshot_classification_templates.txt``. Retrieval: ``png`` + ``txt`` (an image's captions, one
    per line, a newline inside a caption written as ``\\n``) and ``dataset_type.txt`` = retrieval.
    Images as PNG, so the pixels are exactly the benchmark's. ``SPLIT/nshards.txt`` is written last:
    a folder that has it is complete, and is returned as it is.
    """
    if bench.task not in (CLASSIFICATION, RETRIEVAL):
        raise ValueError(f"{bench.name}: CLIP_benchmark folders hold classification or retrieval, not {bench.task}")
    root = Path(folder)
    if (root / split / "nshards.txt").exists():
        return root
    (root / split).mkdir(parents=True, exist_ok=True)
    if bench.task == CLASSIFICATION:
        (root / "classnames.txt").write_text("\n".join(bench.classnames) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(bench.templates) + "\n")
    else:
        (root / "dataset_type.txt").write_text("retrieval\n")
    shards = index = 0
    for shards, chunk in enumerate(_chunked(bench.examples(), shard_size), start=1):
        with ShardWriter(root / split / f"{shards - 1}.tar") as writer:
            for ex in chunk:
                writer.write(_wds_member(f"s{index:07d}", ex, bench.task))
                index += 1
            writer.close()
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    return root


def _chunked(examples: Iterator[Example], n: int) -> Iterator[list[Example]]:
    it = iter(examples)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _wds_member(key: str, ex: Example, task: str) -> dict:
    png = io.BytesIO()
    ex.image.save(png, format="PNG")
    sample = {"__key__": key, "png": png.getvalue()}
    if task == CLASSIFICATION:
        sample["cls"] = str(ex.label)
    else:
        sample["txt"] = "\n".join(t.replace("\n", r"\n") for t in ex.texts or [])
    return sample


def read_wds_benchmark(folder: str | os.PathLike, split: str = "test") -> Benchmark:
    """A CLIP_benchmark webdataset export: ``classnames.txt``, ``zeroshot_classification_templates.txt``,
    optional ``dataset_type.txt`` (``retrieval``) and ``SPLIT/*.tar`` with an image plus ``cls``
    (class index) or ``txt`` (captions, one per line)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {root}")
    shards = wds_shards(root, split)
    kind = (read_lines(root / "dataset_type.txt") or ["classification"])[0].lower()
    name = f"wds:{root.name}"
    if kind == "retrieval":
        return Benchmark(name, RETRIEVAL, lambda: _wds_examples(shards, "txt"),
                         info={"shards": len(shards), "wds_shards": shards})
    if kind != "classification":
        raise ValueError(f"{root}/dataset_type.txt says {kind!r}; only classification and retrieval "
                         "are supported")
    classnames = read_lines(root / "classnames.txt")
    if not classnames:
        raise FileNotFoundError(f"{root}/classnames.txt is missing or empty")
    templates = read_lines(root / "zeroshot_classification_templates.txt")
    if not templates:
        log.warning("%s has no zeroshot_classification_templates.txt; using %s", root, DEFAULT_TEMPLATES)
        templates = list(DEFAULT_TEMPLATES)
    return Benchmark(name, CLASSIFICATION, lambda: _wds_examples(shards, "cls"), classnames, templates,
                     info={"shards": len(shards), "wds_shards": shards})


def _wds_examples(shards: list[str], target: str) -> Iterator[Example]:
    limits = ReadLimits(require_caption=False)
    for url in shards:
        for raw in iter_tar_groups(url, frozenset(IMAGE_EXTS + ("cls", "txt"))):
            sample = decode_sample(raw, limits)
            if not isinstance(sample, Skip) and target in raw:
                text = raw[target].decode("utf-8", errors="replace")
                if target == "cls":
                    yield Example(sample["image"], raw["__key__"], label=parse_label(text, url, raw["__key__"]))
                else:
                    yield Example(sample["image"], raw["__key__"], texts=[t for t in text.splitlines() if t.strip()])
            else:
                reason = sample.reason if isinstance(sample, Skip) else f"no_{target}"
                log.warning("%s: skipped sample %s (%s)", url, raw["__key__"], reason)


def parse_label(text: str, url: str, key: str) -> int:
    """The class index of a ``.cls`` member; a `ValueError` naming the shard and sample otherwise."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{url}: sample {key}: .cls holds {text.strip()[:40]!r}, not a class index") from None


def check_benchmark(bench: Benchmark) -> None:
    """Read a CLIP_benchmark folder's targets (not its images) once, so that a bad folder fails
    before any model is evaluated: a truncated tar, a `.cls` that is no integer, or a class index
    without a class name raise a `ValueError` naming the file. Other benchmarks are checked when
    they are built."""
    shards = bench.info.get("wds_shards") if bench.info else None
    if not shards:
        return
    target = "cls" if bench.task == CLASSIFICATION else "txt"
    for url in shards:
        for raw in iter_tar_groups(url, frozenset((target,))):
            if target == "cls" and "cls" in raw:
                label = parse_label(raw["cls"].decode("utf-8", errors="replace"), url, raw["__key__"])
                if not 0 <= label < len(bench.classnames):
                    raise ValueError(f"{url}: sample {raw['__key__']} has class {label}, but classnames.txt "
                                     f"names {len(bench.classnames)} classes")


# --------------------------------------------------------------------------------------------
# ImageFolder


def read_imagefolder(folder: str | os.PathLike) -> Benchmark:
    """torchvision's ImageFolder layout: ``ROOT/<class>/<image>``, classes in sorted folder order.

    Class names are the folder names with ``_`` as spaces, unless ``ROOT/classnames.txt`` gives one
    name per sorted folder; templates come from ``ROOT/zeroshot_classification_templates.txt`` if
    present."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    files = [(path, label) for label, d in enumerate(folders) for path in sorted(d.rglob("*"))
             if path.suffix.lower() in _IMAGE_FILE_EXTS]
    if not files:
        raise FileNotFoundError(f"no images under class folders of {root}")
    classnames = read_lines(root / "classnames.txt") or [d.name.replace("_", " ") for d in folders]
    if len(classnames) != len(folders):
        raise ValueError(f"{root}/classnames.txt has {len(classnames)} names for {len(folders)} folders")
    templates = read_lines(root / "zeroshot_classification_templates.txt") or list(DEFAULT_TEMPLATES)

    def source() -> Iterator[Example]:
        for path, label in files:
            with Image.open(path) as image:
                yield Example(image.convert("RGB"), str(path.relative_to(root)), label=label)

    return Benchmark(f"imagefolder:{root.name}", CLASSIFICATION, source, classnames, templates,
                     info={"images": len(files)})
