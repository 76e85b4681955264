"""Everything that is a model: captioners, caption filters, CLIP-style students, losses, tokenizers.

Each family is built by name from a typed spec (``models.specs``):

- ``build_captioner(CaptionerSpec)`` -> ``Captioner`` (BLIP or VisionEncoderDecoder, HF)
- ``build_dual_encoder(DualEncoderSpec)`` -> ``DualEncoder`` (open_clip, timm towers)
- ``build_itm_filter(ItmSpec)`` -> ``BlipItmFilter`` (BLIP ITM / ITC)
- ``build_filter(spec)`` -> a ``CaptionFilter`` (CLIP score or BLIP ITM / ITC)
- ``LOSSES`` / ``build_loss(name)``: contrastive, weighted, aux_confidence student losses

Importing this package registers our timm towers and open_clip model configs. ``models`` knows
nothing of shards or stages: it never imports ``mmw2s`` or ``data_pipelines``.
"""

from .captioner_build import build_captioner, captioner_config, list_captioners
from .captioners import DECODING_METHODS, Captioner
from .dual_encoders import DualEncoder, build_dual_encoder, list_dual_encoders
from .filters import CaptionFilter, build_filter, score_candidates
from .itm import BlipItmFilter, build_itm_filter
from .losses import (
    LOSSES,
    aux_confidence_coef,
    aux_confidence_contrastive_loss,
    build_loss,
    contrastive_loss,
)
from .specs import CaptionerSpec, DualEncoderSpec, ItmSpec
from .tokenizers import build_word_tokenizer

__all__ = [
    "LOSSES",
    "DECODING_METHODS",
    "BlipItmFilter",
    "CaptionFilter",
    "Captioner",
    "CaptionerSpec",
    "DualEncoder",
    "DualEncoderSpec",
    "ItmSpec",
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
    "score_candidates",
]
