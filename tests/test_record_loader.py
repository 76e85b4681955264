"""`RecordLoader`: records sent from the workers in chunks arrive complete, each shard in order with
its skips and its `ShardEnd` last, whatever the chunk size and worker count."""
import io

import pytest
from PIL import Image

from mmw2s.data_pipelines import ReadLimits, RecordLoader, ShardEnd, ShardWriter, Skip, shard_events


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "JPEG")
    return buf.getvalue()


def make_shards(folder, shards: int = 3, per_shard: int = 7) -> list[str]:
    urls = []
    for shard in range(shards):
        path = folder / f"{shard:05d}.tar"
        with ShardWriter(path) as writer:
            for i in range(per_shard):
                image = b"not a jpeg" if i == 2 else jpeg()  # one corrupt sample per shard
                writer.write({"__key__": f"{shard:05d}{i:04d}", "jpg": image, "txt": f"caption {i}"})
            writer.close()
        urls.append(str(path))
    return urls


def by_shard(records) -> dict[str, list]:
    """Each shard's records in arrival order, as (kind, key or count)."""
    out: dict[str, list] = {}
    for r in records:
        if isinstance(r, ShardEnd):
            out.setdefault(r.url, []).append(("end", r.samples, dict(r.skipped)))
        elif isinstance(r, Skip):
            out.setdefault(r.url, []).append(("skip", r.key, r.reason))
        else:
            out.setdefault(r["__url__"], []).append(("sample", r["__key__"], r["caption"]))
    return out


@pytest.mark.parametrize("workers, chunk", [(0, 1), (0, 4), (1, 3), (2, 32)])
def test_records_arrive_complete_and_in_shard_order(tmp_path, workers, chunk):
    urls = make_shards(tmp_path)
    expected = by_shard(e for url in urls for e in shard_events(url, ReadLimits()))
    got = by_shard(RecordLoader(urls, ReadLimits(), workers=workers, chunk=chunk))
    assert got == expected
    assert all(records[-1][0] == "end" and records[-1][1:] == (6, {"corrupt_image": 1})
               for records in got.values())


def test_chunk_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="chunk"):
        RecordLoader(make_shards(tmp_path, shards=1), chunk=0)
