"""The `curate` row: the dedup / decontamination pass of `mmw2s curate` against reading the same
shards alone.

Hashing (SHA-256 of the bytes, a 64-bit pHash of a 32 x 32 grey thumbnail) should be cheap next to
decoding the images, which both sides pay: ours is the whole pass (read, decode, hash, decide in
shard order, write `index.parquet`), theirs `RecordLoader` over the same shards with the same
limits and workers. The two sides alternate, each side's best of `curate.repeats` counts (a
warm-up pass of each first). The details add the index's memory per million images, measured with
tracemalloc over `curate.index_images` distinct random hashes (every image kept: the worst case).
"""
from __future__ import annotations

from mmw2s.bench.common import row
from mmw2s.bench.config import BenchConfig

TARGET = 0.5


def bench_curate(cfg: BenchConfig, urls: list[str]) -> dict:
    """Best of interleaved passes per side, then the index memory."""
    from mmw2s.curate.measure import curate_speed, index_memory, read_speed

    read_speed(urls, cfg.workers), curate_speed(urls, cfg.workers)  # warm-up: page cache, imports
    reads, passes = [], []
    for _ in range(cfg.curate.repeats):
        passes.append(curate_speed(urls, cfg.workers))
        reads.append(read_speed(urls, cfg.workers))
    memory = index_memory(cfg.curate.index_images)
    return row("curate", max(passes), max(reads), "images/s", TARGET, shards=len(urls), workers=cfg.workers,
               each_run=[(round(p, 1), round(r, 1)) for p, r in zip(passes, reads)],
               index_images=memory["images"], index_bytes_per_image=memory["bytes_per_image"],
               index_mib_per_million=memory["mib_per_million"],
               theirs_is="RecordLoader over the same shards, images decoded, same workers (the read every pass pays)")
