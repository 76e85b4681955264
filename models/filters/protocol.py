"""What the bootstrap needs from a caption filter: ``CaptionFilter``.

A filter scores (image, caption) pairs, higher = better match: ``DualEncoder`` (``models/dual_encoders.py``:
the CLIP score, cosine in [-1, 1]) and ``BlipItmFilter`` (``blip_itm.py``: ITM match probability in
[0, 1], or ITC cosine). Thresholds are not comparable across kinds of score.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class CaptionFilter(Protocol):
    """What the bootstrap stage needs from a filter."""

    mode: str  # the kind of score: "clip" (cosine), "itm" (match probability) or "itc" (cosine)
    name: str  # the filter's checkpoint as its spec names it, for provenance
    device: torch.device

    def input_builder(self) -> Callable[[list[Image.Image]], torch.Tensor]:
        """PIL images -> CPU pixel tensor ``(B, 3, H, W)``; holds no model (runs in data-loader workers)."""
        ...

    def score_grouped(
        self, pixels: torch.Tensor, texts: list[str], owner: torch.Tensor
    ) -> tuple[torch.Tensor, list[bool]]:
        """``(T,)`` score of text t with image ``owner[t]`` (each image encoded once), and per text
        whether it was cut to the filter's text length."""
        ...
