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
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON}: build it with "
                                                        "`make vllm-venv` (scripts/vllm_venv.sh)"),
]


def tiny_qwen2_vl(folder: Path, words: list[str]) -> Path:
    """A random Qwen2-VL that vLLM's CPU attention accepts: text head_dim 32 (it rejects 16 and less)."""
    from models import vlm_tiny
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    special = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = vlm_tiny.word_tokenizer(words, special, vlm_tiny.QWEN_TEMPLATE, image_token="<|image_pad|>",
                                  video_token="<|video_pad|>")
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in dict(
        image_token_id="<|image_pad|>", video_token_id="<|video_pad|>", vision_start_token_id="<|vision_start|>",
        vision_end_token_id="<|vision_end|>").items()}
    text = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024, vocab_size=len(tok),
                bos_token_id=tok.convert_tokens_to_ids("<s>"), pad_token_id=tok.convert_tokens_to_ids("<pad>"),
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "mrope_section": [8, 4, 4], "rope_theta": 10000.0})
    config = Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=64, hidden_size=128, num_heads=2,
                                                                patch_size=14, spatial_merge_size=2,
                                                                temporal_patch_size=2), **ids)
    import torch

    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = text["eos_token_id"], text["pad_token_id"]
    processor = Qwen2VLProcessor(Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=4 * 28 * 28), tok,
                                 Qwen2VLVideoProcessor(), chat_template=vlm_tiny.QWEN_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def synthetic(out: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    found[m.name] = [c["caption"] for c in json.loads(tar.extractfile(m).read())["mmw2s"]["synthetic"]]
    return found


def test_bootstrap_through_a_real_vllm_server_is_deterministic(tmp_path):
    from data_pipelines.shards import iter_samples
    from data_pipelines.world import SplitConfig, WorldConfig, generate_world
    from models import DualEncoderSpec, build_dual_encoder

    generate_world(WorldConfig(out=str(tmp_path / "world"), workers=1, samples_per_shard=4, clean=SplitConfig(0),
                               web=SplitConfig(8), test=SplitConfig(0)))
    world = tmp_path / "world" / "web"
    words = sorted({w for s in iter_samples(str(world)) for w in s["caption"].lower().split()})
    model = tiny_qwen2_vl(tmp_path / "qwen", words)
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
    first = next(iter(a))
    with tarfile.open(next((tmp_path / "a" / "shards").glob("*.tar"))) as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["mmw2s"]["captioner"]["model_id"] == str(model) and meta["mmw2s"]["captioner"]["server"] == "vllm"
    assert first
