"""Shard I/O: reading img2dataset-style shards safely, writing them atomically."""
import io
import hashlib
import json
import pathlib
import pickle
import tarfile

import pytest
import torch
import webdataset as wds
from PIL import Image

from mmw2s.data_pipelines import (ReadLimits, ShardEnd, ShardWriter, Skip, event_pipeline,
                                   expand_urls, is_complete, iter_samples, shard_name, stats_path)


def jpeg(color="red", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def good(i: int, shard: int = 0) -> dict:
    key = f"{shard:05d}{i:04d}"
    return {"__key__": key, "jpg": jpeg(), "txt": f"a red square {i}",
            "json": {"key": key, "caption": f"a red square {i}", "status": "success"}}


def make_shard(path, samples, stats=None):
    with ShardWriter(path) as writer:
        for s in samples:
            writer.write(s)
        writer.close(stats)
    return path


class Trace:
    """A pickle payload that creates a file when unpickled: proof if anything unpickles it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def collect(urls, limits=ReadLimits()):
    ends = []
    keys = [s["__key__"] for s in iter_samples(urls, limits, on_shard_end=ends.append)]
    return keys, ends


def test_written_shard_is_complete_and_readable(tmp_path):
    path = make_shard(tmp_path / "00000.tar", [good(i) for i in range(3)], {"count": 3})
    stats = json.loads(stats_path(path).read_text())
    assert is_complete(path) and stats["count"] == 3
    # the stats vouch for the tar's bytes: what resume checks
    assert stats["tar"] == {"bytes": path.stat().st_size, "members": 9,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    samples = list(iter_samples(str(path)))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    first = samples[0]
    assert first["image"].mode == "RGB" and first["caption"] == "a red square 0"
    assert first["image_bytes"] == good(0)["jpg"] and first["json"]["status"] == "success"
    assert first["__url__"] == str(path)


def test_plain_webdataset_reads_our_shards(tmp_path):
    path = make_shard(tmp_path / "00000.tar", [good(i) for i in range(3)])
    got = list(wds.WebDataset(str(path), shardshuffle=False).decode("pil"))
    assert [s["txt"] for s in got] == [f"a red square {i}" for i in range(3)]
    assert isinstance(got[0]["jpg"], Image.Image) and got[0]["json"]["key"] == "000000000"


def test_interrupted_writer_leaves_no_complete_shard(tmp_path):
    path = tmp_path / "00000.tar"
    with pytest.raises(RuntimeError):
        with ShardWriter(path) as writer:
            writer.write(good(0))
            raise RuntimeError("killed")
    assert not path.exists() and not is_complete(path)
    assert not (tmp_path / "00000.tar.partial").exists()
    # a rewrite after a partial run produces the complete shard
    make_shard(path, [good(0)])
    assert is_complete(path)


def test_bad_samples_are_skipped_counted_and_the_stream_goes_on(tmp_path):
    big = io.BytesIO()
    Image.new("L", (300, 300)).save(big, "PNG")
    samples = [good(0),
               {"__key__": "000000001", "jpg": b"\xff\xd8 not a jpeg", "txt": "broken"},
               {"__key__": "000000002", "jpg": jpeg()[:40], "txt": "truncated jpeg"},
               {"__key__": "000000003", "jpg": jpeg()},  # no caption anywhere
               {"__key__": "000000004", "png": big.getvalue(), "txt": "huge"},
               {"__key__": "000000005", "txt": "no image at all"},
               {"__key__": "000000006", "jpg": jpeg(), "txt": "x", "json": b"{not json"},
               good(7)]
    make_shard(tmp_path / "00000.tar", samples)
    keys, (end,) = collect(str(tmp_path), ReadLimits(max_pixels=200 * 200))
    assert keys == ["000000000", "000000007"]
    assert end.samples == 2 and end.damaged is None
    assert end.skipped == {"corrupt_image": 2, "no_caption": 1, "too_large": 1, "no_image": 1,
                           "bad_json": 1}


def test_caption_falls_back_to_json(tmp_path):
    make_shard(tmp_path / "00000.tar",
               [{"__key__": "k", "jpg": jpeg(), "json": {"caption": "from json"}}])
    assert next(iter_samples(str(tmp_path)))["caption"] == "from json"


def test_pickle_members_are_never_unpickled(tmp_path):
    trace = tmp_path / "trace"
    payload = pickle.dumps(Trace(trace))
    pickle.loads(payload)  # the payload works: unpickling it leaves the trace...
    assert trace.exists()
    trace.unlink()
    sample = dict(good(0), pyd=payload, pickle=payload, pth=payload, **{"cls.pyd": payload})
    make_shard(tmp_path / "00000.tar", [sample, good(1)])
    keys, (end,) = collect(str(tmp_path))
    assert keys == ["000000000", "000000001"] and end.ignored_members == 4
    # ...and neither our reader nor our worker pipeline ever does.
    loader = torch.utils.data.DataLoader(event_pipeline(expand_urls(str(tmp_path))),
                                         batch_size=None, num_workers=1)
    items = list(loader)
    assert all("pyd" not in s for s in items if isinstance(s, dict))
    assert not trace.exists()


def test_truncated_tar_yields_what_came_before_and_next_shard_goes_on(tmp_path):
    full = make_shard(tmp_path / "00001.tar", [good(i, 1) for i in range(6)])
    data = full.read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2])
    ends = []
    samples = list(iter_samples(str(tmp_path), on_shard_end=ends.append))
    from_cut = [s for s in samples if s["__url__"].endswith("00000.tar")]
    from_full = [s for s in samples if s["__url__"].endswith("00001.tar")]
    assert 0 < len(from_cut) < 6 and len(from_full) == 6  # a prefix, then the whole next shard
    assert [s["__key__"] for s in from_cut] == [f"00001{i:04d}" for i in range(len(from_cut))]
    assert ends[0].damaged and ends[0].samples == len(from_cut)
    assert ends[1].damaged is None


@pytest.mark.parametrize("cut", [0.1, 0.3, 0.5, 0.9])
def test_truncation_anywhere_is_reported(tmp_path, cut):
    path = make_shard(tmp_path / "full.tar", [good(i) for i in range(6)])
    with tarfile.open(path) as tar:  # cut within the members and end marker, not the record padding
        last = tar.getmembers()[-1]
        end = last.offset_data + -(-last.size // 512) * 512 + 1024
    (tmp_path / "00000.tar").write_bytes(path.read_bytes()[: int(end * cut)])
    _, (end,) = collect(str(tmp_path / "00000.tar"))
    assert end.damaged, f"a tar cut at {cut:.0%} was not reported damaged"


def test_missing_or_unreadable_shards(tmp_path):
    make_shard(tmp_path / "00000.tar", [good(0)])
    with pytest.raises(FileNotFoundError, match="shard not found"):
        expand_urls([str(tmp_path / "gone.tar"), str(tmp_path / "00000.tar")])
    # a source that fails is an unreadable shard (not a damaged one: nothing of it is kept, a
    # rerun reads it again); the next one goes on
    keys, ends = collect(["pipe:cat /nonexistent/x.tar", str(tmp_path / "00000.tar")])
    assert keys == ["000000000"] and "exit 1" in ends[0].unreadable and ends[0].damaged is None
    assert ends[1].damaged is None and ends[1].unreadable is None


def test_url_forms(tmp_path):
    for i in range(3):
        make_shard(tmp_path / f"{i:05d}.tar", [good(0, i)])
    expected = [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
    assert expand_urls(str(tmp_path)) == expected
    assert expand_urls(str(tmp_path / "*.tar")) == expected
    assert expand_urls(str(tmp_path / "{00000..00002}.tar")) == expected
    assert expand_urls([expected[0], expected[2]]) == [expected[0], expected[2]]
    with pytest.raises(FileNotFoundError, match="no shards match"):
        expand_urls(str(tmp_path / "x*.tar"))
    # pipe: and fsspec URLs are streamed by their openers
    keys, _ = collect(f"pipe:cat {expected[1]}")
    assert keys == ["000010000"]
    keys, _ = collect(f"file://{expected[2]}")
    assert keys == ["000020000"]


def test_worker_pipeline_keeps_each_shard_together(tmp_path):
    for i in range(4):
        make_shard(tmp_path / f"{i:05d}.tar", [good(j, i) for j in range(3)])
    loader = torch.utils.data.DataLoader(event_pipeline(expand_urls(str(tmp_path))),
                                         batch_size=None, num_workers=2)
    items = list(loader)
    ends = [x for x in items if isinstance(x, ShardEnd)]
    samples = [x for x in items if isinstance(x, dict)]
    assert sorted(e.name for e in ends) == ["00000", "00001", "00002", "00003"]
    assert sorted(s["__key__"] for s in samples) == sorted(f"{i:05d}{j:04d}" for i in range(4) for j in range(3))
    assert not any(isinstance(x, Skip) for x in items)
    # every shard's samples come before its end record
    for end in ends:
        pos = items.index(end)
        assert all(items.index(s) < pos for s in samples if s["__url__"] == end.url)


@pytest.mark.parametrize("url,name", [
    ("/data/laion/00042.tar", "00042"),
    ("pipe:aws s3 cp s3://bucket/laion/00042.tar -", "00042"),
    ("pipe:curl -s -L https://host/shards/00042.tar?download=1", "00042"),
    ("gs://bucket/cc12m/00042.tar", "00042"),
])
def test_shard_names_follow_img2dataset_ids(url, name):
    assert shard_name(url) == name


def test_complete_with_tells_missing_matching_and_other_settings_apart(tmp_path):
    from mmw2s.data_pipelines import OtherSettings, complete_with

    path = tmp_path / "00000.tar"
    assert not complete_with(path, "abc")  # nothing yet: redo
    make_shard(path, [good(0)], {"count": 1, "fingerprint": "abc"})
    assert complete_with(path, "abc")  # made by these settings: skip
    with pytest.raises(OtherSettings, match="fingerprint abc, now xyz"):
        complete_with(path, "xyz")  # made by other settings: refuse to mix


def _passes(urls, replay_bytes, records):
    """The first `records` records of a repeated stream: (kind, key, pixels) each."""
    out = []
    for item in event_pipeline(urls, repeat=True, replay_bytes=replay_bytes):
        if isinstance(item, dict):
            out.append(("sample", item["__key__"], item["image"].tobytes(), item["json"]["caption"]))
            item.pop("image")  # a stage that changes the sample dict: the next pass must not see it
        else:
            out.append((type(item).__name__, getattr(item, "key", None), None, None))
        if len(out) == records:
            return out


def test_replayed_passes_are_the_records_read_from_disk(tmp_path):
    bad = {"__key__": "00000bad", "jpg": b"not a jpeg", "txt": "x"}
    urls = [str(make_shard(tmp_path / "a-00000.tar", [good(0), bad, good(1)])),
            str(make_shard(tmp_path / "a-00001.tar", [good(0, 1), good(1, 1)]))]
    # three passes over 2 shards: 2 + 1 skip + 2 ends = 7 records a pass
    assert _passes(urls, 1 << 20, 21) == _passes(urls, 0, 21)
    kinds = [k for k, *_ in _passes(urls, 1 << 20, 21)]
    assert kinds.count("Skip") == 3 and kinds.count("ShardEnd") == 6


def test_replay_keeps_only_the_shards_that_fit_its_budget(tmp_path):
    from mmw2s.data_pipelines import ShardReplay

    url = str(make_shard(tmp_path / "b-00000.tar", [good(i) for i in range(4)]))
    small, roomy = ShardReplay(budget_bytes=1000), ShardReplay(budget_bytes=1 << 20)
    for replay in (small, roomy):
        first = [r for r in replay.events(url, ReadLimits()) if isinstance(r, dict)]
        again = [r for r in replay.events(url, ReadLimits()) if isinstance(r, dict)]
        assert [r["__key__"] for r in again] == [r["__key__"] for r in first] == [f"00000{i:04d}" for i in range(4)]
    assert small.kept == {} and list(roomy.kept) == [url]  # 4 16x16 images are ~3 kB: over 1000 bytes
    assert small.too_big == {url} and roomy.too_big == set()
