"""Everything that is a model: captioners, caption filters, CLIP-style students, losses, tokenizers.

Each family is built by name from a typed spec (``models.specs``):

- ``build_captioner(CaptionerSpec)`` -> a ``Captioner``: ``BlipVedCaptioner`` (BLIP or
  VisionEncoderDecoder, HF; a ``TrainableCaptioner``), ``PromptedCaptioner`` (image-text-to-text
  VLMs) or ``EndpointCaptioner`` (an OpenAI-compatible server)
- ``build_dual_encoder(DualEncoderSpec)`` -> ``DualEncoder`` (open_clip, timm towers)
- ``build_itm_filter(ItmSpec)`` -> ``BlipItmFilter`` (BLIP ITM / ITC)
- ``build_filter(spec)`` -> a ``CaptionFilter`` (CLIP score or BLIP ITM / ITC)
- ``LOSSES`` / ``build_loss(name)``: contrastive, weighted, aux_confidence student losses

Builders load on first use; `models.register()` (or building any dual encoder) registers our
timm towers and open_clip model configs. ``models`` knows
nothing of shards or stages: it never imports ``mmw2s`` or ``data_pipelines``.
"""

import importlib
from typing import Any

# Public names -> the submodule defining them. Submodules import torch, transformers and open_clip,
# so they load on first use (PEP 562): config schemas that embed `models.specs` stay light and
# `mmw2s --help` answers at once.
_EXPORTS = {
    "build_captioner": "captioners.build", "captioner_config": "captioners.build",
    "list_captioners": "captioners.build",
    "Captioner": "captioners.protocol", "TrainableCaptioner": "captioners.protocol",
    "require_trainable": "captioners.protocol",
    "BlipVedCaptioner": "captioners.blip_ved", "PromptedCaptioner": "captioners.prompted_vlm",
    "EndpointCaptioner": "captioners.endpoint", "DECODING_METHODS": "captioners.generation",
    "DualEncoder": "dual_encoders", "build_dual_encoder": "dual_encoders",
    "list_dual_encoders": "dual_encoders",
    "CaptionFilter": "filters.protocol", "build_filter": "filters", "score_candidates": "filters.scoring",
    "BlipItmFilter": "filters.blip_itm", "build_itm_filter": "filters.blip_itm",
    "LOSSES": "losses", "aux_confidence_coef": "losses",
    "aux_confidence_contrastive_loss": "losses", "build_loss": "losses",
    "contrastive_loss": "losses",
    "CaptionerSpec": "specs", "DualEncoderSpec": "specs", "ItmSpec": "specs",
    "build_word_tokenizer": "tokenizers",
    "SafetyClassifier": "safety",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Register our timm towers and open_clip architectures (`mmw2s-conv-*`), e.g. before calling
    `open_clip.create_model_and_transforms("mmw2s-conv-small", pretrained=PATH)` yourself."""
    importlib.import_module(".dual_encoders", __name__)


__all__ = [
    "LOSSES",
    "DECODING_METHODS",
    "BlipItmFilter",
    "BlipVedCaptioner",
    "CaptionFilter",
    "Captioner",
    "CaptionerSpec",
    "DualEncoder",
    "DualEncoderSpec",
    "EndpointCaptioner",
    "ItmSpec",
    "PromptedCaptioner",
    "TrainableCaptioner",
    "aux_confidence_coef",
    "aux_confidence_contrastive_loss",
    "build_captioner",
    "build_dual_encoder",
    "build_filter",
    "build_itm_filter",
    "build_loss",
    "build_word_tokenizer",
    "captioner_config",
    "contrastive_loss",
    "list_captioners",
    "list_dual_encoders",
    "require_trainable",
    "score_candidates",
]
