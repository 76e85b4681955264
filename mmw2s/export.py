"""`mmw2s export world=DIR out=DIR`: the world's test suites as CLIP_benchmark webdataset folders.

So that the stock `clip_benchmark eval` (or `mmw2s-clip-benchmark`, which also knows our
architectures) evaluates any model on the same images and captions as `mmw2s eval`::

    mmw2s export world=runs/demo/world out=runs/bench_folders
    clip_benchmark eval --dataset wds/world_retrieval --dataset_root runs/bench_folders/world_retrieval \\
        --model ViT-B-32 --pretrained laion2b_s34b_b79k --task zeroshot_retrieval

One folder per suite, `OUT/world_SUITE/` (classification: `classnames.txt`, templates, `test/N.tar`
of `png` + `cls`; retrieval: `dataset_type.txt`, `test/N.tar` of `png` + `txt`, captions one per line).
The `captioning` suite is written in both forms captioning tools read, every gold caption of a scene
(each object ordering) a reference: `OUT/world_captioning_coco/` (`captions_test.json`,
`instances_test.json` with the shapes as categories, `images/`) and `OUT/world_captioning_wds/` (a
CLIP_benchmark folder: `png` + `txt` + `json`). A folder already complete is kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
EXPORTABLE = ("color", "shape", "size", "position", "count", "retrieval", "captioning")


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
    from mmw2s.data_pipelines.benchmarks import load_world_test, world_suite, write_wds_benchmark

    items = load_world_test(cfg.world)
    folders = {}
    for suite in cfg.suites:
        if suite == "captioning":
            folders.update(export_captioning(world_suite(cfg.world, suite, items), Path(cfg.out), cfg.shard_size))
            continue
        folder = Path(cfg.out) / f"world_{suite}"
        write_wds_benchmark(world_suite(cfg.world, suite, items), folder, shard_size=cfg.shard_size)
        folders[suite] = str(folder)
        print(f"{suite}: {folder}  (clip_benchmark eval --dataset wds/world_{suite} --dataset_root {folder})")
    return folders


def export_captioning(bench, out: Path, shard_size: int) -> dict[str, str]:
    """The world's caption suite as a COCO caption folder and as a CLIP_benchmark folder."""
    from mmw2s.data_pipelines.caption_benchmarks import write_coco_captions, write_wds_captions

    coco = write_coco_captions(bench, out / "world_captioning_coco")
    wds = write_wds_captions(bench, out / "world_captioning_wds", shard_size=shard_size)
    print(f"captioning: {coco}  (mmw2s eval benchmarks=[coco:{coco}/captions_test.json])")
    print(f"captioning: {wds}  (mmw2s eval benchmarks=[wds-captions:{wds}]; clip_benchmark eval "
          f"--task captioning --dataset wds/world_captioning --dataset_root {wds})")
    return {"captioning_coco": str(coco), "captioning_wds": str(wds)}
