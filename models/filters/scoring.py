"""Scoring several candidate captions per image with any ``CaptionFilter``: the CapFilt filter step.

Each image is encoded ONCE for all its candidates (a web caption and N synthetic ones): repeating the
image per candidate would multiply the vision tower's cost by N + 1.
"""
from __future__ import annotations

import torch
from PIL import Image

from .protocol import CaptionFilter


class ScoredRows(list):
    """Scores per image (a list of lists: one score per candidate), plus ``truncated``: per image,
    for each candidate, whether the filter saw it cut to its text length."""

    def __init__(self, rows: list[list[float]], truncated: list[list[bool]]):
        super().__init__(rows)
        self.truncated = truncated


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
