"""The GPU section of `mmw2s bench`, checked on CPU: FLOP counting, the MFU arithmetic with a
given peak, tiny models through the same measuring code, and a clean skip without CUDA."""
import pytest
import torch

from mmw2s.bench import gpu
from mmw2s.bench.config import BenchConfig, GpuBench
from mmw2s.config import ConfigError, load_config

TINY_BLIP = {"vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
             "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "vocab_size": 100, "max_position_embeddings": 32,
                             "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "sep_token_id": 2}}


def tiny_settings(**overrides) -> GpuBench:
    base = dict(arch="mmw2s-conv-tiny", image_size=32, train_batch_size=4, train_steps=2, caption_batch_size=2,
                caption_tokens=3, caption_calls=1, eval_batch_size=4, eval_calls=2, warmup=1)
    return GpuBench(**{**base, **overrides})


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.4), ("NVIDIA H200 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0)])
def test_peak_is_looked_up_from_the_device_name(name, tflops):
    found, label = gpu.peak_bf16_tflops(name)
    assert found == tflops and label


def test_unknown_device_has_no_peak_and_a_given_peak_wins():
    assert gpu.peak_bf16_tflops("NVIDIA GeForce RTX 3090") is None
    cfg = load_config(BenchConfig, None, ["out=x", "gpu.peak_tflops=100"])
    tflops, label = gpu.resolve_peak(cfg, "NVIDIA GeForce RTX 3090")
    assert tflops == 100 and "gpu.peak_tflops" in label
    assert gpu.resolve_peak(load_config(BenchConfig, None, ["out=x"]), "NVIDIA GeForce RTX 3090") is None


def test_flops_of_a_linear_layer_forward_and_backward():
    layer = torch.nn.Linear(8, 16, bias=False)
    x = torch.randn(4, 8, requires_grad=True)
    forward = gpu.count_flops(lambda: layer(x))
    both = gpu.count_flops(lambda: layer(x).sum().backward())
    assert forward == 2 * 4 * 8 * 16  # one multiply-add per (row, in, out)
    assert both == 3 * forward  # backward: gradients of the input and of the weight


def test_utilisation_arithmetic():
    assert gpu.utilisation(2e12, 0.5, 8e12) == pytest.approx(0.5)  # 4 TFLOP/s of 8
    with pytest.raises(ValueError):
        gpu.utilisation(1e12, 0.0, 1e12)
    timed = gpu.Timed(calls=4, seconds=2.0)
    r = gpu.mfu_row("gpu_train", 3 * 10**12, timed, 6.0, "test peak", items_per_call=100)
    assert r["ours"] == pytest.approx(6.0) and r["ratio"] == pytest.approx(1.0)  # 3 TFLOP per 0.5 s
    assert r["details"]["items_per_s"] == 200 and r["details"]["flops_per_item"] == 3 * 10**10
    assert r["met"] is None and r["details"]["peak"] == "test peak"
    b = gpu.bound_row("gpu_eval", 10**12, timed, 4.0, "test peak", items_per_call=50)
    assert b["ours"] == 100 and b["theirs"] == pytest.approx(200) and b["ratio"] == pytest.approx(0.5)


def test_train_and_eval_rows_on_a_tiny_model_with_a_given_peak():
    peak = (0.001, "1 GFLOP/s (test)")
    train = gpu.measure_train(tiny_settings(), "cpu", peak, compile_model=False, bf16=False)
    assert train["name"] == "gpu_train" and train["unit"] == "TFLOP/s" and train["theirs"] == 0.001
    assert train["details"]["flops_per_item"] > 0
    assert train["ratio"] == pytest.approx(train["ours"] / train["theirs"], rel=1e-2)
    evaluation = gpu.measure_eval(tiny_settings(), "cpu", peak, compile_model=False, bf16=False)
    assert evaluation["details"]["flops_per_item"] < train["details"]["flops_per_item"]  # no text, no backward
    assert evaluation["ratio"] == pytest.approx(evaluation["ours"] / evaluation["theirs"], rel=1e-2)


def test_caption_row_counts_a_fixed_length_generation():
    model = gpu.blip_base(TINY_BLIP)
    row = gpu.measure_caption(tiny_settings(), "cpu", (0.001, "test"), bf16=False, model=model)
    longer = gpu.measure_caption(tiny_settings(caption_tokens=6), "cpu", (0.001, "test"), bf16=False, model=model)
    assert 0 < row["details"]["flops_per_item"] < longer["details"]["flops_per_item"]
    # `ours`, `theirs` and `ratio` are each rounded to 3 decimals: allow what that rounding moves
    assert row["ratio"] == pytest.approx(row["ours"] / row["theirs"], rel=1e-2,
                                         abs=0.0005 / row["theirs"] + 0.0005)


def test_blip_base_is_built_from_the_config_defaults():
    from transformers import BlipConfig

    config = BlipConfig()
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers,
            config.vision_config.image_size) == (768, 12, 384)  # ViT-B/16 at 384 px, as BLIP-base


def test_without_cuda_every_gpu_row_is_skipped_not_failed():
    rows = gpu.bench_gpu(load_config(BenchConfig, None, ["out=x"]), "cpu")
    assert [r["name"] for r in rows] == list(gpu.ROWS)
    assert all(r["skipped"].startswith("skipped: no CUDA") for r in rows)


def test_gpu_settings_are_validated():
    with pytest.raises((ConfigError, ValueError), match="gpu"):
        load_config(BenchConfig, None, ["out=x", "gpu.train_steps=0"])
    with pytest.raises((ConfigError, ValueError), match="gpu"):
        load_config(BenchConfig, None, ["out=x", "gpu.peak_tflops=-1"])
