"""Fuzzing the shard reader: tars with random member names, sizes, extensions, contents, entry
types, compression and cuts, from a seeded generator (each case reproducible from its seed).

Invariants, at the reader and through `mmw2s bootstrap`:
- the job finishes (no exception, one `ShardEnd` per shard, `summary.json` written);
- every sample is written or counted: samples + skips == the samples in the tar by the documented
  grouping rule, and ignored members == the tar's other entries (for an undamaged tar);
- no output member name is unsafe (absolute, `..`, odd characters) and no key is written twice;
- every output `.json` (members, stats, summary) parses as strict JSON.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from mmw2s.data_pipelines import ReadLimits, ShardEnd, ShardWriter, Skip, is_safe_key, shard_events
from hostile_tars import (bootstrap, build_tiny_models, check_output_tar, encoded, expected_accounting, link,
                          strict_json, write_tar)

KEY_PARTS = ["000000001", "../", "..", "/", "/abs/", "a b", "-x", ".hidden", "日本", "\x1b[0m", "dir/", "v1.0/",
             "\\win", "~", "%s", "\t", "x" * 150, "", "A", "a"]
EXTS = ["jpg", "JPG", "jpeg", "png", "webp", "txt", "json", "TXT", "pyd", "cls", "seg.jpg", "", "tar"]
MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16"]


def random_key(rng: random.Random, earlier: list[str]) -> str:
    if earlier and rng.random() < 0.2:
        return rng.choice(earlier)  # a duplicate, adjacent or apart
    if rng.random() < 0.5:
        return f"{rng.randrange(10**9):09d}"
    return "".join(rng.choice(KEY_PARTS) for _ in range(rng.randint(1, 3)))


def random_image(rng: random.Random) -> bytes:
    mode = rng.choice(MODES)
    size = (rng.randint(1, 40), rng.randint(1, 40))
    image = Image.new(mode, size, rng.randrange(256) if mode in ("L", "P", "1") else None)
    if mode == "P":
        image.putpalette([rng.randrange(256) for _ in range(768)])
    fmt = "JPEG" if mode == "CMYK" or (mode in ("RGB", "L") and rng.random() < 0.6) else "PNG"
    data = encoded(image, fmt, **({"transparency": 0} if mode == "P" and rng.random() < 0.5 else {}))
    return data[: rng.randrange(len(data))] if rng.random() < 0.15 else data  # a cut-off image


def random_json(rng: random.Random) -> bytes:
    choice = rng.randrange(8)
    if choice == 0:
        return b"[" * rng.choice([10, 100, 5000]) + b"]" * 3  # deep and/or broken
    if choice == 1:
        return b'{"caption": "a nan", "w": NaN, "h": -Infinity, "x": 1e999}'
    if choice == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if choice == 3:
        return b'{"caption": "\\ud800 lone", "mmw2s": {"synthetic": 5}}'
    meta = {"caption": "a caption " * rng.randint(0, 3), "status": "success", "n": rng.random()}
    return json.dumps(meta).encode()


def random_content(rng: random.Random, ext: str) -> bytes:
    base = ext.lower().rsplit(".", 1)[-1]
    if base in ("jpg", "jpeg", "png", "webp") and rng.random() < 0.8:
        return random_image(rng)
    if base == "json":
        return random_json(rng)
    if base == "txt":
        return rng.choice([b"a red square", b"", b"\xff\xfe\x00bad", "\ufeffbom".encode(), b"long " * 3000])
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))


def random_members(rng: random.Random) -> list:
    members, keys = [], []
    for _ in range(rng.randint(0, 12)):
        key = random_key(rng, keys)
        keys.append(key)
        # half the samples as img2dataset writes them, the rest any mix of extensions
        exts = [rng.choice(EXTS[:5]), "txt", "json"] if rng.random() < 0.5 else rng.sample(EXTS, rng.randint(1, 4))
        for ext in exts:
            name = f"{key}.{ext}" if ext else key
            members.append(link(name, "/etc/passwd") if rng.random() < 0.03 else (name, random_content(rng, ext)))
    return members


def random_tar(rng: random.Random, path_stem: Path) -> tuple[Path, bool]:
    """A random tar (maybe compressed, maybe cut); returns its path and whether it was cut."""
    suffix, mode = rng.choice([(".tar", "w"), (".tar", "w"), (".tar.gz", "w:gz"), (".tar.bz2", "w:bz2"),
                               (".tar.xz", "w:xz")])
    path = write_tar(path_stem.with_name(path_stem.name + suffix), random_members(rng), mode=mode)
    cut = rng.random() < 0.15
    if cut:
        data = path.read_bytes()
        path.with_name(path.name + ".whole").write_bytes(data)
        path.write_bytes(data[: rng.randrange(len(data))])
    return path, cut


def whole(path: Path, cut: bool) -> Path:
    return path.with_name(path.name + ".whole") if cut else path


def copy_through(samples: list[dict], path: Path) -> None:
    """Write what the reader yields as bootstrap does (the image bytes, the caption, the JSON)."""
    with ShardWriter(path) as writer:
        for s in samples:
            meta = {**s["json"], "mmw2s": {"original_key": s.get("original_key")}}
            writer.write({"__key__": s["__key__"], s["image_ext"]: s["image_bytes"],
                          "txt": s["caption"], "json": meta})
        writer.close({"count": len(samples)})


@pytest.mark.parametrize("seed", range(40))
def test_random_tars_are_read_with_every_sample_accounted_for(tmp_path, seed):
    rng = random.Random(seed)
    path, cut = random_tar(rng, tmp_path / f"{seed:05d}")
    events = list(shard_events(str(path), ReadLimits(max_caption_chars=500)))
    *items, end = events
    assert isinstance(end, ShardEnd) and not any(isinstance(e, ShardEnd) for e in items)
    samples = [s for s in items if isinstance(s, dict)]
    skips = [s for s in items if isinstance(s, Skip)]
    assert end.samples == len(samples) and sum(end.skipped.values()) == len(skips)
    expected, ignored = expected_accounting(whole(path, cut))
    if end.damaged is None:
        assert len(samples) + len(skips) == expected and end.ignored_members == ignored
    else:
        assert cut or path.stat().st_size == 0, end.damaged  # only a cut tar may be damaged
        assert len(samples) + len(skips) <= expected
    keys = [s["__key__"] for s in samples]
    assert all(is_safe_key(k) for k in keys) and len(set(keys)) == len(keys)
    assert all(s["image"].mode == "RGB" and len(s["caption"]) <= 500 for s in samples)
    copy_through(samples, tmp_path / "out" / "00000.tar")
    assert len(check_output_tar(tmp_path / "out" / "00000.tar")) == len(samples)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_bootstrap_finishes_on_random_tars_with_every_sample_accounted_for(tiny_models, tmp_path):
    rng = random.Random(2026)
    inputs = tmp_path / "in"
    made = [random_tar(rng, inputs / f"{i:05d}") for i in range(6)]
    for path, cut in made:  # keep the whole copies out of the input folder
        if cut:
            whole(path, cut).rename(tmp_path / whole(path, cut).name)
    out = tmp_path / "out"
    summary = bootstrap(inputs, tiny_models, out, 2)
    strict_json((out / "summary.json").read_bytes())
    assert summary["complete_shards"] == len(made)
    for path, cut in made:
        name = path.name.split(".", 1)[0]
        stats = strict_json((out / "shards" / f"{name}_stats.json").read_bytes())
        written = check_output_tar(out / "shards" / f"{name}.tar")
        assert len(written) == stats["written"] == stats["decoded"] - stats["dropped"]
        if stats["damaged"] is None:
            source = tmp_path / whole(path, cut).name if cut else path
            assert stats["inputs"] == expected_accounting(source)[0]
            assert stats["ignored_members"] == expected_accounting(source)[1]
