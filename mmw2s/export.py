"""`mmw2s export world=DIR out=DIR`: the world's test suites as CLIP_benchmark webdataset folders.

So that the stock `clip_benchmark eval` (or `mmw2s-clip-benchmark`, which also knows our
architectures) evaluates any model on the same images and captions as `mmw2s eval`::

    mmw2s export world=runs/demo/world out=runs/bench_folders
    clip_benchmark eval --dataset wds/world_retrieval --dataset_root runs/bench_folders/world_retrieval \\
        --model ViT-B-32 --pretrained laion2b_s34b_b79k --task zeroshot_retrieval

One folder per suite, `OUT/world_SUITE/` (classification: `classnames.txt`, templates, `test/N.tar`
of `png` + `cls`; retrieval: `dataset_type.txt`, `test/N.tar` of `png` + `txt`, captions one per line).
A folder already complete is kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
EXPORTABLE = ("color", "shape", "size", "position", "count", "retrieval")


@dataclass
class ExportConfig:
    """Which world's suites to write where."""

    world: str = field(metadata={"help": "world folder written by `mmw2s world` (its test/ split)"})
    out: str = field(metadata={"help": "folder that receives one CLIP_benchmark folder per suite"})
    suites: list[str] = field(default_factory=lambda: list(EXPORTABLE),
                              metadata={"help": f"suites to export, of {list(EXPORTABLE)}"})
    shard_size: int = field(default=10000, metadata={"help": "images per tar"})

    def validate(self) -> None:
        """Raise ValueError for suites CLIP_benchmark's folders cannot hold."""
        unknown = [s for s in self.suites if s not in EXPORTABLE]
        if unknown:
            raise ValueError(f"cannot export {unknown}: CLIP_benchmark folders hold {list(EXPORTABLE)} "
                             "(relation and captions are our own tasks)")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


def run(cfg: ExportConfig) -> dict[str, str]:
    """Write every suite's folder; returns suite -> folder."""
    from data_pipelines.benchmarks import load_world_test, world_suite, write_wds_benchmark

    items = load_world_test(cfg.world)
    folders = {}
    for suite in cfg.suites:
        folder = Path(cfg.out) / f"world_{suite}"
        write_wds_benchmark(world_suite(cfg.world, suite, items), folder, shard_size=cfg.shard_size)
        folders[suite] = str(folder)
        print(f"{suite}: {folder}  (clip_benchmark eval --dataset wds/world_{suite} --dataset_root {folder})")
    return folders
