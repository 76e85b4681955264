"""Real vLLM (CPU build, its own venv) as a managed server: bootstrap two world shards through a
tiny random Qwen2-VL twice, and get the same captions both times.

Needs `.venv-vllm` (`make vllm-venv`, see scripts/vllm_venv.sh); skipped without it. Slow: the server
takes about two minutes to become healthy on 2 cores, and each run starts its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("MMW2S_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))

pytestmark = [
    pytest.mark.slow,
    # CI builds the venv (.ci/run): there a missing one fails the test instead of skipping it
    pytest.mark.skipif(not VLLM_PYTHON.exists() and not os.environ.get("CI"),
                       reason=f"no vLLM venv at {VLLM_PYTHON}: build it with `make vllm-venv` (scripts/vllm_venv.sh)"),
]


def synthetic(out: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    found[m.name] = [c["caption"] for c in json.loads(tar.extractfile(m).read())["mmw2s"]["synthetic"]]
    return found


def test_bootstrap_through_a_real_vllm_server_is_deterministic(tmp_path):
    from mmw2s.data_pipelines import iter_samples
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world
    from mmw2s.models import DualEncoderSpec, build_dual_encoder
    from mmw2s.models.vlm_tiny import build_tiny_vlm

    generate_world(WorldConfig(out=str(tmp_path / "world"), workers=1, samples_per_shard=4, clean=SplitConfig(0),
                               web=SplitConfig(8), test=SplitConfig(0)))
    world = tmp_path / "world" / "web"
    words = sorted({w for s in iter_samples(str(world)) for w in s["caption"].lower().split()})
    model = build_tiny_vlm("qwen2_vl_vllm", tmp_path / "qwen", words)
    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny")).save(tmp_path / "clip")
    (tmp_path / "empty.yaml").write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    for run in ("a", "b"):
        cmd = [sys.executable, "-m", "mmw2s.cli", "bootstrap", "--config", str(tmp_path / "empty.yaml"),
               f"input={world}", f"out={tmp_path / run}", "captioner.kind=endpoint", f"captioner.name={model}",
               "captioner.prompt=Describe this image in one sentence.", "captioner.endpoint.server=vllm",
               f"captioner.endpoint.server_python={VLLM_PYTHON}", "captioner.endpoint.health_timeout_s=500",
               "captioner.endpoint.server_args=[--max-model-len, '512', --dtype, float32, --max-num-seqs, '8']",
               "captioner.endpoint.timeout_s=120", "filter.kind=clip",
               f"filter.dual_encoder.arch=local-dir:{tmp_path / 'clip'}", "decoding.num_captions=2",
               "decoding.max_new_tokens=8", "decoding.min_new_tokens=2", "batch_size=4", "workers=0",
               "cpu_threads=1", "progress=false", "selection.nothing_kept=flag", "device=cpu"]
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
    a, b = synthetic(tmp_path / "a"), synthetic(tmp_path / "b")
    assert len(a) == 8 and a == b
    assert any(c.strip() for caps in a.values() for c in caps)  # the server wrote words
    block = json.loads(next((tmp_path / "a" / "shards").glob("*_stats.json")).read_text())
    assert block["endpoint"]["requests"] == 4
    with tarfile.open(next((tmp_path / "a" / "shards").glob("*.tar"))) as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["mmw2s"]["captioner"]["model_id"] == str(model) and meta["mmw2s"]["captioner"]["server"] == "vllm"
