"""Hostile shards (issue 20): no single sample can stop a job, and nothing unsafe is written.

Each class of hostile input has a test at the reader (`shard_events`), then the whole set goes
through `mmw2s bootstrap` (tiny BLIP, workers=1 and 2) and `mmw2s train task=clip`.
Hostile classes covered: deep / huge / non-object / non-finite / lone-surrogate JSON; duplicate
keys (adjacent, apart, by case of the extension, by renaming); unsafe member names (`..`,
absolute, odd characters, no key); links, folders and other non-files; oversized members;
compressed shards (gzip, bzip2, xz, cut-off gzip); corrupt headers mid-tar and cuts inside a
sample; huge, undecodable and BOM captions; images in every mode (16-bit, palette and colour-key
transparency, LA, RGBA, CMYK, EXIF orientation), non-browser formats and extreme aspect ratios;
JSON a text selector cannot use; failures that are no sample's fault (named by shard).
"""
from __future__ import annotations

import gzip
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmw2s.data_pipelines import sample_decode
from mmw2s.data_pipelines import (ReadLimits, ShardEnd, ShardError, ShardWriter, Skip, event_loader,
                                   expand_urls, is_safe_key, safe_key, shard_events,
                                   shard_name, write_json_atomic)
from hostile_tars import (bootstrap, build_tiny_models, check_output_tar, encoded, expected_accounting, jpeg, link,
                          sample, strict_json, write_tar)


def read(path, limits=ReadLimits()) -> tuple[list[dict], list[Skip], ShardEnd]:
    events = list(shard_events(str(path), limits))
    *items, end = events
    return ([s for s in items if isinstance(s, dict)], [s for s in items if isinstance(s, Skip)], end)


def good(n: int, start: int = 0) -> list:
    return [m for i in range(start, start + n) for m in sample(f"{i:09d}", f"a red square {i}")]


# --------------------------------------------------------------------------------------------
# 1. Whatever fails while decoding one sample is its skip reason


@pytest.mark.parametrize("depth", [100_000, 500])
def test_deeply_nested_json_is_one_skipped_sample(tmp_path, depth):
    nested = b"[" * depth + b"]" * depth
    deep = sample("deep", meta=b'{"a": ' + nested + b"}")
    path = write_tar(tmp_path / "00000.tar", good(2) + deep + good(2, 2))
    samples, skips, end = read(path)
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(4)]
    assert [(s.key, s.reason) for s in skips] == [("deep", "bad_json")] and end.damaged is None
    # RecursionError when Python's parser gives up, else our depth cap (pickling and writing recurse too)
    assert ("RecursionError" if depth > 1000 else "deeper than") in skips[0].detail


def test_any_exception_while_decoding_is_the_samples_skip_reason(tmp_path, monkeypatch):
    calls = iter(range(100))

    def flaky(raw, meta, limits, changes):  # a failure of a kind nobody listed
        if next(calls) == 1:
            raise LookupError("something nobody expected")
        return "a caption", ""

    monkeypatch.setattr(sample_decode, "_caption", flaky)
    samples, skips, end = read(write_tar(tmp_path / "00000.tar", good(3)))
    assert len(samples) == 2 and [(s.key, s.reason) for s in skips] == [("000000001", "decode_error")]
    assert "LookupError: something nobody expected" in skips[0].detail and end.skipped == {"decode_error": 1}


@pytest.mark.parametrize("meta,detail", [(b"[1, 2]", "not an object"), (b'{"n": ' + b"9" * 5000 + b"}", "digits"),
                                         (b"\xff\xfe{", "")])
def test_json_that_is_not_a_usable_object_is_bad_json(tmp_path, meta, detail):
    _, skips, _ = read(write_tar(tmp_path / "00000.tar", sample("k", meta=meta) + good(1)))
    assert [s.reason for s in skips] == ["bad_json"] and detail in skips[0].detail


def test_failures_that_are_no_samples_fault_stop_with_the_shard_named(tmp_path):
    urls = [str(write_tar(tmp_path / f"{i:05d}.tar", good(2, 10 * i))) for i in range(2)]

    def broken_stage(records):  # a bug of ours downstream of the reader, in a worker
        for record in records:
            if isinstance(record, dict) and record["__url__"] == urls[1]:
                raise ZeroDivisionError("our bug")
            yield record

    for workers in (0, 1):
        with pytest.raises(ShardError, match=r"00001\.tar: ZeroDivisionError: our bug"):
            list(event_loader(urls, stages=[broken_stage], workers=workers))


# --------------------------------------------------------------------------------------------
# 2. Duplicate keys: the first sample of a key is kept, later ones are counted


def test_duplicate_keys_keep_the_first_count_the_rest_and_read_on(tmp_path):
    members = (sample("dupA", "first") + sample("dupA", "second")  # adjacent: webdataset raises here
               + good(4) + sample("dupA", "third, far apart")
               + [("x.jpg", jpeg()), ("x.txt", b"upper"), ("x.JPG", jpeg())])  # same ext by case
    samples, skips, end = read(write_tar(tmp_path / "00000.tar", members))
    assert [s["__key__"] for s in samples] == ["dupA", *(f"{i:09d}" for i in range(4)), "x"]
    assert samples[0]["caption"] == "first" and end.damaged is None
    assert [(s.key, s.reason) for s in skips] == [("dupA", "duplicate_key")] * 2 + [("x", "duplicate_key")]


# --------------------------------------------------------------------------------------------
# 3. Unsafe member names are renamed, counted and their original kept


UNSAFE = ["../../escape", "/tmp/ABS_ESCAPE", "a/../../b", "-rf", "space key", "\x1b[31mred", "日本",
          "\udcffbytes", "x" * 300, "dir/"]


def test_unsafe_keys_are_renamed_safely_and_stably(tmp_path):
    for key in UNSAFE:
        assert not is_safe_key(key) and is_safe_key(safe_key(key)) and safe_key(key) == safe_key(key)
    assert len({safe_key(k) for k in UNSAFE}) == len(UNSAFE)
    for key in ("000000001", "train/000000001", "v1.0/abc_9-x"):
        assert safe_key(key) == key
    members = [m for i, key in enumerate(["../../escape", "/tmp/ABS_ESCAPE", "space key"])
               for m in sample(key, f"caption {i}")] + good(1) + sample(safe_key("../../escape"))
    samples, skips, end = read(write_tar(tmp_path / "00000.tar", members))
    # a key equal to another's new name comes later: a duplicate, so output names stay unique
    assert [(s.key, s.reason) for s in skips] == [(safe_key("../../escape"), "duplicate_key")]
    assert end.changed == {"key_renamed": 3}
    assert [s.get("original_key") for s in samples] == ["../../escape", "/tmp/ABS_ESCAPE", "space key", None]
    assert all(is_safe_key(s["__key__"]) for s in samples) and samples[0]["__key__"].startswith("escape-")
    with pytest.raises(ValueError, match="unsafe member name"):
        ShardWriter(tmp_path / "out.tar").write({"__key__": "../x", "txt": "x"})


def test_members_without_a_key_links_and_folders_are_ignored_and_counted(tmp_path):
    folder = tarfile.TarInfo("somedir")
    folder.type = tarfile.DIRTYPE
    members = [(".jpg", jpeg()), ("noext", b"x"), folder, link("evil.jpg", "/etc/passwd"),
               link("hard.jpg", "000000000.jpg", tarfile.LNKTYPE), ("w.pyd", b"\x80\x04"), *good(2)]
    path = write_tar(tmp_path / "00000.tar", members)
    samples, skips, end = read(path)
    assert len(samples) == 2 and not skips and end.damaged is None
    assert end.ignored_members == 6 == expected_accounting(path)[1]


# --------------------------------------------------------------------------------------------
# 4. Compressed shards


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2"),
                                         (".tar.xz", "w:xz")])
def test_compressed_shards_are_read_whole_and_listed(tmp_path, suffix, mode):
    path = write_tar(tmp_path / f"00007{suffix}", good(5), mode=mode)
    write_tar(tmp_path / "00008.tar", good(1, 5))
    (tmp_path / "notes.txt").write_text("not a shard")
    assert expand_urls(str(tmp_path)) == [str(path), str(tmp_path / "00008.tar")]
    samples, skips, end = read(path)
    assert len(samples) == 5 and not skips and end.damaged is None and shard_name(str(path)) == "00007"
    data = path.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) * 2 // 3])  # a cut-off compressed download
    _, _, cut = read(tmp_path / "cut.tar.gz")
    assert cut.damaged
    if mode == "w:gz":  # every member intact, but the stream's checksum is wrong
        (tmp_path / "crc.tar.gz").write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:])
        samples, _, bad_crc = read(tmp_path / "crc.tar.gz")
        assert len(samples) == 5 and "CRC" in bad_crc.damaged


def test_a_plain_tar_that_merely_starts_like_bzip2_is_a_tar(tmp_path):
    samples, _, end = read(write_tar(tmp_path / "00000.tar", sample("BZh91AY") + good(1)))
    assert len(samples) == 2 and end.damaged is None


# --------------------------------------------------------------------------------------------
# Damage inside the tar


def test_a_corrupt_header_mid_tar_is_reported_not_silently_ended(tmp_path):
    path = write_tar(tmp_path / "00000.tar", good(6))
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[9].offset  # the header of sample 3's first member
    data[offset + 148: offset + 156] = b"0000000\0"  # a wrong checksum
    path.write_bytes(bytes(data))
    samples, _, end = read(path)
    assert len(samples) == 3 and end.damaged and "header" in end.damaged  # tarfile alone stops silently


def test_a_cut_inside_a_sample_counts_that_sample(tmp_path):
    path = write_tar(tmp_path / "00000.tar", good(3))
    with tarfile.open(path) as tar:
        json_of_second = tar.getmembers()[5]
    path.write_bytes(path.read_bytes()[: json_of_second.offset_data + 3])
    samples, skips, end = read(path)
    assert len(samples) == 1 and [(s.key, s.reason) for s in skips] == [("000000001", "cut_off")] and end.damaged


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, gzip.compress(b"not a tar" * 100)])
def test_files_that_are_no_tar_are_unreadable_shards(tmp_path, content):
    """Not a damaged tar (whose samples before the break are kept) but no tar at all: nothing is
    kept, and a rerun reads it again (issue 25: a non-tar must not become an empty complete shard)."""
    (tmp_path / "00000.tar").write_bytes(content)
    samples, skips, end = read(tmp_path / "00000.tar")
    assert not samples and not skips and end.unreadable.startswith("not a readable tar") and end.damaged is None


def test_oversized_members_are_not_read(tmp_path):
    members = sample("big", image=jpeg(size=(64, 64))) + good(1)
    limits = ReadLimits(max_member_bytes=len(jpeg()) + 10)
    samples, skips, _ = read(write_tar(tmp_path / "00000.tar", members), limits)
    assert len(samples) == 1 and [(s.key, s.reason) for s in skips] == [("big", "member_too_large")]


# --------------------------------------------------------------------------------------------
# 5. Strict JSON out


@pytest.mark.parametrize("meta, value, change", [
    ('{"c": "x \udc80"}'.encode("utf-8", "surrogatepass"), "x \ufffd", "invalid_unicode"),  # raw surrogate bytes
    (b'{"c": 1' + b"0" * 400 + b'.5}', None, "json_non_finite"),  # 401 digits overflow a float
    (b'{"c": 2E+308}', None, "json_non_finite"),
    (b'{"c": [1e-400, "plain"]}', [0.0, "plain"], None),  # looks suspect, is strict: walked, unchanged
])
def test_strict_json_whatever_the_json_spells(meta, value, change):
    changes: set[str] = set()
    got = sample_decode.parse_json(meta, ReadLimits(), changes)
    assert got["c"] == value and changes == ({change} if change else set())


def test_json_deeper_than_the_limit_is_refused_even_when_it_parses():
    nested = b'{"c": ' + b"[" * 65 + b"]" * 65 + b"}"
    with pytest.raises(ValueError, match="deeper than 64"):
        sample_decode.parse_json(nested, ReadLimits(), set())
    assert sample_decode.parse_json(nested, ReadLimits(max_json_depth=80), set())["c"]


def test_non_finite_numbers_and_lone_surrogates_become_strict_json(tmp_path):
    meta = b'{"caption": "c \\ud800 x", "w": NaN, "h": Infinity, "big": 1e400, "l": [-Infinity, 1.5], "\\udfff": 1}'
    samples, _, end = read(write_tar(tmp_path / "00000.tar", sample("k", meta=meta)))
    got = samples[0]["json"]
    assert (got["w"], got["h"], got["big"], got["l"]) == (None, None, None, [None, 1.5])
    assert got["caption"] == "c \ufffd x" and "\ufffd" in got
    assert end.changed == {"json_non_finite": 1, "invalid_unicode": 1}
    with ShardWriter(tmp_path / "out" / "00000.tar") as writer:  # our own NaN would be nulled too
        writer.write({"__key__": "k", "jpg": b"x", "json": {**got, "score": float("nan")}})
        writer.close({"count": 1, "rate": float("inf")})
    out = check_output_tar(tmp_path / "out" / "00000.tar")
    assert strict_json(out["k"]["json"])["score"] is None
    assert strict_json((tmp_path / "out" / "00000_stats.json").read_bytes())["rate"] is None
    write_json_atomic(tmp_path / "s.json", {"x": float("nan")})
    assert strict_json((tmp_path / "s.json").read_bytes()) == {"x": None}


# --------------------------------------------------------------------------------------------
# 6. Captions


def test_long_captions_are_truncated_or_skipped_and_counted(tmp_path):
    huge = "word " * 1_000_000  # 5 MB
    path = write_tar(tmp_path / "00000.tar", sample("long", huge) + good(1))
    samples, _, end = read(path, ReadLimits(max_caption_chars=100))
    assert len(samples[0]["caption"]) <= 100 and len(samples[0]["json"]["caption"]) <= 100
    assert end.changed == {"caption_truncated": 1}
    samples, skips, end = read(path, ReadLimits(max_caption_chars=100, long_captions="skip"))
    assert len(samples) == 1 and [(s.key, s.reason) for s in skips] == [("long", "caption_too_long")]


def test_undecodable_captions_have_their_own_reason_and_a_bom_is_no_text(tmp_path):
    members = [("latin.jpg", jpeg()), ("latin.txt", "café".encode("latin-1")),
               ("bom.jpg", jpeg()), ("bom.txt", "\ufeffa red square".encode("utf-8")),
               ("json.jpg", jpeg()), ("json.txt", b"\xff\xfe"), ("json.json", b'{"caption": "from json"}')]
    samples, skips, _ = read(write_tar(tmp_path / "00000.tar", members))
    assert [(s.key, s.reason) for s in skips] == [("latin", "caption_not_utf8")]
    assert [s["caption"] for s in samples] == ["a red square", "from json"]


# --------------------------------------------------------------------------------------------
# Images, as a person viewing them sees them


def png16(array: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (PIL writes no 16-bit colour PNG): 0 grey, 2 RGB, 4 grey+alpha."""
    h, w = array.shape[:2]
    rows = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def palette_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    return encoded(image, "PNG", transparency=0)  # index 0 (black in the palette) is transparent


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": a phone photo held upright
    return encoded(Image.new("RGB", (20, 10), "red"), "JPEG", exif=exif)


IMAGES = {  # name: (bytes, the RGB a viewer shows at the centre, size a viewer shows)
    "grey16": (png16(np.full((8, 8), 32896, np.uint16), 0), (128, 128, 128), (8, 8)),
    "rgb16": (png16(np.dstack([np.full((8, 8), v, np.uint16) for v in (65535, 0, 32896)]), 2), (255, 0, 128), (8, 8)),
    "greyalpha16": (png16(np.zeros((8, 8, 2), np.uint16), 4), (255, 255, 255), (8, 8)),
    "palette_transparent": (palette_with_transparency(), (255, 255, 255), (8, 8)),
    "la_transparent": (encoded(Image.new("LA", (8, 8), (0, 0))), (255, 255, 255), (8, 8)),
    "rgba_half": (encoded(Image.new("RGBA", (8, 8), (255, 0, 0, 128))), (255, 127, 127), (8, 8)),
    "colour_key": (encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG", transparency=(1, 2, 3)), (255, 255, 255), (8, 8)),
    "webp_rgba": (encoded(Image.new("RGBA", (8, 8), (0, 0, 255, 0)), "WEBP", lossless=True), (255, 255, 255), (8, 8)),
    "cmyk": (encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), (255, 0, 0), (8, 8)),
    "bilevel": (encoded(Image.new("1", (8, 8), 1)), (255, 255, 255), (8, 8)),
    "exif_rotated": (exif_rotated(), (255, 0, 0), (10, 20)),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_images_decode_as_a_viewer_shows_them(tmp_path, name):
    data, colour, size = IMAGES[name]
    samples, skips, _ = read(write_tar(tmp_path / "00000.tar", sample(name, image=data)))
    assert not skips
    image = samples[0]["image"]
    assert image.mode == "RGB" and image.size == size
    centre = np.asarray(image)[size[1] // 2, size[0] // 2].astype(int)
    assert np.abs(centre - colour).max() <= 3, f"{name}: {centre.tolist()}, a viewer shows {colour}"
    assert samples[0]["image_bytes"] == data  # the bytes are still copied unchanged


def test_non_browser_formats_and_extreme_shapes_are_skipped(tmp_path):
    members = (sample("tiff", image=encoded(Image.new("RGB", (8, 8)), "TIFF"))
               + sample("strip", image=encoded(Image.new("L", (5000, 1)), "PNG")) + good(1))
    _, skips, _ = read(write_tar(tmp_path / "00000.tar", members))
    assert [(s.key, s.reason) for s in skips] == [("tiff", "corrupt_image"), ("strip", "extreme_aspect")]


# --------------------------------------------------------------------------------------------
# Training: JSON a text selector cannot use


def test_training_skips_what_its_text_selector_cannot_use(tmp_path):
    from mmw2s.train.config import TextConfig
    from mmw2s.train.data import make_loader
    from mmw2s.train.texts import TextSelector

    odd = [{"mmw2s": {"synthetic": 5, "web_caption": "w", "web_kept": True}},
           {"mmw2s": {"synthetic": [{"caption": "s", "kept": True, "score": int("9" * 400)}]}}]
    members = [m for i, meta in enumerate(odd) for m in sample(f"odd{i}", meta=meta)] + good(2)
    write_tar(tmp_path / "00000.tar", members)
    select = TextSelector(TextConfig(source="mix", mix_synthetic_ratio=1.0))
    loader = make_loader(str(tmp_path), select, lambda ims: torch.zeros(len(ims), 3, 4, 4), batch_size=4,
                         workers=0, seed=0, rank=0, world=1, shuffle_buffer=1)
    batch = next(iter(loader))
    assert sorted(batch["keys"]) == ["000000000", "000000001", "odd0", "odd1"]
    assert batch["weights"].tolist() == [1.0] * 4  # a 400-digit score is no weight


# --------------------------------------------------------------------------------------------
# End to end: `mmw2s bootstrap` (tiny BLIP captioner and ITM filter) and `mmw2s train task=clip`


def hostile_members() -> list:
    """One shard holding a sample of most classes above between good ones."""
    nested = b"[" * 100_000 + b"]" * 100_000
    return (good(3) + sample("deep", meta=b'{"a": ' + nested + b"}")
            + sample("dupA", "a red square first") + sample("dupA", "second") + good(2, 3) + sample("dupA", "third")
            + sample("../../escape", "an escaping square") + sample("/tmp/ABS_ESCAPE", "an absolute square")
            + sample("nan", meta=b'{"caption": "a nan square", "width": NaN, "height": Infinity}')
            + [("latin.jpg", jpeg()), ("latin.txt", "carré".encode("latin-1"))]
            + sample("long", "a long square " * 50_000)
            + sample("palette", image=palette_with_transparency()) + sample("grey16", image=IMAGES["grey16"][0])
            + [link("evil.jpg", "/etc/passwd")])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    write_tar(folder / "00000.tar", hostile_members())
    write_tar(folder / "00001.tar.gz", good(4, 100), mode="w:gz")
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def bootstrapped(hostile, tiny_models, tmp_path_factory) -> dict[int, Path]:
    runs = {}
    for workers in (1, 2):
        runs[workers] = tmp_path_factory.mktemp(f"bootstrap_w{workers}")
        bootstrap(hostile, tiny_models, runs[workers], workers)
    return runs


@pytest.mark.slow
def test_bootstrap_finishes_on_hostile_shards_and_writes_only_safe_strict_output(hostile, bootstrapped):
    for workers, out in bootstrapped.items():
        summary = strict_json((out / "summary.json").read_bytes())
        assert summary["complete_shards"] == 2 and summary["damaged_shards"] == [], workers
        stats = strict_json((out / "shards" / "00000_stats.json").read_bytes())
        assert stats["inputs"] == expected_accounting(hostile / "00000.tar")[0] == 16
        assert stats["skipped_by_reason"] == {"bad_json": 1, "duplicate_key": 2, "caption_not_utf8": 1}
        assert sorted((s["key"], s["reason"]) for s in stats["skipped_samples"]) == [
            ("deep", "bad_json"), ("dupA", "duplicate_key"), ("dupA", "duplicate_key"), ("latin", "caption_not_utf8")]
        assert stats["changed_by_reason"] == {"key_renamed": 2, "json_non_finite": 1, "caption_truncated": 1}
        assert stats["ignored_members"] == 1 and stats["written"] == stats["decoded"] == 12
        written = check_output_tar(out / "shards" / "00000.tar")
        metas = {k: strict_json(m["json"]) for k, m in written.items()}
        originals = {m["mmw2s"].get("original_key") for m in metas.values()} - {None}
        assert originals == {"../../escape", "/tmp/ABS_ESCAPE"}
        assert metas["dupA"]["mmw2s"]["web_caption"] == "a red square first"
        assert (metas["nan"]["width"], metas["nan"]["height"]) == (None, None)
        assert len(written["long"]["txt"]) <= 200 and len(metas["long"]["caption"]) <= 200
        gz = strict_json((out / "shards" / "00001_stats.json").read_bytes())
        assert gz["damaged"] is None and gz["written"] == 4
    for name in ("00000.tar", "00001.tar"):  # workers=1 and workers=2 write the same bytes
        assert (bootstrapped[1] / "shards" / name).read_bytes() == (bootstrapped[2] / "shards" / name).read_bytes()


@pytest.mark.slow
def test_bootstrap_stops_on_a_failure_of_ours_naming_the_shard(hostile, tiny_models, tmp_path, monkeypatch):
    from mmw2s.bootstrap import writer

    def disk_full(self, sample):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.ShardWriter, "write", disk_full)
    with pytest.raises(ShardError, match=r"shard .*0000[01]\.tar.*No space left on device"):
        bootstrap(hostile, tiny_models, tmp_path, workers=1)
    assert not list((tmp_path / "shards").glob("*_stats.json"))  # nothing marked complete


@pytest.mark.slow
def test_clip_training_runs_on_hostile_shards_and_counts_the_skips(hostile, tmp_path):
    from mmw2s.config import load_config
    from mmw2s.train import run
    from mmw2s.train.config import TrainConfig

    cfg = load_config(TrainConfig, None, [
        f"data={hostile}", f"out={tmp_path}", "task=clip", "steps=2", "batch_size=4", "warmup_steps=1",
        "log_every=1", "checkpoint_every=2", "workers=1", "shuffle_buffer=4",
        "dual_encoder.arch=mmw2s-conv-tiny", "dual_encoder.image_size=32"])
    run(cfg)
    state = json.loads((tmp_path / "final" / "trainer_state.json").read_text())
    skipped = state["data"]["skipped"]
    assert skipped.get("bad_json", 0) >= 1 and skipped.get("duplicate_key", 0) >= 2
    named = {(s["key"], s["reason"]) for s in state["data"]["skipped_samples"]}
    assert ("deep", "bad_json") in named and all(s["shard"] for s in state["data"]["skipped_samples"])


def test_training_stops_clearly_when_no_sample_has_usable_text(tmp_path):
    from mmw2s.train.config import TextConfig
    from mmw2s.train.data import make_loader
    from mmw2s.train.texts import TextSelector

    write_tar(tmp_path / "00000.tar", good(3))  # readable, but none has the field trained on
    select = TextSelector(TextConfig(source="json", field="mmw2s.chosen"))
    loader = make_loader(str(tmp_path), select, lambda ims: torch.zeros(len(ims), 3, 4, 4), batch_size=2,
                         workers=0, seed=0, rank=0, world=1)
    with pytest.raises(RuntimeError, match="no readable samples with usable text"):
        next(iter(loader))  # before: read the shard forever, waiting for a first batch
