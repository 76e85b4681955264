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
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from mmw2s.data_pipelines.shards import IMAGE_EXTS, ReadLimits, ShardWriter, decode_sample, iter_samples
from mmw2s.data_pipelines.tar_reader import tar_stream
from mmw2s.data_pipelines.world import COLORS, POSITIONS, SHAPES, SIZES, gold_caption, sample_scene
from mmw2s.data_pipelines.world.scene import gold_plan, render_plan
from mmw2s.data_pipelines.world.vocab import INVERSE_RELATION

log = logging.getLogger(__name__)

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"
SELECTION = "image_caption_selection"
CAPTIONING = "caption_accuracy"

WORLD_SUITES = ("color", "shape", "size", "position", "count", "relation", "retrieval", "captions", "captioning")
COUNT_CLASSES = ("one object", "two objects", "three objects")
COUNT_PROMPTS_PER_CLASS = 16
COUNT_PROMPT_SEED = 1234  # fixed, so the count classifier is the same text for every model
DEFAULT_TEMPLATES = ("a photo of a {c}.",)  # CLIP's plain prompt, when a folder ships none
_IMAGE_FILE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


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
        from mmw2s.data_pipelines.caption_benchmarks import load_caption_benchmark  # it imports this module

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


def paraphrases(scene: dict) -> list[str]:
    """Every distinct gold caption of the scene's objects in any order (the world's grammar)."""
    captions: list[str] = []
    for order in itertools.permutations(scene["objects"]):
        caption = gold_caption({"objects": list(order)})
        if caption not in captions:
            captions.append(caption)
    return captions


def _retrieval_suite(name: str, items: list[dict]) -> Benchmark:
    examples = [Example(it["image"], it["key"], texts=paraphrases(it["scene"])) for it in items]
    return Benchmark("world:retrieval", RETRIEVAL, _fixed(examples),
                     notes="gold captions of every object ordering as the positives of an image")


def _captioning_suite(name: str, items: list[dict]) -> Benchmark:
    from mmw2s.data_pipelines.caption_benchmarks import world_captioning  # it imports this module

    return world_captioning(items)


def _captions_suite(name: str, items: list[dict]) -> Benchmark:
    examples = [Example(it["image"], it["key"], texts=[it["gold_caption"]],
                        truth={"scene": it["scene"], "gold_caption": it["gold_caption"]}) for it in items]
    return Benchmark("world:captions", CAPTIONING, _fixed(examples),
                     notes="greedy captions compared with the gold caption and the scene")


# --------------------------------------------------------------------------------------------
# CLIP_benchmark webdataset folders


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
            if isinstance(sample, dict) and target in raw:
                text = raw[target].decode("utf-8", errors="replace")
                if target == "cls":
                    yield Example(sample["image"], raw["__key__"], label=parse_label(text, url, raw["__key__"]))
                else:
                    yield Example(sample["image"], raw["__key__"], texts=[t for t in text.splitlines() if t.strip()])
            else:
                reason = sample.reason if not isinstance(sample, dict) else f"no_{target}"
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


def iter_tar_groups(url: str, wanted: frozenset[str]) -> Iterator[dict]:
    """Group a tar's members into samples by key (webdataset's rule: the key is the path up to the
    first dot of the file name). Only members with an extension in ``wanted`` are read; nothing is
    ever unpickled. Streams: the tar is read once, front to back. A tar that cannot be read on
    raises a `ValueError` naming it."""
    try:
        yield from _tar_groups(url, wanted)
    except (tarfile.TarError, EOFError, OSError) as exn:
        raise ValueError(f"{url}: not a readable tar ({type(exn).__name__}: {exn})") from None


def _tar_groups(url: str, wanted: frozenset[str]) -> Iterator[dict]:
    with tar_stream(url) as (tar, damage):
        current: dict | None = None
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            if ext.lower() in wanted:
                current[ext.lower()] = tar.extractfile(member).read()
        problem = damage()
        if problem:  # a benchmark cut short would score a model on part of it, silently
            raise ValueError(f"{url}: not a readable tar ({problem})")
        if current is not None:
            yield current


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
