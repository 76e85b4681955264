"""The browse row: building `mmw2s browse` for a run of `browse.samples` samples, against reading the
same shards with the project's reader alone (`iter_samples`, every image decoded).

The run is written by the bootstrap's own decide and write stages from the bench world's web
images, cycled under new keys to the wanted size, with seeded random filter scores: this row
measures the browser, not a captioner. `browse.thumb` is below the world's image size so every
thumbnail is decoded and resized, as web images would be. Each timed build starts from an empty
site folder (thumbnails extracted again); a warm-up pass of each side comes first, untimed, and the
passes of the two sides alternate; the best pass of each counts. CPU seconds of those passes are
in the details: on a loaded machine they vary less than the wall times.
"""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from mmw2s.bench.common import row
from mmw2s.bench.config import BenchConfig
from mmw2s.bench.fixtures import web_shards

DONE = "bench_run.done"


def make_run(cfg: BenchConfig, world: Path, folder: Path) -> Path:
    """A bootstrap run folder of `browse.samples` samples under `folder` (reused when complete)."""
    from mmw2s.data_pipelines import ReadLimits, ShardEnd, iter_samples
    from mmw2s.bootstrap.pipeline import Batch, Selection, decide_stage
    from mmw2s.bootstrap.thresholds import Thresholds
    from mmw2s.bootstrap.writer import ShardOutputs, write_stage

    b = cfg.browse
    marker = folder / DONE
    if marker.exists() and marker.read_text() == f"{b.samples} {b.samples_per_shard} {cfg.seed}":
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    pool = list(iter_samples(web_shards(world, cfg.world.web_shards), ReadLimits(decode_images=False)))
    rng = random.Random(cfg.seed)

    def stream():
        for i in range(b.samples):
            url = f"bench/{i // b.samples_per_shard:05d}.tar"  # names the output shard
            s = dict(pool[i % len(pool)], __key__=f"{i:09d}", __url__=url)
            other = pool[(i * 7 + 3) % len(pool)]["caption"]
            yield Batch(url, [s], synthetic=[[s["json"]["truth"]["gold_caption"], other]],
                        web_scores=[rng.random()], synthetic_scores=[[rng.random(), rng.random()]])
            if (i + 1) % b.samples_per_shard == 0 or i + 1 == b.samples:
                yield ShardEnd(url)

    provenance = {"captioner": {"name": "bench-random-scores"}, "filter": {"name": "bench-random-scores",
                                                                         "mode": "itm"}, "seed": cfg.seed}
    decided = decide_stage(stream(), Thresholds("absolute", 0.5, 0.5), Selection(nothing_kept="flag"), provenance)
    with ShardOutputs(folder / "shards") as outputs:
        for _ in write_stage(decided, outputs):
            pass
    marker.write_text(f"{b.samples} {b.samples_per_shard} {cfg.seed}")
    return folder


def read_pass(urls: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds to read every sample of `urls` with our reader, images decoded."""
    from mmw2s.data_pipelines import ReadLimits, iter_samples

    start, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in iter_samples(urls, ReadLimits(require_caption=False)))
    if n == 0:
        raise RuntimeError(f"no samples read from {len(urls)} shards")
    return time.perf_counter() - start, time.process_time() - cpu


def build_pass(run: Path, site: Path, cfg: BenchConfig) -> tuple[float, float]:
    """Wall and CPU seconds to build the browser of `run` into an empty `site` folder."""
    from mmw2s.browse.config import BrowseConfig
    from mmw2s.browse.site import build

    shutil.rmtree(site, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    build(BrowseConfig(run=str(run), out=str(site), thumb=cfg.browse.thumb, samples=cfg.browse.index_samples))
    return time.perf_counter() - start, time.process_time() - cpu


def bench_browse(cfg: BenchConfig, world: Path) -> dict:
    """Best of `browse.repeats` interleaved passes per side, after one warm-up pass of each."""
    run = make_run(cfg, world, Path(cfg.out) / "runs" / "browse_run")
    urls = sorted(str(p) for p in (run / "shards").glob("*.tar"))
    site = Path(cfg.out) / "runs" / "browse_site"
    sides = {"ours": lambda: build_pass(run, site, cfg), "theirs": lambda: read_pass(urls)}
    for measure in sides.values():  # warm-up: page cache, lazy imports (jinja2, templates)
        measure()
    best = {name: (float("inf"), float("inf")) for name in sides}
    for _ in range(cfg.browse.repeats):
        for name, measure in sides.items():
            best[name] = min(best[name], measure())  # the pass with the least wall time
    pages = sum(1 for _ in site.rglob("*.html"))
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    return row("browse", best["ours"][0], best["theirs"][0], "seconds", 2.0, better="lower",
               samples=cfg.browse.samples, shards=len(urls), pages=pages, site_mib=round(size / 2**20, 1),
               cpu_seconds={k: round(v[1], 2) for k, v in best.items()},
               cpu_ratio=round(best["ours"][1] / best["theirs"][1], 3),
               thumb=cfg.browse.thumb, index_samples=cfg.browse.index_samples,
               timed="best whole pass; ours from an empty site folder (every thumbnail extracted)",
               theirs_is="data_pipelines.loader.iter_samples over the same shards, images decoded")
