"""PIL images -> CPU pixel tensors: the one image preprocessing of every model here.

A builder holds an image processor or a transform, never a model, so it pickles into data-loader
workers; models move its output to their device. Images are converted to RGB first: web shards
hold palette, grey and CMYK images.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image


class ProcessorPixels:
    """Images -> ``(B, 3, H, W)`` with one Hugging Face image processor (BLIP, VED, ITM, safety)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]


class TransformPixels:
    """Images -> ``(B, 3, H, W)`` with one per-image transform (open_clip's torchvision pipeline)."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(im.convert("RGB")) for im in images])
