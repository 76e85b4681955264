"""The synthetic web world: determinism, img2dataset schema, noise model, bias, resume."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mmw2s.data_pipelines.world import (
    COLORS, NOISE_TYPES, POSITIONS, RELATIONS, SHAPES, SIZES, BiasConfig, NoiseConfig, SplitConfig,
    WorldConfig, generate_world, gold_caption, render_scene, sample_scene, shard_samples,
)
from mmw2s.data_pipelines.world.render import encode_jpeg
from mmw2s.data_pipelines.world.scene import MAX_OVERLAP, _overlap
from mmw2s.data_pipelines.world.vocab import BOILERPLATE, COLOR_RGB, POSITION_CELL

NO_NOISE = NoiseConfig(mismatched=0.0, random_words=0.0, wrong_attribute=0.0, incomplete=0.0, boilerplate=0.0)


def small_config(out: Path, **kw) -> WorldConfig:
    base = dict(out=str(out), seed=7, workers=1, samples_per_shard=16, jpeg_quality=90,
                clean=SplitConfig(8), web=SplitConfig(40), test=SplitConfig(8))
    base.update(kw)
    return WorldConfig(**base)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes}, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def web_samples(n: int, **kw) -> list[dict]:
    cfg = small_config(Path("unused"), samples_per_shard=n, web=SplitConfig(n), **kw)
    return list(shard_samples(cfg, "web", 0, n))


# -------------------------------------------------------------------------------------------
# Shards on disk


def test_same_config_gives_byte_identical_shards_for_any_worker_count(tmp_path):
    one = generate_world(small_config(tmp_path / "one", workers=1))
    two = generate_world(small_config(tmp_path / "two", workers=2))
    files = tree_bytes(tmp_path / "one")
    assert sorted(files) == sorted(tree_bytes(tmp_path / "two"))
    assert files == tree_bytes(tmp_path / "two")
    assert "web/00002.tar" in files and "web/00002_stats.json" in files  # 40 samples / 16 per shard
    assert one["web"]["shards"] == 3 and one["web"]["samples"] == 40
    assert {k: v for k, v in one["web"].items() if k != "path"} == {
        k: v for k, v in two["web"].items() if k != "path"}
    assert one["images_per_s"] > 0 and one["generated"] == 56


def test_another_seed_gives_other_bytes(tmp_path):
    generate_world(small_config(tmp_path / "a", seed=1, web=SplitConfig(16)))
    generate_world(small_config(tmp_path / "b", seed=2, web=SplitConfig(16)))
    for name in ("clean/00000.tar", "web/00000.tar", "test/00000.tar"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()


def test_every_member_follows_img2dataset_schema_with_truth(tmp_path):
    cfg = small_config(tmp_path, image_size=80)
    generate_world(cfg)
    for split in ("clean", "web", "test"):
        for tar in sorted((tmp_path / split).glob("*.tar")):
            shard = tar.name[:5]
            samples = read_tar(tar)
            stats = json.loads((tmp_path / split / f"{shard}_stats.json").read_text())
            assert stats["count"] == stats["successes"] == len(samples)
            assert stats["split"] == split and stats["failed_to_download"] == stats["failed_to_resize"] == 0
            assert sum(stats["noise_types"].values()) == len(samples)
            for i, (key, members) in enumerate(samples.items()):
                assert key == f"{shard}{i:04d}" and sorted(members) == ["jpg", "json", "txt"]
                check_sample(split, key, members, image_size=80)


def check_sample(split: str, key: str, members: dict[str, bytes], image_size: int) -> None:
    meta = json.loads(members["json"])
    caption = members["txt"].decode("utf-8")
    image = Image.open(io.BytesIO(members["jpg"]))
    assert image.format == "JPEG" and image.size == (image_size, image_size)
    assert meta["key"] == key and meta["caption"] == caption and meta["status"] == "success"
    assert meta["error_message"] is None
    assert meta["url"].startswith("https://web.mmw2s.example/") and meta["url"].endswith(".jpg")
    assert meta["width"] == meta["height"] == meta["original_width"] == meta["original_height"] == image_size
    truth = meta["truth"]
    assert set(truth) == {"scene", "gold_caption", "noise_type", "biased"}
    assert truth["noise_type"] in NOISE_TYPES and truth["gold_caption"] == gold_caption(truth["scene"])
    if split != "web":  # clean and test stand for human-annotated sets: the gold caption
        assert caption == truth["gold_caption"] and truth["noise_type"] == "correct" and not truth["biased"]
    objects = truth["scene"]["objects"]
    assert 1 <= len(objects) <= 3
    for obj in objects:
        assert obj["shape"] in SHAPES and obj["color"] in COLORS and obj["size"] in SIZES
        assert obj["position"] in POSITIONS
        x0, y0, x1, y1 = obj["box"]
        assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
    for rel in truth["scene"]["relations"]:
        assert rel["relation"] in RELATIONS and rel["subject"] != rel["object"]
        assert max(rel["subject"], rel["object"]) < len(objects)


def test_webdataset_reads_a_shard(tmp_path):
    generate_world(small_config(tmp_path))
    url = str(tmp_path / "web" / "00000.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False).decode("pil"))
    assert len(samples) == 16
    first = samples[0]
    assert first["__key__"] == "000000000"
    assert isinstance(first["jpg"], Image.Image) and first["jpg"].size == (64, 64)
    assert first["txt"] == first["json"]["caption"]


def test_resume_keeps_complete_shards_and_redoes_a_partial_one(tmp_path):
    cfg = small_config(tmp_path)
    generate_world(cfg)
    web = tmp_path / "web"
    done_mtime = (web / "00000.tar").stat().st_mtime_ns
    original = (web / "00001.tar").read_bytes()
    # A run killed while writing shard 1: only the partial tar is left.
    (web / "00001.tar").unlink()
    (web / "00001_stats.json").unlink()
    (web / "00001.tar.partial").write_bytes(b"half a tar")
    finished: list[int] = []
    summary = generate_world(cfg, progress=finished.append)
    assert (web / "00000.tar").stat().st_mtime_ns == done_mtime
    assert (web / "00001.tar").read_bytes() == original
    assert not (web / "00001.tar.partial").exists()
    assert summary["generated"] == 16 and summary["web"]["resumed_shards"] == 2
    assert sum(finished) == 56  # kept shards are reported too, so a progress bar completes


def test_resume_refuses_shards_of_another_config(tmp_path):
    generate_world(small_config(tmp_path))
    with pytest.raises(ValueError, match="different world config"):
        generate_world(small_config(tmp_path, seed=8))


def test_noise_settings_change_web_captions_but_never_images(tmp_path):
    a = {s["__key__"]: s for s in web_samples(50)}
    b = {s["__key__"]: s for s in web_samples(50, noise=NO_NOISE)}
    assert all(a[k]["jpg"] == b[k]["jpg"] for k in a)
    assert all(b[k]["txt"] == b[k]["json"]["truth"]["gold_caption"] for k in b)
    assert any(a[k]["txt"] != b[k]["txt"] for k in a)


# -------------------------------------------------------------------------------------------
# Noise model


def test_noise_type_fractions_follow_the_config():
    noise = NoiseConfig(mismatched=0.1, random_words=0.1, wrong_attribute=0.2, incomplete=0.1, boilerplate=0.2)
    samples = web_samples(600, noise=noise)
    counts = Counter(s["json"]["truth"]["noise_type"] for s in samples)
    for name, expected in noise.fractions().items():
        assert counts[name] / len(samples) == pytest.approx(expected, abs=0.05), name


def test_each_noise_type_does_what_its_name_says():
    samples = web_samples(300)
    golds = {s["json"]["truth"]["gold_caption"] for s in samples}
    boilerplate = [re.escape(t).replace(r"\{n\}", r"\d+") for t in BOILERPLATE]
    seen = set()
    for s in samples:
        truth, caption = s["json"]["truth"], s["txt"]
        kind = truth["noise_type"]
        seen.add(kind)
        if kind == "correct":
            assert caption == truth["gold_caption"]
        else:
            assert caption != truth["gold_caption"], kind
        if kind == "mismatched":
            assert caption in golds
        if kind == "boilerplate":
            assert any(re.fullmatch(p, caption) for p in boilerplate), caption
        if kind == "incomplete":
            assert len(caption.split()) < len(truth["gold_caption"].split())
    assert seen == set(NOISE_TYPES) - {"bias"}


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_bias_renames_exactly_the_source_colour(rate):
    samples = web_samples(300, noise=NO_NOISE, bias=BiasConfig(source="purple", target="blue", rate=rate))
    with_source = biased = 0
    for s in samples:
        truth, caption = s["json"]["truth"], s["txt"]
        has_source = any(o["color"] == "purple" for o in truth["scene"]["objects"])
        with_source += has_source
        biased += truth["biased"]
        assert truth["noise_type"] == ("bias" if truth["biased"] else "correct")
        if not truth["biased"]:
            assert caption == truth["gold_caption"]
            continue
        assert has_source and "purple" not in caption
        changed = [(g, c) for g, c in zip(truth["gold_caption"].split(), caption.split()) if g != c]
        assert changed and all(pair == ("purple", "blue") for pair in changed)
    assert with_source > 30
    assert biased / with_source == pytest.approx(rate, abs=0.15)


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="sum to <= 1"):
        NoiseConfig(mismatched=0.5, boilerplate=0.6).validate()
    with pytest.raises(ValueError, match="bias.target"):
        BiasConfig(target="mauve").validate()
    with pytest.raises(ValueError, match="samples_per_shard"):
        WorldConfig(out="x", samples_per_shard=20_000).validate()
    WorldConfig(out="x").validate()
    assert NoiseConfig().fractions()["correct"] == pytest.approx(0.45)


def test_typed_config_loader_reads_the_schema(tmp_path):
    from mmw2s.config import load_config

    path = tmp_path / "world.yaml"
    path.write_text("out: runs/w\nseed: 3\nweb:\n  samples: 50\nbias:\n  rate: 0.3\n")
    cfg = load_config(WorldConfig, path, ["noise.boilerplate=0.2"])
    assert isinstance(cfg.web, SplitConfig) and cfg.web.samples == 50 and cfg.clean.samples == 1000
    assert cfg.bias.rate == 0.3 and cfg.noise.boilerplate == 0.2 and cfg.seed == 3
    assert all(f.metadata.get("help") for f in dataclasses.fields(WorldConfig))


# -------------------------------------------------------------------------------------------
# Scenes, captions and pixels


def test_gold_captions_are_canonical():
    one = {"objects": [{"shape": "circle", "color": "orange", "size": "large", "position": "top left",
                        "box": [0, 0, 30, 30]}], "relations": []}
    assert gold_caption(one) == "a large orange circle in the top left"
    two = {"objects": [
        {"shape": "circle", "color": "red", "size": "large", "position": "center", "box": [20, 20, 44, 44]},
        {"shape": "square", "color": "blue", "size": "small", "position": "bottom right", "box": [48, 48, 62, 62]},
    ], "relations": []}
    assert gold_caption(two) == "a large red circle to the left of a small blue square"
    three = dict(two, objects=two["objects"] + [
        {"shape": "star", "color": "green", "size": "small", "position": "top right", "box": [48, 2, 62, 16]}])
    assert gold_caption(three) == ("a large red circle to the left of a small blue square, "
                                   "and a small green star above the small blue square")


def test_scenes_are_well_formed_at_any_image_size():
    rng = np.random.default_rng(0)
    for size in (64, 128):
        for _ in range(200):
            scene = sample_scene(rng, size)
            objects = scene["objects"]
            for obj in objects:
                x0, y0, x1, y1 = obj["box"]
                side = x1 - x0
                lo, hi = (12, 18) if obj["size"] == "small" else (24, 34)
                assert y1 - y0 == side and round(lo * size / 64) <= side <= round(hi * size / 64)
                row, col = POSITION_CELL[obj["position"]]
                assert ((y0 + y1) // 2 * 3 // size, (x0 + x1) // 2 * 3 // size) == (row, col)
            assert all(_overlap(a["box"], b["box"]) <= MAX_OVERLAP
                       for i, a in enumerate(objects) for b in objects[i + 1:])


def test_objects_stand_out_from_the_background_in_their_colour():
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(100):
        scene = sample_scene(rng)
        jpeg = encode_jpeg(render_scene(scene, 64, rng), quality=90)
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)), dtype=np.float32)  # (H, W, 3)
        for obj in scene["objects"]:
            x0, y0, x1, y1 = obj["box"]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            if obj["shape"] in ("circle", "square", "diamond", "cross"):  # solid at the centre
                seen = pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(axis=0)
                errors.append(np.abs(seen - np.array(COLOR_RGB[obj["color"]])).max())
    assert np.median(errors) < 15 and np.max(errors) < 40


def test_noise_total_rescales_the_mix_of_noise_types():
    noise = NoiseConfig(total=0.8)
    fractions = noise.fractions()
    assert fractions["correct"] == pytest.approx(0.2)
    default = NoiseConfig().fractions()
    assert fractions["mismatched"] / fractions["boilerplate"] == pytest.approx(
        default["mismatched"] / default["boilerplate"])  # the mix stays, only the rate changes
    counts = Counter(s["json"]["truth"]["noise_type"] for s in web_samples(400, noise=noise))
    assert counts["correct"] / 400 == pytest.approx(0.2, abs=0.05)
    with pytest.raises(ValueError, match="noise.total"):
        NoiseConfig(total=1.5).validate()


def test_bias_on_the_clean_split_teaches_teachers_the_bias_but_not_the_truth():
    def clean(bias: BiasConfig) -> list[dict]:
        cfg = small_config(Path("unused"), samples_per_shard=300, clean=SplitConfig(300), bias=bias)
        return list(shard_samples(cfg, "clean", 0, 300))

    biased = clean(BiasConfig(source="purple", target="blue", rate=1.0, clean=True))
    web_only = clean(BiasConfig(source="purple", target="blue", rate=1.0))
    purple = [s for s in biased if any(o["color"] == "purple" for o in s["json"]["truth"]["scene"]["objects"])]
    assert purple and all("purple" not in s["txt"] and "blue" in s["txt"] for s in purple)
    assert all("purple" in s["json"]["truth"]["gold_caption"] for s in purple)  # the truth stays true
    assert all(s["txt"] == s["json"]["truth"]["gold_caption"] for s in web_only)  # default: web only
    assert [s["jpg"] for s in biased] == [s["jpg"] for s in web_only]
