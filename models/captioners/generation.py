"""What the in-process captioners (BLIP / VisionEncoderDecoder and prompted VLMs) share to decode.

``decoding_kwargs`` turns a decoding setting (nucleus / beam / greedy) into HF ``generate`` flags;
``seeded`` runs ``generate`` under a caption seed without moving the caller's RNG.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

DECODING_METHODS = ("nucleus", "beam", "greedy")


def decoding_kwargs(method: str, num_captions: int, top_p: float, num_beams: int) -> dict[str, Any]:
    """HF ``generate`` flags for one decoding method."""
    if num_captions < 1:
        raise ValueError(f"num_captions must be >= 1, got {num_captions}")
    if method == "nucleus":
        # top_k=0 turns off HF's default top-50 cut, so only top_p shapes the distribution.
        return dict(do_sample=True, top_p=top_p, top_k=0, num_return_sequences=num_captions)
    if method == "beam":
        beams = max(num_beams, num_captions)
        return dict(do_sample=False, num_beams=beams, num_return_sequences=num_captions, early_stopping=True)
    if method == "greedy":
        if num_captions != 1:
            raise ValueError("greedy decoding gives one caption per image; use nucleus or beam for more")
        return dict(do_sample=False, num_beams=1)
    raise ValueError(f"unknown decoding method {method!r}; expected one of {DECODING_METHODS}")


@contextlib.contextmanager
def seeded(device: torch.device, seed: int | None) -> Iterator[None]:
    """Inside, the RNG of the CPU (and of ``device`` when it is a GPU) starts from ``seed``; after,
    the caller's RNG is where it was. ``seed=None``: the RNG is used and moved as it is."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield
