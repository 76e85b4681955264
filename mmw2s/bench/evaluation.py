"""The evaluation row: images/s of `mmw2s eval` vs CLIP_benchmark on the same model and folder.

The world's test split is exported once as a CLIP_benchmark webdataset classification folder
(`classnames.txt`, `zeroshot_classification_templates.txt`, `test/nshards.txt`, `test/0.tar` with
`png` + `cls`; PNG so the pixels are exactly the world's). Both sides load the same saved dual
encoder with `open_clip.create_model_and_transforms("local-dir:...")` and run in this process,
timed from reading the folder to the metrics (model loading excluded on both sides), fp32:

- ours: `mmw2s.evaluate.run.evaluate_one` on `wds:FOLDER` (what `mmw2s eval` runs per pair);
- theirs: what `clip_benchmark eval --dataset wds/...` runs: `build_dataset`, its DataLoader over
  `dataset.batched(batch_size)` with the same workers, `zeroshot_classification.evaluate`.

The passes are interleaved after a warm-up of each; the best pass per side counts. acc1 must agree.

One compatibility fix, nothing else: clip_benchmark 1.6.2's `accuracy` calls `float()` on a
1-element array, an error since NumPy 2.4; it is replaced by the same top-k count
(`mmw2s.peers.fix_numpy_accuracy`, what `mmw2s-clip-benchmark` applies), a negligible part of the time.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mmw2s.bench.common import missing_peer, row, skipped
from mmw2s.bench.config import BenchConfig
from mmw2s.peers import fix_numpy_accuracy

METRIC_TOLERANCE = 1e-6


def export_wds_benchmark(world: Path, suite: str, folder: Path) -> Path:
    """Write world suite `suite` as a CLIP_benchmark webdataset folder (kept when complete)."""
    from mmw2s.data_pipelines.benchmarks import world_suite, write_wds_benchmark

    if (folder / "test" / "nshards.txt").exists():
        return folder
    return write_wds_benchmark(world_suite(world, suite), folder)


def ours_pass(scorer: Any, folder: Path, batch_size: int) -> tuple[dict, int, float]:
    """One `mmw2s eval` pass: `(metrics, images, seconds)`."""
    from mmw2s.data_pipelines.benchmarks import read_wds_benchmark
    from mmw2s.evaluate.run import evaluate_one
    from mmw2s.evaluate.tasks import TaskSettings

    start = time.perf_counter()
    bench = read_wds_benchmark(folder)
    record = evaluate_one(scorer, bench, f"wds:{folder}", TaskSettings(batch_size=batch_size))
    return record["metrics"], record["details"]["images"], time.perf_counter() - start


def theirs_pass(model: Any, transform: Any, tokenizer: Any, folder: Path, batch_size: int,
                workers: int, device: str) -> tuple[dict, float]:
    """One CLIP_benchmark pass, as its CLI runs a `wds/` dataset: `(metrics, seconds)`."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification

    fix_numpy_accuracy(zeroshot_classification)
    start = time.perf_counter()
    dataset = build_dataset(f"wds/{folder.name}", root=str(folder), transform=transform, split="test",
                            task="zeroshot_classification")
    loader = torch.utils.data.DataLoader(dataset.batched(batch_size), batch_size=None, shuffle=False,
                                         num_workers=workers)
    metrics = zeroshot_classification.evaluate(model, loader, tokenizer, dataset.classes, dataset.templates,
                                               device=device, amp=False)
    return metrics, time.perf_counter() - start


def load_both(path: Path, device: str, compile_models: bool) -> tuple[Any, tuple]:
    """Our scorer and CLIP_benchmark's `(model, transform, tokenizer)`, from the same saved folder."""
    import open_clip

    from mmw2s.evaluate.adapters import build_scorer
    from mmw2s.evaluate.config import ModelEntry

    scorer = build_scorer(ModelEntry(name="bench", kind="dual_encoder", path=f"local-dir:{path}"), device)
    name = f"local-dir:{path}"
    model, _, transform = open_clip.create_model_and_transforms(name, device=device)
    model.eval()
    if compile_models and device == "cuda":
        _compile_towers(scorer.dual.model)
        _compile_towers(model)
    return scorer, (model, transform, open_clip.get_tokenizer(name))


def _compile_towers(model: Any) -> None:
    """torch.compile the image tower (the part that scales with images), on both sides alike."""
    import torch

    model.visual = torch.compile(model.visual)


def bench_eval(cfg: BenchConfig, world: Path, models: Path, device: str, precision: str) -> dict:
    """Both evaluators on one folder; ratio of their best images/s, acc1 checked equal."""
    reason = missing_peer("clip_benchmark.metrics.zeroshot_classification", "clip_benchmark.datasets.builder")
    if reason:
        return skipped("eval", reason, "images/s", 1.5)
    e = cfg.eval
    folder = export_wds_benchmark(world, e.suite, Path(cfg.out) / "benchmarks" / f"world_{e.suite}")
    scorer, (model, transform, tokenizer) = load_both(models / "clip", device, cfg.compile)
    ours_m, images, _ = ours_pass(scorer, folder, e.batch_size)  # warm-up
    theirs_pass(model, transform, tokenizer, folder, e.batch_size, cfg.workers, device)
    ours_s, theirs_s = [], []
    for _ in range(e.repeats):
        ours_m, images, seconds = ours_pass(scorer, folder, e.batch_size)
        ours_s.append(seconds)
        theirs_m, seconds = theirs_pass(model, transform, tokenizer, folder, e.batch_size, cfg.workers, device)
        theirs_s.append(seconds)
    diff = {k: abs(ours_m[k] - theirs_m[k]) for k in ("acc1", "acc5", "mean_per_class_recall")
            if ours_m.get(k) is not None and k in theirs_m}
    result = row("eval", images / min(ours_s), images / min(theirs_s), "images/s", 1.5, images=images,
                 benchmark=str(folder), acc1_ours=ours_m["acc1"], acc1_theirs=theirs_m["acc1"],
                 metric_abs_diff=diff, precision="fp32 (our eval has no autocast setting)",
                 theirs_is="clip_benchmark: build_dataset + DataLoader + zeroshot_classification.evaluate")
    result["metrics_equal"] = all(d <= METRIC_TOLERANCE for d in diff.values())
    result["met"] = result["met"] and result["metrics_equal"]
    return result
