"""Benchmark data: world suites from a tiny world, CLIP_benchmark wds folders, ImageFolders."""
from __future__ import annotations

import io
import tarfile
from collections import Counter

import pytest
from PIL import Image

from mmw2s.data_pipelines import benchmarks as B
from mmw2s.data_pipelines.world import COLORS, POSITIONS, SHAPES, SIZES, WorldConfig, generate_world
from mmw2s.data_pipelines.world.spec import SplitConfig
from mmw2s.data_pipelines.world.vocab import INVERSE_RELATION, RELATION_PHRASE


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(out=str(out), workers=1, samples_per_shard=100,
                      clean=SplitConfig(0), web=SplitConfig(0), test=SplitConfig(240))
    generate_world(cfg)
    return str(out)


@pytest.fixture(scope="module")
def items(world) -> list[dict]:
    return B.load_world_test(world)


def test_world_test_split_is_read_with_truth(items):
    assert len(items) == 240
    assert all(it["image"].size == (64, 64) and it["scene"]["objects"] for it in items)


@pytest.mark.parametrize("suite,vocab", [("color", COLORS), ("shape", SHAPES), ("size", SIZES)])
def test_attribute_suites_have_one_correct_class_per_image(world, items, suite, vocab):
    bench = B.world_suite(world, suite, items)
    by_key = {it["key"]: it for it in items}
    examples = list(bench.examples())
    assert bench.task == B.CLASSIFICATION and bench.classnames == list(vocab)
    assert len(examples) >= len([it for it in items if len(it["scene"]["objects"]) == 1])
    for ex in examples:
        true = {o[suite] for o in by_key[ex.key]["scene"]["objects"]}
        assert true == {bench.classnames[ex.label]}  # every object agrees with the label
    # Attributes are drawn uniformly, so no class is starved.
    counts = Counter(ex.label for ex in examples)
    assert len(counts) == len(vocab) and min(counts.values()) >= 0.3 * len(examples) / len(vocab)


def test_attribute_prompts_are_phrased_like_gold_captions(world, items):
    """A one-object scene's gold caption starts with one of its true class's prompts."""
    color = B.world_suite(world, "color", items)
    position = B.world_suite(world, "position", items)
    for it in items:
        if len(it["scene"]["objects"]) != 1:
            continue
        obj = it["scene"]["objects"][0]
        assert any(it["gold_caption"].startswith(p) for p in color.class_texts(obj["color"]))
        assert it["gold_caption"] in position.class_texts(obj["position"])
        assert not any(it["gold_caption"].startswith(p) for p in color.class_texts(
            next(c for c in COLORS if c != obj["color"])))


def test_position_and_count_suites(world, items):
    position = B.world_suite(world, "position", items)
    singles = [it for it in items if len(it["scene"]["objects"]) == 1]
    assert [ex.key for ex in position.examples()] == [it["key"] for it in singles]
    assert position.classnames == list(POSITIONS)
    count = B.world_suite(world, "count", items)
    labels = Counter(ex.label for ex in count.examples())
    assert sum(labels.values()) == len(items)
    assert all(labels[k] > 0.2 * len(items) for k in range(3))  # balanced: ~1/3 each
    prompts = count.templates
    assert isinstance(prompts, dict) and all(len(v) == B.COUNT_PROMPTS_PER_CLASS for v in prompts.values())
    assert " and " not in prompts["one object"][0] and ", and " in prompts["three objects"][0]


def test_relation_suite_pairs_true_caption_with_inverse(world, items):
    bench = B.world_suite(world, "relation", items)
    by_key = {it["key"]: it for it in items}
    examples = list(bench.examples())
    assert bench.task == B.SELECTION and examples
    for ex in examples:
        scene = by_key[ex.key]["scene"]
        true, false = ex.texts
        if len(scene["objects"]) == 2:
            assert true == by_key[ex.key]["gold_caption"]
        swapped = {true.replace(f" {RELATION_PHRASE[r]} ", f" {RELATION_PHRASE[inv]} ", 1)
                   for r, inv in INVERSE_RELATION.items() if f" {RELATION_PHRASE[r]} " in true}
        assert false != true and false in swapped  # same objects, inverse relation


def test_retrieval_suite_has_every_paraphrase(world, items):
    bench = B.world_suite(world, "retrieval", items)
    by_key = {it["key"]: it for it in items}
    for ex in bench.examples():
        n = len(by_key[ex.key]["scene"]["objects"])
        assert by_key[ex.key]["gold_caption"] in ex.texts
        assert len(ex.texts) == len(set(ex.texts)) <= {1: 1, 2: 2, 3: 6}[n]
    captions = B.world_suite(world, "captions", items)
    first = next(captions.examples())
    assert first.truth["gold_caption"] == items[0]["gold_caption"]


def test_unknown_specs_are_refused(world):
    with pytest.raises(ValueError, match="unknown world suite"):
        B.world_suite(world, "colour")
    with pytest.raises(ValueError, match="needs the world folder"):
        B.load_benchmark("world:color")
    with pytest.raises(ValueError, match="unknown benchmark"):
        B.load_benchmark("cifar10")


# --------------------------------------------------------------------------------------------
# CLIP_benchmark webdataset folders


def _image_bytes(color: str, fmt: str = "webp") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format=fmt.upper())
    return buf.getvalue()


def _write_tar(path, samples: list[dict]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "key":
                    continue
                info = tarfile.TarInfo(f"{sample['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_clip_benchmark_wds_classification_folder_is_read(tmp_path):
    root = tmp_path / "cifar_like"
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("red thing\ngreen thing\nblue thing\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c}.\n")
    (root / "test" / "nshards.txt").write_text("2\n")
    colors = ["red", "green", "blue"]
    _write_tar(root / "test" / "0.tar", [
        {"key": f"s{i:04d}", "webp": _image_bytes(colors[i % 3]), "cls": str(i % 3).encode(),
         "pyd": b"never unpickled"} for i in range(4)])
    _write_tar(root / "test" / "1.tar", [{"key": "s0004", "jpg": _image_bytes("blue", "jpeg"), "cls": b"2"}])
    bench = B.load_benchmark(f"wds:{root}")
    examples = list(bench.examples())
    assert bench.task == B.CLASSIFICATION and bench.name == "wds:cifar_like"
    assert bench.classnames == ["red thing", "green thing", "blue thing"]
    assert bench.class_texts("red thing") == ["a photo of a red thing.", "a red thing."]
    assert [ex.label for ex in examples] == [0, 1, 2, 0, 2]
    assert [ex.key for ex in examples] == [f"s{i:04d}" for i in range(5)]
    assert examples[1].image.getpixel((4, 4))[1] > 100  # green decoded
    assert len(list(bench.examples())) == 5  # re-iterable


def test_clip_benchmark_wds_retrieval_folder_is_read(tmp_path):
    root = tmp_path / "flickr_like"
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    _write_tar(root / "test" / "0.tar", [
        {"key": "a", "jpg": _image_bytes("red", "jpeg"), "txt": b"a red square\na red box\n"},
        {"key": "b", "png": _image_bytes("blue", "png"), "txt": b"a blue square"}])
    bench = B.read_wds_benchmark(root)
    assert bench.task == B.RETRIEVAL
    assert [ex.texts for ex in bench.examples()] == [["a red square", "a red box"], ["a blue square"]]


def test_missing_wds_parts_are_named(tmp_path):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no shards"):
        B.read_wds_benchmark(tmp_path / "empty")
    _write_tar(tmp_path / "empty" / "test" / "0.tar", [{"key": "a", "jpg": _image_bytes("red", "jpeg"), "cls": b"0"}])
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        B.read_wds_benchmark(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_is_read_in_torchvision_order(tmp_path):
    for cls, color in [("golden_retriever", "yellow"), ("ant", "black")]:
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), color).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    bench = B.load_benchmark(f"imagefolder:{tmp_path}")
    assert bench.classnames == ["ant", "golden retriever"]  # sorted folders, '_' as space
    assert bench.templates == list(B.DEFAULT_TEMPLATES)
    examples = list(bench.examples())
    assert [ex.label for ex in examples] == [0, 0, 1, 1]
    assert examples[0].image.mode == "RGB" and examples[0].key == "ant/0.png"
    (tmp_path / "classnames.txt").write_text("an ant\na dog\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("{c}\n")
    bench = B.read_imagefolder(tmp_path)
    assert bench.classnames == ["an ant", "a dog"] and bench.class_texts("a dog") == ["a dog"]
