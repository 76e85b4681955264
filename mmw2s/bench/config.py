"""Config schema of `mmw2s bench` (kept light: no torch import, `mmw2s --help` loads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

COMPARISONS = ("bootstrap", "caption_vlm", "train", "eval", "loading", "memory", "ray", "browse", "gpu", "curate",
               "engine")
# `engine` needs vLLM's own venv and minutes of server start-up: run it when asked (only=[engine])
DEFAULT_ONLY = tuple(c for c in COMPARISONS if c != "engine")


@dataclass
class WorldSize:
    """The synthetic world the bench builds under `out/world` (reused when already complete)."""

    samples_per_shard: int = field(default=32, metadata={"help": "samples per web / test shard"})
    web_shards: int = field(default=16, metadata={"help": "web shards (the memory row's large run "
                                                           "reads memory.large_shards of them)"})
    test_samples: int = field(default=256, metadata={"help": "test split size (the eval benchmark)"})
    image_size: int = field(default=64, metadata={"help": "side of the images in pixels"})


@dataclass
class BootstrapBench:
    """The bootstrap row: end-to-end images/s vs the forward passes alone (the ceiling)."""

    shards: int = field(default=16, metadata={"help": "web shards bootstrapped end to end"})
    batch_size: int = field(default=16, metadata={"help": "images per forward pass (both sides)"})
    num_captions: int = field(default=2, metadata={"help": "synthetic captions per image"})
    max_new_tokens: int = field(default=12, metadata={"help": "longest synthetic caption in tokens"})
    filter: Literal["clip", "blip"] = field(default="clip", metadata={"help": "the filter kind"})
    captioner: str = field(default="blip-tiny", metadata={"help": "registered captioner config (built "
                                                                  "from scratch) or a saved folder / hub id"})
    filter_model: str = field(default="mmw2s-conv-tiny", metadata={
        "help": "the filter: open_clip arch (clip) or BLIP ITM config / folder (blip)"})


@dataclass
class CaptionVlmBench:
    """The caption_vlm row: bootstrap with a prompted VLM captioner vs its forward passes alone."""

    family: str = field(default="qwen2_vl", metadata={"help": "tiny random VLM family (models.vlm_tiny: "
                                                              "blip-2, llava, qwen2_vl, smolvlm)"})
    prompt: str = field(default="Describe this image in one sentence.", metadata={"help": "the captioning prompt"})
    shards: int = field(default=16, metadata={"help": "web shards bootstrapped end to end (512 images: as "
                                                      "for the bootstrap row, start-up costs stay small)"})
    batch_size: int = field(default=16, metadata={"help": "images per generate() call (both sides)"})
    num_captions: int = field(default=2, metadata={"help": "synthetic captions per image (nucleus)"})
    max_new_tokens: int = field(default=24, metadata={"help": "longest synthetic caption in tokens"})
    repeats: int = field(default=2, metadata={"help": "runs (each: end to end, then the ceiling); each "
                                                      "side's best counts"})


@dataclass
class CurateBench:
    """The curate row: the dedup / decontamination pass vs reading the same shards alone."""

    repeats: int = field(default=3, metadata={"help": "interleaved passes per side; each side's best counts"})
    index_images: int = field(default=100_000, metadata={
        "help": "distinct random hashes put through the dedup index to measure its memory"})


@dataclass
class EngineBench:
    """The engine row: bootstrap through a vLLM server (endpoint captioner) vs in-process generate."""

    vllm_python: str = field(default=".venv-vllm/bin/python", metadata={
        "help": "the Python of vLLM's own venv (`make vllm-venv`); relative to the repo"})
    prompt: str = field(default="Describe this image in one sentence.", metadata={"help": "the captioning prompt"})
    shards: int = field(default=4, metadata={"help": "web shards bootstrapped by each side"})
    batch_size: int = field(default=16, metadata={"help": "images per generate() call (in-process side)"})
    concurrency: int = field(default=64, metadata={"help": "requests in flight (endpoint side)"})
    max_new_tokens: int = field(default=32, metadata={"help": "longest caption in tokens (greedy, both sides)"})
    images: int = field(default=64, metadata={"help": "images of the overhead and concurrency measurements"})
    sweep: list[int] = field(default_factory=lambda: [1, 4, 16, 64], metadata={
        "help": "concurrencies of the endpoint captioner's images/s curve"})
    repeats: int = field(default=2, metadata={"help": "interleaved pairs (our captioner, the server alone) "
                                                      "of the overhead measurement; each side's best counts"})


@dataclass
class TrainBench:
    """The training row: `mmw2s train task=clip` vs open_clip_train, same everything."""

    arch: str = field(default="mmw2s-conv-tiny", metadata={"help": "open_clip architecture of both runs"})
    batch_size: int = field(default=32, metadata={"help": "samples per step (both runs)"})
    steps: int = field(default=24, metadata={"help": "optimizer steps of each run"})
    log_every: int = field(default=4, metadata={"help": "steps per timed window; the first window "
                                                        "(warm-up: start of workers, shuffle buffers) is dropped"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of both runs"})


@dataclass
class EvalBench:
    """The evaluation row: `mmw2s eval` vs CLIP_benchmark on one webdataset benchmark folder."""

    suite: str = field(default="color", metadata={"help": "world suite exported as a CLIP_benchmark "
                                                          "classification folder (color, shape, size, position)"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass (both sides)"})
    repeats: int = field(default=2, metadata={"help": "timed passes per side, interleaved; the best counts"})


@dataclass
class LoadingBench:
    """The data-loading row: our shard reader vs a plain webdataset.WebDataset loop."""

    repeats: int = field(default=3, metadata={"help": "timed passes per side, interleaved; the best counts"})


@dataclass
class MemoryBench:
    """The memory row: peak RSS of a bootstrap over few shards vs many of the same size."""

    small_shards: int = field(default=2, metadata={"help": "shards of the small run"})
    large_shards: int = field(default=16, metadata={"help": "shards of the large run (<= world.web_shards)"})


@dataclass
class BrowseBench:
    """The browse row: building `mmw2s browse` vs reading the same shards with our reader alone."""

    samples: int = field(default=10000, metadata={"help": "samples of the browsed run (the world's web "
                                                           "images cycled under new keys)"})
    samples_per_shard: int = field(default=1000, metadata={"help": "samples per shard of that run"})
    thumb: int = field(default=48, metadata={"help": "thumbnail side; below world.image_size, so every "
                                                     "image is decoded and resized"})
    index_samples: int = field(default=1000, metadata={"help": "cards on the index page"})
    repeats: int = field(default=2, metadata={"help": "timed passes per side, interleaved; the best counts"})


@dataclass
class GpuBench:
    """The GPU rows (CUDA only): MFU of CLIP training, captioning and evaluation vs the FLOP bound.

    Models are real classes with random weights: open_clip `arch` at `image_size`, and a BLIP
    captioner of base size (transformers `BlipConfig` defaults: ViT-B/16 at 384 px, BERT-base).
    """

    arch: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture of the train and eval rows"})
    image_size: int = field(default=224, metadata={"help": "input resolution of the train and eval rows"})
    train_batch_size: int = field(default=256, metadata={"help": "samples per training step"})
    train_steps: int = field(default=20, metadata={"help": "timed training steps"})
    caption_batch_size: int = field(default=64, metadata={"help": "images per generate() call"})
    caption_tokens: int = field(default=20, metadata={"help": "tokens generated per image (fixed length)"})
    caption_calls: int = field(default=5, metadata={"help": "timed generate() calls"})
    eval_batch_size: int = field(default=512, metadata={"help": "images per encode_image call"})
    eval_calls: int = field(default=20, metadata={"help": "timed encode_image calls"})
    warmup: int = field(default=3, metadata={"help": "untimed calls first (compilation, autotuning)"})
    peak_tflops: Optional[float] = field(default=None, metadata={
        "help": "dense bf16 peak of the GPU in TFLOP/s; null: looked up from the device name "
                "(H100, H200, A100)"})


@dataclass
class BenchConfig:
    """`mmw2s bench`: ratios of our stages vs the tools users would pick instead, measured side by side."""

    out: str = field(metadata={"help": "folder: world/, models/, runs of both sides, bench.json"})
    only: list[str] = field(default_factory=lambda: list(DEFAULT_ONLY), metadata={
        "help": f"comparisons to run, of {list(COMPARISONS)} (engine only when named)"})
    threads: int = field(default=1, metadata={
        "help": "torch intra-op threads of every measured process, both sides (OMP_NUM_THREADS too)"})
    workers: int = field(default=1, metadata={"help": "data-loader workers of both sides"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "auto: CUDA when present, else CPU; the same device for both sides"})
    precision: Literal["auto", "fp32", "bf16"] = field(default="auto", metadata={
        "help": "auto: bf16 on CUDA, fp32 on CPU; the same precision for both sides"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the in-process models when CUDA is present: eval (both sides) and "
                "the gpu rows' train and eval models"})
    seed: int = field(default=0, metadata={"help": "seed of the world and the models"})
    world: WorldSize = field(default_factory=WorldSize, metadata={"help": "the synthetic world"})
    bootstrap: BootstrapBench = field(default_factory=BootstrapBench, metadata={"help": "bootstrap row"})
    caption_vlm: CaptionVlmBench = field(default_factory=CaptionVlmBench, metadata={"help": "caption_vlm row"})
    train: TrainBench = field(default_factory=TrainBench, metadata={"help": "training row"})
    eval: EvalBench = field(default_factory=EvalBench, metadata={"help": "evaluation row"})
    loading: LoadingBench = field(default_factory=LoadingBench, metadata={"help": "data-loading row"})
    memory: MemoryBench = field(default_factory=MemoryBench, metadata={"help": "memory row"})
    browse: BrowseBench = field(default_factory=BrowseBench, metadata={"help": "browse row"})
    gpu: GpuBench = field(default_factory=GpuBench, metadata={"help": "GPU rows (skipped without CUDA)"})
    curate: CurateBench = field(default_factory=CurateBench, metadata={"help": "curate row"})
    engine: EngineBench = field(default_factory=EngineBench, metadata={"help": "engine row (vLLM vs generate)"})

    def validate(self) -> None:
        """Raise ValueError for unknown comparisons or sizes the world cannot serve."""
        unknown = sorted(set(self.only) - set(COMPARISONS))
        if unknown:
            raise ValueError(f"only: unknown comparisons {unknown}; choose from {list(COMPARISONS)}")
        if self.threads < 1 or self.workers < 0:
            raise ValueError("threads must be >= 1 and workers >= 0")
        most = max(self.bootstrap.shards, self.caption_vlm.shards, self.memory.large_shards, self.memory.small_shards,
                   self.engine.shards if "engine" in self.only else 0)
        if most > self.world.web_shards:
            raise ValueError(f"world.web_shards={self.world.web_shards} is fewer than the {most} shards "
                             "bootstrap.shards / caption_vlm.shards / memory.*_shards / engine.shards ask for")
        br = self.browse
        if min(br.samples, br.samples_per_shard, br.index_samples, br.repeats) < 1 or br.thumb < 16:
            raise ValueError("browse: samples, samples_per_shard, index_samples, repeats must be >= 1, thumb >= 16")
        if min(self.eval.repeats, self.loading.repeats, self.caption_vlm.repeats, self.engine.repeats,
               self.curate.repeats, self.curate.index_images) < 1:
            raise ValueError("repeats must be >= 1")
        g = self.gpu
        sizes = (g.image_size, g.train_batch_size, g.train_steps, g.caption_batch_size, g.caption_tokens,
                 g.caption_calls, g.eval_batch_size, g.eval_calls)
        if min(sizes) < 1 or g.warmup < 0 or (g.peak_tflops is not None and g.peak_tflops <= 0):
            raise ValueError("gpu: sizes, steps and calls must be >= 1, warmup >= 0, peak_tflops > 0")
        if self.train.log_every < 1 or self.train.steps < 2 * self.train.log_every:
            raise ValueError("train.steps must cover at least two log windows (the first is warm-up)")
