"""`mmw2s bench`: the command runs on a micro world and writes every enabled row (no timing asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmw2s.bench import common
from mmw2s.bench.config import DEFAULT_ONLY, BenchConfig
from mmw2s.config import load_config

ROOT = Path(__file__).resolve().parent.parent
MICRO = ["world.samples_per_shard=4", "world.web_shards=4", "world.test_samples=24", "world.image_size=32",
         "bootstrap.shards=2", "bootstrap.batch_size=4", "bootstrap.max_new_tokens=4",
         "caption_vlm.shards=2", "caption_vlm.batch_size=4", "caption_vlm.max_new_tokens=4", "caption_vlm.repeats=1",
         "train.batch_size=4", "train.steps=4", "train.log_every=2",
         "memory.small_shards=1", "memory.large_shards=4", "eval.repeats=1", "loading.repeats=1",
         "browse.samples=1000", "browse.samples_per_shard=250", "browse.repeats=1",
         "curate.repeats=1", "curate.index_images=2000"]


def check_rows(result: dict, names: list[str]) -> None:
    """Every enabled row, in order, with numeric ratios or a peer-missing skip reason; never a failure.

    `gpu` stands for its rows, which without CUDA are skipped for that reason."""
    from mmw2s.bench.gpu import ROWS as GPU_ROWS

    names = [n for name in names for n in (GPU_ROWS if name == "gpu" else [name])]
    assert [r["name"] for r in result["rows"]] == names
    for r in result["rows"]:
        if r.get("skipped") and r["name"] in GPU_ROWS and not torch.cuda.is_available():
            assert r["skipped"].startswith("skipped: no CUDA"), r["skipped"]
            continue
        if r.get("skipped"):
            assert r["skipped"].startswith("skipped:") and common.INSTALL_HINT in r["skipped"], r["skipped"]
            continue
        assert r["ours"] > 0 and r["theirs"] > 0 and r["ratio"] == pytest.approx(r["ours"] / r["theirs"], rel=1e-2)
        if r["name"] not in GPU_ROWS:  # the GPU rows report utilisation, without a target
            assert isinstance(r["met"], bool) and r["unit"] and r["target"] > 0


@pytest.mark.slow
def test_bench_command_writes_every_row(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "mmw2s.cli", "bench", f"out={out}", "workers=1", *MICRO],
                          cwd=ROOT, env=common.child_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    check_rows(result, list(DEFAULT_ONLY))  # engine runs only when named (it needs the vLLM venv)
    assert "comparison" in proc.stdout and "bench.json" in proc.stdout  # the table is printed
    evaluation = next(r for r in result["rows"] if r["name"] == "eval")
    if not evaluation.get("skipped"):  # same model, same folder: same metrics
        assert evaluation["metrics_equal"], evaluation["details"]["metric_abs_diff"]


def test_missing_peer_is_a_skipped_row_not_a_crash(tmp_path, monkeypatch):
    from mmw2s.bench import evaluation, training
    from mmw2s.bench.run import run

    monkeypatch.setattr(training, "missing_peer", lambda *m: f"skipped: {m[0]} unavailable; {common.INSTALL_HINT}")
    monkeypatch.setattr(evaluation, "missing_peer", lambda *m: f"skipped: {m[0]} unavailable; {common.INSTALL_HINT}")
    cfg = load_config(BenchConfig, None, [f"out={tmp_path}", "only=[train, eval, loading]", "workers=0", *MICRO])
    result = run(cfg)
    check_rows(result, ["train", "eval", "loading"])
    assert [bool(r.get("skipped")) for r in result["rows"]] == [True, True, False]
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == result["rows"]


def test_rows_say_which_way_the_target_points():
    faster = common.row("train", 120.0, 100.0, "samples/s", 1.0)
    leaner = common.row("memory", 1050.0, 1000.0, "MiB peak", 1.1, better="lower")
    worse = common.row("memory", 1200.0, 1000.0, "MiB peak", 1.1, better="lower")
    assert (faster["ratio"], faster["met"]) == (1.2, True)
    assert (leaner["met"], worse["met"]) == (True, False)
    table = common.format_table([faster, worse, common.skipped("eval", "skipped: no peer")])
    assert "NO" in table and "skipped: no peer" in table


def test_config_refuses_unknown_comparisons_and_too_few_shards(tmp_path):
    from mmw2s.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="unknown comparisons"):
        load_config(BenchConfig, None, [f"out={tmp_path}", "only=[speed]"])
    with pytest.raises((ConfigError, ValueError), match="web_shards"):
        load_config(BenchConfig, None, [f"out={tmp_path}", "world.web_shards=2", "memory.large_shards=16"])
