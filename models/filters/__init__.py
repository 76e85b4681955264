"""Caption filters: CLIP score, BLIP ITM or BLIP ITC, interchangeably.

- ``protocol.py``: ``CaptionFilter``, what the bootstrap needs from a filter (``input_builder``,
  ``score_grouped``, ``mode``, ``name``);
- ``scoring.py``: ``score_candidates``, several candidate captions per image, each image encoded once;
- ``blip_itm.py``: ``BlipItmFilter`` (ITM / ITC heads of ``BlipForImageTextRetrieval``);
- the CLIP-score filter is the CLIP-style student itself, ``DualEncoder`` (``models/dual_encoders.py``);
- ``build_filter`` (here): the filter a spec names.
"""
from __future__ import annotations

from collections.abc import Iterable

from ..dual_encoders import build_dual_encoder
from ..specs import DualEncoderSpec, ItmSpec
from .blip_itm import build_itm_filter
from .protocol import CaptionFilter


def build_filter(
    spec: DualEncoderSpec | ItmSpec, train_captions: Iterable[str] | None = None
) -> CaptionFilter:
    """A CLIP-score filter for a ``DualEncoderSpec``, a BLIP ITM/ITC filter for an ``ItmSpec``.

    ``train_captions`` is only needed to build a from-scratch BLIP filter's vocabulary.
    """
    if isinstance(spec, DualEncoderSpec):
        return build_dual_encoder(spec)
    if isinstance(spec, ItmSpec):
        return build_itm_filter(spec, train_captions=train_captions)
    raise TypeError(f"no filter for spec type {type(spec).__name__}")
