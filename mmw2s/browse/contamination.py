"""The contaminated pairs of a `mmw2s curate` run as one static page: each training image beside
the benchmark image it copies, with both keys, the match kind and the pHash distance.

    CURATE_OUT/contamination.html   opens from disk: thumbnails are data: URIs, nothing is fetched

Rendered by Jinja2 with autoescape (captions and keys are untrusted text). The training images are
read again from the shards that hold a listed pair, and the benchmark's from its loader, so the
pass itself never carries pixels to the deciding process.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

from mmw2s.data_pipelines.benchmarks import load_benchmark
from mmw2s.data_pipelines import ReadLimits, iter_samples, shard_name

from mmw2s.browse.extract import thumbnail
from mmw2s.browse.site import environment

log = logging.getLogger(__name__)
PAGE = "contamination.html"


def _training_thumbs(urls: list[str], wanted: set[tuple[str, str]], size: int) -> dict[tuple[str, str], str]:
    """`(shard, key) -> data URI` of the wanted training images (only their shards are read)."""
    thumbs = {}
    shards = {s for s, _ in wanted}
    limits = ReadLimits(decode_images=False, require_caption=False)
    for url in (u for u in urls if shard_name(u) in shards):
        for sample in iter_samples(url, limits):
            if (shard_name(url), sample["__key__"]) in wanted:
                thumbs[shard_name(url), sample["__key__"]] = thumbnail(sample["image_bytes"], size)
    return thumbs


def _benchmark_thumbs(spec: str, world: str | None, wanted: set[str], size: int) -> dict[str, str]:
    """`example key -> data URI` of the wanted benchmark images."""
    thumbs = {}
    for n, example in enumerate(load_benchmark(spec, world).examples()):
        key = example.key or f"#{n}"
        if key in wanted:
            buf = io.BytesIO()
            example.image.convert("RGB").save(buf, "PNG")
            thumbs[key] = thumbnail(buf.getvalue(), size)
    return thumbs


def write_gallery(out: Path, urls: list[str], benchmarks: list[tuple[str, str]], world: str | None, report: dict,
                  pairs_per_benchmark: int = 200, size: int = 128) -> Path:
    """Render `out/contamination.html` from the contamination report (`mmw2s.curate.run`);
    `benchmarks` are `(spec, name)` pairs (`wds:/a/b` is named `wds:b`)."""
    sections = []
    for spec, name in benchmarks:
        entry = report["benchmarks"].get(name) or {}
        pairs = (entry.get("pairs") or [])[:pairs_per_benchmark]
        train = _training_thumbs(urls, {(p["shard"], p["key"]) for p in pairs}, size)
        bench = _benchmark_thumbs(spec, world, {p["of_example"] for p in pairs}, size)
        sections.append({"name": name, "stats": entry, "pairs": [
            {**p, "train_thumb": train.get((p["shard"], p["key"])), "bench_thumb": bench.get(p["of_example"])}
            for p in pairs]})
    path = out / PAGE
    path.write_text(environment().get_template(PAGE).render(sections=sections, out=str(out)), encoding="utf-8")
    log.info("contaminated pairs: %s", path)
    return path
