"""What the comparisons run on: a small synthetic world and tiny from-scratch models, saved the way
users' trained ones are (random weights time exactly like trained ones of the same size)."""
from __future__ import annotations

import logging
from pathlib import Path

from mmw2s.bench.config import BenchConfig

log = logging.getLogger(__name__)


def resolve_device(cfg: BenchConfig) -> tuple[str, str]:
    """`(device, precision)` both sides use: CUDA with bf16 when present (auto), else CPU fp32."""
    import torch

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    return device, precision


def make_world(cfg: BenchConfig) -> Path:
    """`out/world` with web shards (bootstrap, train, loading, memory) and a test split (eval)."""
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world

    folder = Path(cfg.out) / "world"
    w = cfg.world
    generate_world(WorldConfig(out=str(folder), seed=cfg.seed, image_size=w.image_size, workers=1,
                               samples_per_shard=w.samples_per_shard, clean=SplitConfig(0),
                               web=SplitConfig(w.web_shards * w.samples_per_shard),
                               test=SplitConfig(w.test_samples)))
    return folder


def web_shards(world: Path, n: int) -> list[str]:
    """The first `n` web shards, in order."""
    return sorted(str(p) for p in (world / "web").glob("*.tar"))[:n]


def make_models(cfg: BenchConfig, world: Path) -> Path:
    """`out/models/{captioner,filter,clip}`: built from scratch (vocabulary from the web captions) and
    saved; reused when present. A name that is a folder or hub id is used as it is instead."""
    from mmw2s.data_pipelines import ReadLimits, iter_samples
    from mmw2s.models import CaptionerSpec, DualEncoderSpec, ItmSpec, build_captioner, build_dual_encoder, build_itm_filter
    from mmw2s.models.captioners.build import list_captioners

    folder = Path(cfg.out) / "models"
    b = cfg.bootstrap
    captions = None

    def train_captions() -> list[str]:
        nonlocal captions
        if captions is None:
            captions = [s["caption"] for s in iter_samples(str(world / "web"), ReadLimits(decode_images=False))]
        return captions

    if b.captioner in list_captioners() and not (folder / "captioner").exists():
        build_captioner(CaptionerSpec(name=b.captioner, seed=cfg.seed),
                        train_captions=train_captions()).save(folder / "captioner")
    if b.filter == "blip" and not (folder / "filter").exists():
        build_itm_filter(ItmSpec(name=b.filter_model, seed=cfg.seed),
                         train_captions=train_captions()).save(folder / "filter")
    if not (folder / "clip").exists():
        arch = b.filter_model if b.filter == "clip" else cfg.train.arch
        build_dual_encoder(DualEncoderSpec(arch=arch, seed=cfg.seed)).save(folder / "clip")
    return folder


def captioner_source(cfg: BenchConfig, models: Path) -> str:
    """The captioner the bootstrap loads: our saved from-scratch one, or the configured folder / hub id."""
    from mmw2s.models.captioners.build import list_captioners

    return str(models / "captioner") if cfg.bootstrap.captioner in list_captioners() else cfg.bootstrap.captioner
