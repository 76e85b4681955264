"""The GPU section of `mmw2s bench`: how much of the accelerator our models' hot loops use.

Runs only when the bench's device is CUDA (on CPU its rows say why they were skipped). Three rows,
each `achieved / bound` on the same device in the same run, all models real classes with random
weights (built from their configs, nothing downloaded), bf16 autocast:

- `gpu_train`: model FLOPs utilisation (MFU) of CLIP training, open_clip `ViT-B-32` at 224 px:
  forward + backward + AdamW on in-memory batches; achieved model TFLOP/s vs the device's peak;
- `gpu_caption`: images/s of `generate()` of a BLIP-base-sized captioner (transformers `BlipConfig`
  defaults: ViT-B/16 at 384 px + BERT-base decoder), fixed-length captions, vs its FLOP bound
  (peak FLOP/s / FLOPs per image);
- `gpu_eval`: images/s of zero-shot evaluation's image encoding (`DualEncoder.encode_image`, the
  part that scales with the benchmark) vs its FLOP bound.

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` over one call of the
measured function (matmuls, convolutions, attention; forward and backward). The optimizer's
elementwise work and the softmax are not counted, as usual for MFU. The peak is the dense bf16 tensor
throughput of the device looked up from its name (`PEAK_BF16_TFLOPS`), or `gpu.peak_tflops`.
Everything here also runs on CPU with a given peak (tests use tiny models).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

from mmw2s.bench.common import row, skipped
from mmw2s.bench.config import BenchConfig

# (substring, qualifier, dense bf16 TFLOP/s, label): the first match wins, so qualified names first.
# NVIDIA's data sheets (without sparsity): H100 SXM 989.4, H100 NVL 835, H100 PCIe 756, H200 SXM
# 989.4, H200 NVL 835, A100 (SXM and PCIe) 312.
PEAK_BF16_TFLOPS: tuple[tuple[str, str, float, str], ...] = (
    ("H100", "NVL", 835.0, "H100 NVL"),
    ("H100", "PCIE", 756.0, "H100 PCIe"),
    ("H100", "", 989.4, "H100 SXM"),
    ("H200", "NVL", 835.0, "H200 NVL"),
    ("H200", "", 989.4, "H200 SXM"),
    ("A100", "", 312.0, "A100"),
)
ROWS = ("gpu_train", "gpu_caption", "gpu_eval")
UNITS = {"gpu_train": "TFLOP/s", "gpu_caption": "images/s", "gpu_eval": "images/s"}
MFU_REFERENCE = "a well-fed H100 reaches about 40% MFU on CLIP ViT-B/32 training"


def peak_bf16_tflops(device_name: str) -> tuple[float, str] | None:
    """`(dense bf16 TFLOP/s, label)` of a device by its CUDA name, or None when not in the table."""
    name = device_name.upper()
    for chip, qualifier, tflops, label in PEAK_BF16_TFLOPS:
        if chip in name and qualifier in name:
            return tflops, label
    return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (forward and, when `fn` calls backward, backward too)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def utilisation(flops_per_call: float, seconds_per_call: float, peak_flops: float) -> float:
    """Achieved FLOP/s over peak FLOP/s: the MFU of a training step, the bound fraction of inference."""
    if seconds_per_call <= 0 or peak_flops <= 0:
        raise ValueError("seconds and peak must be > 0")
    return flops_per_call / seconds_per_call / peak_flops


@dataclass
class Timed:
    """Calls timed after a warm-up, device work included (CUDA synchronized at both ends)."""

    calls: int
    seconds: float

    @property
    def seconds_per_call(self) -> float:
        return self.seconds / self.calls


def time_calls(fn: Callable[[], Any], calls: int, warmup: int, device: str) -> Timed:
    """Run `fn` `warmup` times (compilation, allocator, cuDNN autotune), then time `calls` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return Timed(calls, time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device: str, bf16: bool):
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------------
# The measured loops


def clip_train_step(dual: Any, batch_size: int, image_size: int, device: str, bf16: bool,
                    compile_model: bool = False) -> Callable[[], Any]:
    """One CLIP training step (forward, contrastive loss, backward, AdamW) on a fixed random batch.

    The batch stays on the device, so the step measures the model, not the loader.
    """
    import torch

    from mmw2s.models.losses import contrastive_loss

    model = dual.model.to(device).train()
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=str(device).startswith("cuda"))
    context = dual.model_cfg["text_cfg"].get("context_length", 77)
    vocab = dual.model_cfg["text_cfg"].get("vocab_size", 49408)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)  # (B, 3, H, W)
    tokens = torch.randint(1, vocab, (batch_size, context), generator=generator).to(device)  # (B, L)

    def step() -> None:
        with _autocast(device, bf16):
            out = step_model(images, tokens)
            loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def count_step() -> None:  # the eager model: FlopCounterMode sees every op
        with _autocast(device, bf16):
            out = model(images, tokens)
            loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        optimizer.zero_grad(set_to_none=True)

    step.count = count_step  # type: ignore[attr-defined]
    return step


def caption_call(model: Any, batch_size: int, new_tokens: int, device: str, bf16: bool) -> Callable[[], Any]:
    """`generate()` of exactly `new_tokens` tokens per image (greedy) on a fixed random batch."""
    import torch

    model = model.to(device).eval()
    size = model.config.vision_config.image_size
    pixels = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    @torch.inference_mode()
    def call() -> Any:
        with _autocast(device, bf16):
            # min = max new tokens: random weights would otherwise stop at a random length
            return model.generate(pixel_values=pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, num_beams=1)

    return call


def encode_images_call(dual: Any, batch_size: int, image_size: int, device: str, bf16: bool,
                       compile_model: bool = False) -> Callable[[], Any]:
    """Zero-shot evaluation's per-image work: `encode_image` of a fixed random batch."""
    import torch

    dual.model.to(device).eval()
    encode = torch.compile(dual.encode_image) if compile_model else dual.encode_image
    pixels = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)

    @torch.inference_mode()
    def call() -> Any:
        with _autocast(device, bf16):
            return encode(pixels)

    call.count = lambda: torch.inference_mode()(dual.encode_image)(pixels)  # type: ignore[attr-defined]
    return call


# --------------------------------------------------------------------------------------------
# Rows


def mfu_row(name: str, flops_per_call: int, timed: Timed, peak_tflops: float, peak_label: str,
            items_per_call: int, **details: Any) -> dict:
    """`ours` = achieved model TFLOP/s, `theirs` = peak TFLOP/s, ratio = MFU (no target)."""
    achieved = flops_per_call / timed.seconds_per_call / 1e12
    result = row(name, achieved, peak_tflops, "TFLOP/s", None, peak=peak_label,
                 items_per_s=round(items_per_call / timed.seconds_per_call, 2),
                 flops_per_item=flops_per_call // items_per_call, timed_calls=timed.calls,
                 seconds=round(timed.seconds, 3), **details)
    result["ratio"] = round(utilisation(flops_per_call, timed.seconds_per_call, peak_tflops * 1e12), 4)
    result["ours"] = float(f"{achieved:.4g}")  # 4 significant digits, also for tiny models on CPU
    return result


def bound_row(name: str, flops_per_call: int, timed: Timed, peak_tflops: float, peak_label: str,
              items_per_call: int, **details: Any) -> dict:
    """`ours` = images/s, `theirs` = the FLOP bound in images/s, ratio = the fraction of the bound."""
    rate = items_per_call / timed.seconds_per_call
    bound = peak_tflops * 1e12 / (flops_per_call / items_per_call)
    return row(name, rate, bound, "images/s", None, peak=peak_label, flops_per_item=flops_per_call // items_per_call,
               achieved_tflops=round(flops_per_call / timed.seconds_per_call / 1e12, 2),
               timed_calls=timed.calls, seconds=round(timed.seconds, 3), **details)


def measure_train(g: Any, device: str, peak: tuple[float, str], compile_model: bool, bf16: bool = True,
                  seed: int = 0) -> dict:
    """The `gpu_train` row: MFU of CLIP training of `g.arch` at `g.image_size`, batch `g.train_batch_size`."""
    from mmw2s.models import DualEncoderSpec, build_dual_encoder

    dual = build_dual_encoder(DualEncoderSpec(arch=g.arch, image_size=g.image_size, seed=seed))
    step = clip_train_step(dual, g.train_batch_size, g.image_size, device, bf16, compile_model)
    flops = count_flops(step.count)
    timed = time_calls(step, g.train_steps, g.warmup, device)
    return mfu_row("gpu_train", flops, timed, *peak, g.train_batch_size, arch=g.arch, image_size=g.image_size,
                   batch_size=g.train_batch_size, compile=compile_model, bf16=bf16, reference=MFU_REFERENCE,
                   measured="forward + contrastive loss + backward + AdamW on an in-memory batch; "
                            "FLOPs of forward + backward (FlopCounterMode)")


def blip_base(config_overrides: dict | None = None, seed: int = 0) -> Any:
    """A BLIP captioner of base size (BlipConfig defaults) with random weights, built from its config."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    overrides = config_overrides or {}
    config = BlipConfig(vision_config=overrides.get("vision_config"), text_config=overrides.get("text_config"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BlipForConditionalGeneration(config)


def measure_caption(g: Any, device: str, peak: tuple[float, str], bf16: bool = True, model: Any = None) -> dict:
    """The `gpu_caption` row: images/s of fixed-length greedy captions vs the FLOP bound."""
    model = model if model is not None else blip_base()
    call = caption_call(model, g.caption_batch_size, g.caption_tokens, device, bf16)
    flops = count_flops(call)
    timed = time_calls(call, g.caption_calls, g.warmup, device)
    v = model.config.vision_config
    return bound_row("gpu_caption", flops, timed, *peak, g.caption_batch_size, batch_size=g.caption_batch_size,
                     new_tokens=g.caption_tokens, image_size=v.image_size, bf16=bf16,
                     model=f"BlipForConditionalGeneration, vision {v.hidden_size}x{v.num_hidden_layers}, "
                           f"text {model.config.text_config.hidden_size}x{model.config.text_config.num_hidden_layers}, "
                           "random weights")


def measure_eval(g: Any, device: str, peak: tuple[float, str], compile_model: bool, bf16: bool = True,
                 seed: int = 0) -> dict:
    """The `gpu_eval` row: images/s of zero-shot evaluation's image encoding vs the FLOP bound."""
    from mmw2s.models import DualEncoderSpec, build_dual_encoder

    dual = build_dual_encoder(DualEncoderSpec(arch=g.arch, image_size=g.image_size, seed=seed))
    call = encode_images_call(dual, g.eval_batch_size, g.image_size, device, bf16, compile_model)
    flops = count_flops(call.count)
    timed = time_calls(call, g.eval_calls, g.warmup, device)
    return bound_row("gpu_eval", flops, timed, *peak, g.eval_batch_size, arch=g.arch, batch_size=g.eval_batch_size,
                     image_size=g.image_size, compile=compile_model, bf16=bf16,
                     measured="DualEncoder.encode_image (normalized embeddings) under inference_mode")


def resolve_peak(cfg: BenchConfig, device_name: str) -> tuple[float, str] | None:
    """The peak the rows divide by: `gpu.peak_tflops` when given, else the table's entry."""
    if cfg.gpu.peak_tflops:
        return cfg.gpu.peak_tflops, f"{device_name}: {cfg.gpu.peak_tflops:g} TFLOP/s bf16 dense (gpu.peak_tflops)"
    found = peak_bf16_tflops(device_name)
    if found is None:
        return None
    tflops, label = found
    return tflops, f"{device_name} -> {label}: {tflops:g} TFLOP/s bf16 dense"


def bench_gpu(cfg: BenchConfig, device: str) -> list[dict]:
    """The GPU rows, or one skipped row each saying why (no CUDA, unknown peak)."""
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        reason = "skipped: no CUDA device (the GPU section runs with device=cuda or auto on a GPU)"
        return [skipped(name, reason, UNITS[name]) for name in ROWS]
    name = torch.cuda.get_device_name()
    peak = resolve_peak(cfg, name)
    if peak is None:
        reason = f"skipped: no peak bf16 FLOP/s known for {name!r}; pass gpu.peak_tflops=..."
        return [skipped(n, reason, UNITS[n]) for n in ROWS]
    g, compile_model = cfg.gpu, cfg.compile
    measures = {"gpu_train": lambda: measure_train(g, device, peak, compile_model, seed=cfg.seed),
                "gpu_caption": lambda: measure_caption(g, device, peak),
                "gpu_eval": lambda: measure_eval(g, device, peak, compile_model, seed=cfg.seed)}
    rows = []
    # TF32 for the few fp32 matmuls left under bf16 autocast (the loss's logits), as trainers set it
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    for row_name, measure in measures.items():
        try:
            rows.append(measure())
        except Exception as exn:  # noqa: BLE001 - one failing row (e.g. out of memory) must not lose the others
            rows.append(skipped(row_name, f"failed: {type(exn).__name__}: {str(exn)[:300]}", UNITS[row_name]))
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return rows
