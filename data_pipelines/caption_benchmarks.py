"""Caption benchmarks: images with several reference captions, the way the field ships them.

Readers (each returns a `CaptionBenchmark`, task ``captioning``):

- ``coco:ANNOTATIONS.json[:IMAGE_DIR][?split=test&instances=INSTANCES.json]``: a COCO caption
  annotation file (``images`` with ``id`` / ``file_name``, ``annotations`` with ``image_id`` /
  ``caption``; COCO, NoCaps) or a Karpathy-split file (``dataset_coco.json``,
  ``dataset_flickr30k.json``: ``images`` with ``filepath`` / ``filename`` / ``split`` /
  ``sentences``; the ``split`` images only, ``test`` by default). Images under ``IMAGE_DIR``
  (default: the annotation file's folder). Object categories for CHAIR come from a COCO instances
  file: ``instances=`` or ``instances_X.json`` beside ``captions_X.json``.
- ``wds-captions:FOLDER``: a CLIP_benchmark webdataset folder as its captioning task reads it
  (``SPLIT/N.tar`` of an image plus ``txt``, the reference captions one per line; ``mscoco_captions``,
  ``flickr30k``); an optional ``json`` member may carry ``image_id`` and ``objects``.
- ``world:captioning`` (built by `world_captioning`): the world's test split, every gold caption of
  a scene (each object ordering) as a reference, its shapes as the objects.

Writers (`write_coco_captions`, `write_wds_captions`) put any of them on disk in both forms.
Data only: no model is imported here.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import parse_qs

from PIL import Image

from mmw2s.data_pipelines.benchmark_types import Benchmark, Example, read_lines, wds_shards
from mmw2s.data_pipelines.sample_decode import IMAGE_EXTS, ReadLimits, decode_sample
from mmw2s.data_pipelines.tar_reader import iter_tar_groups
from mmw2s.data_pipelines.writer import ShardWriter, write_json_atomic
from mmw2s.data_pipelines.world import SHAPES
from mmw2s.data_pipelines.world.scene import paraphrases

CAPTIONING_TASK = "captioning"  # CLIP_benchmark's name of the task
# CHAIR's synonym list for the 80 COCO categories, in its form: "category, synonym, synonym, ..."
COCO_SYNONYMS = Path(__file__).with_name("chair_coco_synonyms.txt")


@dataclass
class CaptionItem:
    """One image of a caption benchmark: its id in the predictions file, where it is, its references."""
    image_id: int | str
    key: str  # the image file relative to the image folder, or the webdataset key
    references: list[str]
    objects: list[str] | None = None  # category of each annotated object (CHAIR); None when unknown
    boxes: list[list[float]] | None = None  # COCO [x, y, w, h] of each object, when known


@dataclass
class CaptionBenchmark(Benchmark):
    """A `Benchmark` whose items are known up front, so a run can caption any subset of them."""
    items: list[CaptionItem] = field(default_factory=list)
    categories: list[str] | None = None  # the object vocabulary when objects are annotated
    loader: Callable[[Sequence[int]], Iterator[tuple[int, Image.Image]]] | None = None  # indices -> images

    def images(self, indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        """``(index, RGB image)`` of the wanted items, in benchmark order."""
        return self.loader(sorted(set(indices)))


def caption_benchmark(name: str, items: list[CaptionItem], loader, categories: list[str] | None = None,
                      notes: str = "", info: dict | None = None) -> CaptionBenchmark:
    """A `CaptionBenchmark` whose `examples()` yields every item as an `Example` (texts = references).
    Raises ValueError for a repeated image id (the predictions file is keyed by it)."""
    seen: set = set()
    repeated = [it.image_id for it in items if it.image_id in seen or seen.add(it.image_id)]
    if repeated:
        raise ValueError(f"{name}: image ids repeat ({len(repeated)}x, e.g. {repeated[0]!r}); each image needs its own id")
    def source() -> Iterator[Example]:
        for i, image in loader(range(len(items))):
            it = items[i]
            yield Example(image, it.key, texts=list(it.references),
                          truth={"image_id": it.image_id, "objects": it.objects})

    return CaptionBenchmark(name, CAPTIONING_TASK, source, notes=notes, info={"images": len(items), **(info or {})},
                            items=items, categories=categories, loader=loader)


def load_caption_benchmark(spec: str) -> CaptionBenchmark:
    """``coco:...`` or ``wds-captions:FOLDER`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "coco":
        path, _, query = arg.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        ann, sep, image_dir = path.partition(".json:")
        ann = ann + ".json" if sep else path
        return read_coco_captions(ann, image_dir or None, params.get("split", "test"), params.get("instances"))
    if kind == "wds-captions":
        return read_wds_captions(arg)
    raise ValueError(f"unknown caption benchmark {spec!r}: use coco:ANNOTATIONS.json[:IMAGE_DIR] or "
                     "wds-captions:FOLDER")


# --------------------------------------------------------------------------------------------
# COCO and Karpathy JSON


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exn:
        raise ValueError(f"{path}: not valid JSON ({exn})") from exn
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a COCO caption file (no 'images' list)")
    return data


def read_coco_captions(annotations: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                       split: str = "test", instances: str | os.PathLike | None = None) -> CaptionBenchmark:
    """A COCO caption file or a Karpathy-split file (detected by ``sentences`` on its images)."""
    path = Path(annotations)
    data = _read_json(path)
    root = Path(image_dir) if image_dir else path.parent
    karpathy = bool(data["images"]) and "sentences" in data["images"][0]
    items = _karpathy_items(path, data, split) if karpathy else _coco_items(path, data)
    empty = [it.image_id for it in items if not it.references]
    if empty:
        raise ValueError(f"{path}: {len(empty)} images have an empty reference list, e.g. image id {empty[0]}")
    if not items:
        raise ValueError(f"{path}: no images" + (f" in split {split!r}" if karpathy else ""))
    missing = [it.key for it in items if not (root / it.key).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {path} are not under {root}, e.g. {root / missing[0]} "
                                "(give the image folder: coco:ANNOTATIONS.json:IMAGE_DIR)")
    categories = _attach_instances(items, _instances_file(path, instances))

    def loader(indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        for i in indices:
            with Image.open(root / items[i].key) as image:
                yield i, image.convert("RGB")

    form = f"Karpathy split {split}" if karpathy else "COCO captions"
    return caption_benchmark(f"coco:{path.name}", items, loader, categories,
                             notes=f"{form}: {len(items)} images, {sum(len(i.references) for i in items)} references",
                             info={"annotations": str(path), "image_dir": str(root)})


def _coco_items(path: Path, data: dict) -> list[CaptionItem]:
    if not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO caption file (no 'annotations' list)")
    items, by_id = [], {}
    for image in data["images"]:
        if "id" not in image or "file_name" not in image:
            raise ValueError(f"{path}: an image entry without 'id' / 'file_name': {str(image)[:200]}")
        if image["id"] in by_id:
            raise ValueError(f"{path}: image ids repeat, e.g. {image['id']!r}; each image needs its own id")
        by_id[image["id"]] = CaptionItem(image["id"], image["file_name"], [])
        items.append(by_id[image["id"]])
    for ann in data["annotations"]:
        item = by_id.get(ann.get("image_id"))
        if item is None:
            raise ValueError(f"{path}: annotation {ann.get('id')} names image id {ann.get('image_id')!r}, "
                             "which is not in 'images'")
        if str(ann.get("caption", "")).strip():
            item.references.append(str(ann["caption"]).strip())
    return items


def _karpathy_items(path: Path, data: dict, split: str) -> list[CaptionItem]:
    items = []
    for image in data["images"]:
        if image.get("split") != split:
            continue
        image_id = image.get("cocoid", image.get("imgid"))
        key = str(Path(image.get("filepath", "")) / image["filename"])
        refs = [s["raw"].strip() for s in image.get("sentences", []) if s.get("raw", "").strip()]
        items.append(CaptionItem(image_id, key, refs))
    return items


def _instances_file(captions: Path, given: str | os.PathLike | None) -> Path | None:
    if given:
        if not Path(given).is_file():
            raise FileNotFoundError(f"instances file not found: {given}")
        return Path(given)
    beside = captions.with_name(captions.name.replace("captions_", "instances_", 1))
    return beside if beside != captions and beside.is_file() else None


def _attach_instances(items: list[CaptionItem], path: Path | None) -> list[str] | None:
    """Set each item's true object categories from a COCO instances file; returns the vocabulary."""
    if path is None:
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data.get("categories"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO instances file (no 'categories' / 'annotations')")
    names = {c["id"]: c["name"] for c in data["categories"]}
    objects: dict = {}
    for ann in data["annotations"]:
        objects.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    for it in items:
        it.objects = sorted(objects.get(it.image_id, ()))
    return list(names.values())


# --------------------------------------------------------------------------------------------
# CLIP_benchmark webdataset folders


def read_wds_captions(folder: str | os.PathLike, split: str = "test") -> CaptionBenchmark:
    """A CLIP_benchmark folder read for captioning: references from ``txt``, one per line."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {root}")
    shards = wds_shards(root, split)
    items, where = [], []
    for url in shards:  # a first pass over the text members only: images are decoded when captioned
        for raw in iter_tar_groups(url, frozenset(("txt", "json"))):
            meta = json.loads(raw["json"]) if "json" in raw else {}
            refs = [t.strip() for t in raw.get("txt", b"").decode("utf-8").splitlines() if t.strip()]
            if not refs:
                raise ValueError(f"{url}: sample {raw['__key__']} has an empty reference list (no 'txt' lines)")
            items.append(CaptionItem(meta.get("image_id", len(items)), raw["__key__"], refs,
                                     meta.get("objects"), meta.get("boxes")))
            where.append(url)
    if not items:
        raise ValueError(f"{root}/{split}: no samples")
    categories = read_lines(root / "categories.txt")

    def loader(indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        yield from _wds_images(shards, items, indices)

    return caption_benchmark(f"wds-captions:{root.name}", items, loader, categories,
                             notes=f"CLIP_benchmark folder: {len(items)} images", info={"shards": len(shards)})


def _wds_images(shards: list[str], items: list[CaptionItem], indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
    wanted, index = set(indices), 0
    limits = ReadLimits(require_caption=False)
    for url in shards:
        if not wanted:
            return
        for raw in iter_tar_groups(url, frozenset(IMAGE_EXTS + ("txt",))):
            if "txt" not in raw:
                continue  # not a sample of the first pass either
            if index in wanted:
                sample = decode_sample(raw, limits)
                if not isinstance(sample, dict):
                    raise ValueError(f"{url}: image of sample {raw['__key__']} cannot be read ({sample.reason})")
                wanted.discard(index)
                yield index, sample["image"]
            index += 1


# --------------------------------------------------------------------------------------------
# The world


def world_captioning(items: list[dict]) -> CaptionBenchmark:
    """``world:captioning``: the test split's scenes, every gold caption (each object order) a reference."""
    caption_items = []
    for i, it in enumerate(items):
        objects = it["scene"]["objects"]
        boxes = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in (o["box"] for o in objects)]
        caption_items.append(CaptionItem(i, it["key"], paraphrases(it["scene"]), [o["shape"] for o in objects],
                                         boxes))

    def loader(indices: Sequence[int]) -> Iterator[tuple[int, Image.Image]]:
        for i in indices:
            yield i, items[i]["image"]

    return caption_benchmark("world:captioning", caption_items, loader, list(SHAPES),
                             notes="gold captions of every object ordering as references; shapes as objects")


# --------------------------------------------------------------------------------------------
# Writers


def write_coco_captions(bench: CaptionBenchmark, folder: str | os.PathLike, split: str = "test") -> Path:
    """``FOLDER/captions_SPLIT.json`` + ``images/`` (PNG, the benchmark's exact pixels) and, when objects
    are known, ``instances_SPLIT.json``. The captions file is written last: when it exists the folder
    is complete and is returned as it is."""
    root = Path(folder)
    captions = root / f"captions_{split}.json"
    if captions.exists():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, image in bench.images(range(len(bench.items))):
        it = bench.items[i]
        name = f"images/{it.image_id:012d}.png" if isinstance(it.image_id, int) else f"images/{it.image_id}.png"
        image.save(root / name, format="PNG")
        images.append({"id": it.image_id, "file_name": name, "width": image.width, "height": image.height})
        anns += [{"id": len(anns) + k, "image_id": it.image_id, "caption": r} for k, r in enumerate(it.references)]
    if bench.categories and all(it.objects is not None for it in bench.items):
        write_json_atomic(root / f"instances_{split}.json", _instances(bench, images))
    write_json_atomic(captions, {"info": {"description": bench.name}, "licenses": [], "images": images,
                                 "annotations": anns})
    return root


def _instances(bench: CaptionBenchmark, images: list[dict]) -> dict:
    ids = {name: k + 1 for k, name in enumerate(bench.categories)}
    anns = []
    for it in bench.items:
        names = it.objects or []
        boxes = it.boxes if it.boxes and len(it.boxes) == len(names) else [[0, 0, 0, 0]] * len(names)
        for name, box in zip(names, boxes):
            anns.append({"id": len(anns) + 1, "image_id": it.image_id, "category_id": ids[name], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k, "name": name, "supercategory": "shape"} for name, k in ids.items()]}


def write_wds_captions(bench: CaptionBenchmark, folder: str | os.PathLike, split: str = "test",
                       shard_size: int = 10000) -> Path:
    """A CLIP_benchmark folder (``dataset_type.txt`` = retrieval, the type of its ``mscoco_captions``
    folder, which its captioning task reads): ``png`` + ``txt`` (references, one per line) + ``json``
    (``image_id``, ``objects``). ``SPLIT/nshards.txt`` last: a folder that has it is complete."""
    root = Path(folder)
    if (root / split / "nshards.txt").exists():
        return root
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    if bench.categories:
        (root / "categories.txt").write_text("\n".join(bench.categories) + "\n")
    n = len(bench.items)
    starts = list(range(0, n, shard_size))
    for shard, start in enumerate(starts):
        with ShardWriter(root / split / f"{shard}.tar") as writer:
            for i, image in bench.images(range(start, min(start + shard_size, n))):
                writer.write(_wds_member(bench.items[i], image, f"s{i:07d}"))
            writer.close()
    (root / split / "nshards.txt").write_text(f"{len(starts)}\n")
    return root


def _wds_member(it: CaptionItem, image: Image.Image, key: str) -> dict:
    png = io.BytesIO()
    image.save(png, format="PNG")
    meta = {"image_id": it.image_id, "objects": it.objects}
    return {"__key__": key, "png": png.getvalue(), "txt": "\n".join(r.replace("\n", " ") for r in it.references),
            "json": json.dumps(meta).encode()}
