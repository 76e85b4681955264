"""Figures of `mmw2s curate` for docs/curation.md: the memory of the dedup index, and the pass's
images/s against reading the same shards alone.

    python -m mmw2s.curate.measure memory --images 100000
    python -m mmw2s.curate.measure speed --input runs/demo/world/web --workers 2
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from mmw2s.data_pipelines import RecordLoader, ShardEnd, Skip, expand_urls

from mmw2s.curate.config import CurateConfig, DecontamConfig
from mmw2s.curate.run import Decider, HashRecord, curate, read_limits


def index_memory(images: int, seed: int = 0) -> dict:
    """Bytes the deciding process holds after `images` distinct images (random hashes: the worst
    case, every image is kept and indexed), measured by tracemalloc. Each record is made inside the
    trace and dropped after its decision, as the pass does, so what stays is what the index keeps."""
    rng = random.Random(seed)
    cfg = CurateConfig(input="-", out="-")
    tracemalloc.start()
    decider = Decider(cfg, [])
    for i in range(images):
        shard = f"{i // 10000:05d}"
        decider.decide(shard, HashRecord(url=shard, key=f"{i:09d}", sha256=f"{rng.getrandbits(256):064x}",
                                         phash=rng.getrandbits(64), width=256, height=256, caption=None))
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"images": images, "kept": len(decider.near), "bytes": current, "peak_bytes": peak,
            "bytes_per_image": round(current / images, 1), "mib_per_million": round(current / images * 1e6 / 2**20, 1)}


def read_speed(urls: list[str], workers: int) -> float:
    """Images/s of reading and decoding the shards alone (what every pass over them pays)."""
    started, n = time.perf_counter(), 0
    for record in RecordLoader(urls, read_limits(CurateConfig(input="-", out="-")), workers=workers):
        n += not isinstance(record, (Skip, ShardEnd))
    return n / (time.perf_counter() - started)


def curate_speed(urls: list[str], workers: int) -> float:
    """Images/s of the curate pass (read, hash, decide, write the index), no benchmark."""
    with tempfile.TemporaryDirectory() as out:
        cfg = CurateConfig(input="-", out=out, workers=workers, decontam=DecontamConfig())
        return curate(urls, cfg, [], Path(out))["images_per_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "speed"])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--input", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.what == "memory":
        print(json.dumps(index_memory(args.images)))
        return
    urls = expand_urls(args.input)
    reads = [read_speed(urls, args.workers) for _ in range(args.repeats)]
    passes = [curate_speed(urls, args.workers) for _ in range(args.repeats)]
    print(json.dumps({"images_per_s_read": round(max(reads), 1), "images_per_s_curate": round(max(passes), 1),
                      "ratio": round(max(passes) / max(reads), 3), "workers": args.workers}))


if __name__ == "__main__":
    main()
