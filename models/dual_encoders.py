"""CLIP-style dual encoders through open_clip: any architecture by name, ours kept as JSON data.

Our architectures are open_clip model configs in ``models/model_configs/*.json`` (the format of
open_clip's own ``model_configs``), registered with ``open_clip.add_model_config`` on import of
this module. Their vision towers are timm models registered in ``models.timm_towers``
(``vision_cfg.timm_model_name``), so open_clip builds them through its timm adapter.

A real checkpoint is named the open_clip way: ``DualEncoderSpec(arch="ViT-B-32",
pretrained="laion2b_s34b_b79k")``. ``DualEncoder.save(folder)`` writes what open_clip itself
loads: ``open_clip_model.safetensors`` (a state dict, for
``open_clip.create_model_and_transforms(arch, pretrained=folder / "open_clip_model.safetensors")``)
and ``open_clip_config.json`` (for ``create_model_and_transforms("local-dir:" + folder)``).
Loading an ``mmw2s-conv-*`` architecture with open_clip directly needs ``models.register()`` first.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import open_clip
import safetensors.torch
import torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
from open_clip.push_to_hf_hub import save_config_for_hf
from PIL import Image

from . import pretrained_towers
from . import timm_towers  # noqa: F401  (registers the mmw2s_convnet_* towers in timm)
from .image_inputs import TransformPixels
from .specs import DualEncoderSpec

log = logging.getLogger(__name__)
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)
LOCAL_DIR = "local-dir:"


def list_dual_encoders() -> list[str]:
    """Names of our registered open_clip architectures."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


class DualEncoder:
    """An open_clip model with its transforms and tokenizer.

    ``model`` is the ``torch.nn.Module`` to train: ``model(pixel_values, tokens)`` returns a dict
    with normalized ``image_features`` / ``text_features`` and the exponentiated ``logit_scale``
    (feed them to ``models.losses``). It is also a caption filter (``models.filters.protocol.CaptionFilter``):
    the CLIP score, cosine of image and text embeddings.
    """

    mode = "clip"  # the filter's kind of score, for provenance

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess_train: Callable[[Image.Image], torch.Tensor],
        preprocess_val: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        model_cfg: dict[str, Any],
        arch: str = "",
        pretrained: str | None = None,
    ):
        self.model = model
        self.preprocess_train = preprocess_train
        self.preprocess_val = preprocess_val
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.arch = arch
        self.pretrained = pretrained

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def _core(self) -> torch.nn.Module:
        """The open_clip model itself, under any DDP / accelerate wrapper."""
        return getattr(self.model, "module", self.model)

    @property
    def name(self) -> str:
        """The model as its spec names it: ``arch`` or ``arch:pretrained`` (provenance)."""
        return self.arch + (f":{self.pretrained}" if self.pretrained else "")

    def input_builder(self, train: bool = False) -> TransformPixels:
        """PIL images -> CPU pixel tensor ``(B, 3, H, W)`` (train: augmented); holds no model, so it
        can run in data-loader workers."""
        return TransformPixels(self.preprocess_train if train else self.preprocess_val)

    def preprocess(self, images: list[Image.Image], train: bool = False) -> torch.Tensor:
        """PIL images -> pixel tensor ``(B, 3, H, W)`` on the model's device (train: augmented)."""
        return self.input_builder(train)(images).to(self.device)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> token ids ``(B, context_length)`` on the model's device."""
        return self.tokenizer(list(texts)).to(self.device)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalized image embeddings ``(B, D)``."""
        return self._core().encode_image(pixel_values, normalize=True)

    def encode_text(self, texts: list[str] | torch.Tensor) -> torch.Tensor:
        """L2-normalized text embeddings ``(B, D)`` from texts or token ids."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return self._core().encode_text(tokens, normalize=True)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The contrastive temperature as a multiplier (``exp`` of the learned log-scale)."""
        return self._core().logit_scale.exp()

    @torch.no_grad()
    def score(self, images: list[Image.Image] | torch.Tensor, texts: list[str]) -> torch.Tensor:
        """CLIP score: cosine of image i and text i, ``(B,)`` in [-1, 1]; higher is a better match.

        ``images`` are PIL images or a tensor from ``preprocess``.
        """
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        return (self.encode_image(pixels) * self.encode_text(texts)).sum(dim=-1).float()

    def score_grouped(self, pixels: torch.Tensor, texts: list[str], owner: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        """CLIP score ``(T,)`` of text t with image ``owner[t]``, each image encoded once, and per
        text whether it filled the whole context (was cut to it)."""
        tokens = self.tokenize(texts)  # (T, context_length)
        image = self.encode_image(pixels)  # (B, D), normalized
        text = self.encode_text(tokens)  # (T, D), normalized
        cut = (tokens[:, -1] != _pad_id(self.tokenizer)).tolist()
        return (image[owner] * text).sum(dim=-1), cut

    def save(self, folder: str | Path) -> Path:
        """Write ``open_clip_model.safetensors`` and ``open_clip_config.json``; returns the weights path.

        ``open_clip.create_model_and_transforms(arch, pretrained=<returned path>)`` and
        ``create_model_and_transforms("local-dir:<folder>")`` both load it.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / HF_SAFE_WEIGHTS_NAME
        state = {k: v.detach().contiguous() for k, v in self._core().state_dict().items()}
        safetensors.torch.save_file(state, weights)
        save_config_for_hf(self._core(), folder / HF_CONFIG_NAME, model_config=self.model_cfg)
        return weights

    @classmethod
    def load(cls, path: str | Path, arch: str | None = None) -> DualEncoder:
        """Load a folder written by ``save``, or a state-dict file of architecture ``arch``."""
        path = Path(path)
        if path.is_dir():
            return build_dual_encoder(DualEncoderSpec(arch=f"{LOCAL_DIR}{path}"))
        if arch is None:
            raise ValueError(f"{path} is a bare state dict: pass the open_clip arch it belongs to")
        return build_dual_encoder(DualEncoderSpec(arch=arch, pretrained=str(path)))


def _resolve_arch(arch: str) -> str:
    """Register a model-config JSON given by path and return its name; other names pass through."""
    if arch.endswith(".json") and Path(arch).is_file():
        open_clip.add_model_config(arch)
        return Path(arch).stem
    return arch


def _model_cfg(arch: str, spec: DualEncoderSpec) -> dict[str, Any]:
    """The resolved architecture dict (with the spec's overrides), as written next to the weights."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise KeyError(f"unknown open_clip architecture {arch!r}; ours: {list_dual_encoders()}")
    if spec.image_size is not None:
        cfg["vision_cfg"]["image_size"] = spec.image_size
    if spec.context_length is not None:
        cfg["text_cfg"]["context_length"] = spec.context_length
    return cfg


class _FromScratch(logging.Filter):
    """Drops open_clip's warning that `arch` got no pretrained weights, for a model we build from
    scratch on purpose (no `pretrained` given); any other record, of any model, passes."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.message = f"No pretrained weights loaded for model '{arch}'."

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.message)


@contextmanager
def _quiet_from_scratch(arch: str, pretrained: str | None) -> Iterator[None]:
    """Around an open_clip build: no "initialized randomly" warning when random is what was asked."""
    if pretrained:
        yield
        return
    drop = _FromScratch(arch)
    root = logging.getLogger()  # open_clip warns through the root logger (`logging.warning`)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _tower_prior(arch: str, spec: DualEncoderSpec) -> tuple[str | None, dict[str, Any]]:
    """The timm tower name to load ``spec.image_tower_weights`` into, and the normalization
    (``image_mean`` / ``image_std``) its weights expect; ``(None, {})`` without tower weights."""
    if spec.image_tower_weights is None:
        return None, {}
    if spec.pretrained is not None:
        raise ValueError(f"image_tower_weights={spec.image_tower_weights!r} with pretrained={spec.pretrained!r}: "
                         "a whole-model checkpoint already holds the image tower; give one or the other")
    name = _model_cfg(arch, spec)["vision_cfg"].get("timm_model_name")
    if not name:
        raise ValueError(f"image_tower_weights needs a timm image tower, and {arch!r} has no "
                         "vision_cfg.timm_model_name")
    norm = pretrained_towers.tower_normalization(name)
    return name, ({"image_mean": norm[0], "image_std": norm[1]} if norm else {})


def build_dual_encoder(spec: DualEncoderSpec, device: str | torch.device = "cpu") -> DualEncoder:
    """Build the dual encoder a spec names with ``open_clip.create_model_and_transforms``, then
    load ``spec.image_tower_weights`` into its timm image tower (``models.pretrained_towers``)."""
    arch = _resolve_arch(spec.arch)
    tower, normalization = _tower_prior(arch, spec)
    # seeded init without moving the caller's RNG
    with torch.random.fork_rng(devices=[]), _quiet_from_scratch(arch, spec.pretrained):
        torch.manual_seed(spec.seed)
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            arch,
            pretrained=spec.pretrained,
            force_image_size=spec.image_size,
            force_context_length=spec.context_length,
            output_dict=True,
            device=device,
            **normalization,
        )
    if tower is not None:
        weights = pretrained_towers.resolve_weights(spec.image_tower_weights)
        loaded = pretrained_towers.load_timm_tower(model.visual, weights, tower)
        log.info("image tower %s: %d pretrained tensors loaded from %s", tower, loaded, weights)
    tokenizer = open_clip.get_tokenizer(arch, context_length=spec.context_length)
    return DualEncoder(model, preprocess_train, preprocess_val, tokenizer, _model_cfg(arch, spec), arch=spec.arch,
                       pretrained=spec.pretrained)


def _pad_id(tokenizer: Any) -> int:
    """open_clip's padding id: 0 for its own BPE tokenizer, the HF tokenizer's for `hf-hub:` towers."""
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return pad if isinstance(pad, int) else 0
