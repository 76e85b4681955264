"""The peers read what we write: open_clip_train on bootstrap output, clip_benchmark on our folders
and students, plain webdataset readers on our shards.

Each test runs the peer's own code (its CLI in a subprocess, as a user would), through our
launchers where a stock process cannot know our architectures (`mmw2s.peers`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmw2s.config import load_config

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("clip_benchmark", reason="the peers extra is not installed: pip install -e '.[peers]'")
pytest.importorskip("pandas", reason="open_clip_train needs pandas: pip install -e '.[peers]'")


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1"}


def peer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "mmw2s.peers", *args], cwd=cwd, env=env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(out=str(out), workers=1, samples_per_shard=8, clean=SplitConfig(0),
                               web=SplitConfig(16), test=SplitConfig(48)))
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A conv student saved as `mmw2s train task=clip` saves one (random weights)."""
    from mmw2s.models import DualEncoderSpec, build_dual_encoder

    folder = tmp_path_factory.mktemp("student")
    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny", seed=3)).save(folder)
    return folder


@pytest.fixture(scope="module")
def bootstrapped(world, student, tmp_path_factory):
    """`mmw2s bootstrap` output: a tiny BLIP captioner and our conv CLIP filter, nothing_kept=flag."""
    from mmw2s.data_pipelines import iter_samples
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.bootstrap.run import run
    from mmw2s.models import CaptionerSpec, build_captioner

    out = tmp_path_factory.mktemp("boot")
    captions = [s["caption"] for s in iter_samples(str(world / "web"))]
    build_captioner(CaptionerSpec(name="blip-tiny"), train_captions=captions).save(out / "captioner")
    run(load_config(BootstrapConfig, None, [
        f"input={world / 'web'}", f"out={out / 'run'}", f"captioner.name={out / 'captioner'}", "filter.kind=clip",
        f"filter.dual_encoder.arch=local-dir:{student}", "thresholds.web=0.0", "thresholds.synthetic=0.0",
        "decoding.num_captions=1", "decoding.max_new_tokens=6", "batch_size=8", "workers=0", "progress=false",
        "selection.nothing_kept=flag"]))
    return out / "run" / "shards"


@pytest.mark.slow
def test_open_clip_train_trains_on_bootstrap_output(bootstrapped, tmp_path):
    peer("open_clip_train", "--train-data", str(bootstrapped / "{00000..00001}.tar"), "--dataset-type",
         "webdataset", "--train-num-samples", "16", "--model", "mmw2s-conv-tiny", "--batch-size", "4",
         "--epochs", "1", "--workers", "1", "--device", "cpu", "--logs", str(tmp_path / "logs"), "--name", "t",
         "--save-frequency", "1", "--lr", "1e-3", "--warmup", "1", cwd=tmp_path)
    checkpoints = list((tmp_path / "logs" / "t" / "checkpoints").glob("epoch_1.pt"))
    assert checkpoints, "open_clip_train saved no checkpoint"
    log = (tmp_path / "logs" / "t" / "out.log").read_text()
    assert "Train Epoch: 0" in log and "Loss:" in log


def test_plain_webdataset_readers_get_every_sample_with_txt_and_json(bootstrapped):
    """img2dataset-style consumers: `.to_tuple(image, txt, json)` must read every sample, flagged too."""
    import webdataset as wds

    urls = [str(p) for p in sorted(bootstrapped.glob("*.tar"))]
    rows = list(wds.WebDataset(urls, shardshuffle=False).to_tuple("jpg;png;webp", "txt", "json"))
    stats = [json.loads(p.read_text()) for p in sorted(bootstrapped.glob("*_stats.json"))]
    assert len(rows) == sum(s["written"] for s in stats) == 16
    for _, txt, meta in rows:
        block = json.loads(meta)["mmw2s"]
        assert txt.decode() == (block["chosen"] if block["chosen"] is not None else block["web_caption"])


def mmw2s_eval(student: Path, folder: Path) -> dict:
    from mmw2s.data_pipelines.benchmarks import read_wds_benchmark
    from mmw2s.evaluate.adapters import build_scorer
    from mmw2s.evaluate.config import ModelEntry
    from mmw2s.evaluate.run import evaluate_one
    from mmw2s.evaluate.tasks import TaskSettings

    scorer = build_scorer(ModelEntry(name="s", kind="dual_encoder", path=f"local-dir:{student}"), "cpu")
    return evaluate_one(scorer, read_wds_benchmark(folder), f"wds:{folder}", TaskSettings(batch_size=16))


def clip_benchmark(student: Path, folder: Path, task: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{folder.name}.json"
    peer("clip_benchmark", "eval", "--model", f"local-dir:{student}", "--pretrained", "", "--dataset",
         f"wds/{folder.name}", "--dataset_root", str(folder), "--task", task, "--batch_size", "16",
         "--num_workers", "0", "--recall_k", "1", "5", "--output", str(out), "--quiet", cwd=tmp_path)
    return json.loads(out.read_text())["metrics"]


@pytest.mark.slow
def test_clip_benchmark_agrees_with_mmw2s_eval_on_exported_folders(world, student, tmp_path):
    from mmw2s.export import ExportConfig, run as export

    folders = export(ExportConfig(world=str(world), out=str(tmp_path / "bench"), suites=["color", "retrieval"]))
    assert (Path(folders["retrieval"]) / "dataset_type.txt").read_text().strip() == "retrieval"
    ours = mmw2s_eval(student, Path(folders["color"]))["metrics"]
    theirs = clip_benchmark(student, Path(folders["color"]), "zeroshot_classification", tmp_path)
    assert ours["acc1"] == pytest.approx(theirs["acc1"], abs=1e-9)
    record = mmw2s_eval(student, Path(folders["retrieval"]))
    theirs = clip_benchmark(student, Path(folders["retrieval"]), "zeroshot_retrieval", tmp_path)
    queries = {"image": record["details"]["texts"], "text": record["details"]["images"]}
    assert queries["image"] > queries["text"] == 48  # several captions per image
    for metric, value in record["metrics"].items():
        if metric in theirs:  # recall@1 and @5, both ways; counted in queries
            n = queries[metric.split("_")[0]]
            # A random student scores many pairs within float32 rounding of each other, and the two
            # sides batch their matmuls differently: one near-tie may fall either way.
            assert abs(round(value * n) - round(theirs[metric] * n)) <= 1, metric


def test_retrieval_recall_is_clip_benchmarks_when_images_share_a_caption():
    """The same score matrix through CLIP_benchmark's own recall code and ours: equal to the query."""
    import torch
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    from mmw2s.evaluate import metrics as M

    captions = [["a red circle"], ["a red circle", "a blue star"], ["a blue star"], ["a green cross"]]
    texts, positives = M.positives_from_captions(captions)
    scores = torch.randn(len(texts), len(captions), generator=torch.Generator().manual_seed(0))  # (T, I)
    scores[:, 1] += 0.5  # image 1 is every text's favourite: the shared captions decide the counts
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    theirs = torch.zeros_like(scores, dtype=torch.bool)
    theirs[torch.arange(len(texts)), owner] = True  # what their evaluate() builds
    for k in (1, 2):
        ours = M.retrieval_metrics(scores, positives, ks=(k,))
        assert ours[f"image_retrieval_recall@{k}"] == (recall_at_k(scores, theirs, k) > 0).float().mean().item()
        assert ours[f"text_retrieval_recall@{k}"] == (recall_at_k(scores.T, theirs.T, k) > 0).float().mean().item()
    _, shared = M.positives_from_captions(captions, shared=True)
    assert M.retrieval_metrics(scores, shared, ks=(1,)) != M.retrieval_metrics(scores, positives, ks=(1,))
