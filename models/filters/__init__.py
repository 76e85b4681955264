"""The caption-filter protocol and its factory: CLIP score, BLIP ITM or BLIP ITC, interchangeably.

A filter is anything with ``preprocess(images) -> pixel tensor`` and
``score(images_or_pixels, texts) -> FloatTensor[B]`` (higher = better match of image i with
text i). ``DualEncoder`` (CLIP score, cosine in [-1, 1]) and ``BlipItmFilter`` (ITM probability in
[0, 1] or ITC cosine) both are one. Thresholds are not comparable across kinds of score.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ..dual_encoders import DualEncoder, build_dual_encoder
from .blip_itm import BlipItmFilter, build_itm_filter
from ..specs import DualEncoderSpec, ItmSpec


@runtime_checkable
class CaptionFilter(Protocol):
    """What the bootstrap stage needs from a filter."""

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> this filter's pixel tensor ``(B, 3, H, W)``."""
        ...

    def score(self, images: list[Image.Image] | torch.Tensor, texts: list[str]) -> torch.Tensor:
        """``(B,)`` match score of image i with text i; higher is better."""
        ...


def build_filter(
    spec: DualEncoderSpec | ItmSpec, train_captions: Iterable[str] | None = None
) -> DualEncoder | BlipItmFilter:
    """A CLIP-score filter for a ``DualEncoderSpec``, a BLIP ITM/ITC filter for an ``ItmSpec``.

    ``train_captions`` is only needed to build a from-scratch BLIP filter's vocabulary.
    """
    if isinstance(spec, DualEncoderSpec):
        return build_dual_encoder(spec)
    if isinstance(spec, ItmSpec):
        return build_itm_filter(spec, train_captions=train_captions)
    raise TypeError(f"no filter for spec type {type(spec).__name__}")


@torch.no_grad()
def score_candidates(
    flt: CaptionFilter, images: list[Image.Image], candidates: list[list[str]]
) -> list[list[float]]:
    """Score several candidate captions per image (e.g. the web caption and N synthetic ones).

    Each image is preprocessed once and its pixels repeated for its candidates; returns, per
    image, one score per candidate in the given order.
    """
    if len(images) != len(candidates):
        raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
    counts = torch.tensor([len(c) for c in candidates])
    if int(counts.sum()) == 0:
        return [[] for _ in candidates]
    pixels = flt.preprocess(images)  # (B, 3, H, W)
    repeated = pixels.repeat_interleave(counts.to(pixels.device), dim=0)  # (sum(counts), 3, H, W)
    flat = [text for group in candidates for text in group]
    scores = flt.score(repeated, flat).float().cpu().tolist()
    out, start = [], 0
    for n in counts.tolist():
        out.append(scores[start : start + n])
        start += n
    return out
