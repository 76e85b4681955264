"""The caption-filter protocol and its factory: CLIP score, BLIP ITM or BLIP ITC, interchangeably.

A filter (``CaptionFilter``) scores (image, caption) pairs, higher = better match. ``DualEncoder``
(CLIP score, cosine in [-1, 1]) and ``BlipItmFilter`` (ITM probability in [0, 1] or ITC cosine)
both are one. Thresholds are not comparable across kinds of score.

``score_candidates`` scores several candidate captions per image (a web caption and N synthetic
ones), each image encoded ONCE for all its candidates: repeating the image per candidate would
multiply the vision tower's cost by N + 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ..dual_encoders import build_dual_encoder
from .blip_itm import build_itm_filter
from ..specs import DualEncoderSpec, ItmSpec


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


class ScoredRows(list):
    """Scores per image (a list of lists: one score per candidate), plus ``truncated``: per image,
    for each candidate, whether the filter saw it cut to its text length."""

    def __init__(self, rows: list[list[float]], truncated: list[list[bool]]):
        super().__init__(rows)
        self.truncated = truncated


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


@torch.no_grad()
def score_candidates(
    flt: CaptionFilter, images: list[Image.Image] | torch.Tensor, candidates: list[list[str]]
) -> ScoredRows:
    """Score several candidate captions per image (e.g. the web caption and N synthetic ones).

    ``images`` are PIL images or the pixels of ``flt.input_builder()`` on ``flt.device``. Returns,
    per image, one score per candidate in the given order (and which candidates were truncated).
    Autocast, if wanted, is the caller's.
    """
    if len(images) != len(candidates):
        raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
    if not any(candidates):
        return ScoredRows([[] for _ in candidates], [[] for _ in candidates])
    pixels = images if isinstance(images, torch.Tensor) else flt.input_builder()(images).to(flt.device)
    counts = torch.tensor([len(c) for c in candidates], device=pixels.device)
    owner = torch.repeat_interleave(torch.arange(len(candidates), device=pixels.device), counts)  # (T,)
    flat = [text for group in candidates for text in group]
    scores, cut = flt.score_grouped(pixels, flat, owner)
    values = scores.float().cpu().tolist()
    rows, truncated, start = [], [], 0
    for n in counts.tolist():
        rows.append(values[start : start + n])
        truncated.append(cut[start : start + n])
        start += n
    return ScoredRows(rows, truncated)
