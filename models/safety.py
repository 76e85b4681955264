"""A safety classifier: any transformers image-classification checkpoint as an unsafe-image score.

`SafetyClassifier.load("Falconsai/nsfw_image_detection", unsafe_labels=["nsfw"])`, a watermark
classifier, or a folder saved by `save_pretrained`: the model is built by
`AutoModelForImageClassification` from the checkpoint's own config (its `model_type`), its
preprocessing by `AutoImageProcessor`, and the labels are the checkpoint's `id2label`. The unsafe
score of an image is the summed softmax probability of the labels named unsafe (for a multi-label
checkpoint, `problem_type="multi_label_classification"`, the largest sigmoid among them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from .image_inputs import ProcessorPixels


@dataclass
class SafetyScores:
    """Per image: the unsafe score, and the unsafe label that scored highest."""

    scores: list[float]
    labels: list[str]


class SafetyClassifier:
    """An image classifier reduced to one unsafe score per image."""

    def __init__(self, model: Any, image_processor: Any, unsafe_labels: Sequence[str], name: str = "") -> None:
        self.model, self.image_processor, self.name = model.eval(), image_processor, name
        id2label = {int(i): str(label) for i, label in model.config.id2label.items()}
        known = sorted(id2label.values())
        unknown = sorted(set(unsafe_labels) - set(known))
        if not unsafe_labels:
            raise ValueError(f"safety classifier {name}: name at least one unsafe label of {known}")
        if unknown:
            raise ValueError(f"safety classifier {name}: unsafe labels {unknown} are not among its labels {known}")
        self.unsafe_ids = [i for i, label in sorted(id2label.items()) if label in unsafe_labels]
        self.id2label = id2label
        self.multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"

    @classmethod
    def load(cls, name_or_path: str, unsafe_labels: Sequence[str], revision: str | None = None) -> "SafetyClassifier":
        """Load a checkpoint by hub id or local folder (raises OSError / ValueError naming it)."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        options = {"revision": revision} if revision else {}
        model = AutoModelForImageClassification.from_pretrained(name_or_path, **options)
        processor = AutoImageProcessor.from_pretrained(name_or_path, **options)
        return cls(model, processor, unsafe_labels, name=str(name_or_path))

    def input_builder(self) -> ProcessorPixels:
        """PIL images -> the checkpoint's pixel tensor `(B, 3, H, W)` on CPU (data-loader workers)."""
        return ProcessorPixels(self.image_processor)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> the checkpoint's pixel tensor `(B, 3, H, W)` on CPU."""
        return self.input_builder()(images)

    @torch.inference_mode()
    def score(self, pixel_values: torch.Tensor) -> SafetyScores:
        """The unsafe score of each image of the batch."""
        device = next(self.model.parameters()).device
        logits = self.model(pixel_values=pixel_values.to(device)).logits.float()  # (B, num_labels)
        probs = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
        unsafe = probs[:, self.unsafe_ids]  # (B, U)
        scores = unsafe.max(dim=-1).values if self.multi_label else unsafe.sum(dim=-1)  # (B,)
        top = unsafe.argmax(dim=-1).tolist()
        return SafetyScores(scores.cpu().tolist(), [self.id2label[self.unsafe_ids[j]] for j in top])

    def provenance(self) -> dict:
        """What the `mmw2s` block records about the classifier."""
        return {"name": self.name, "unsafe_labels": [self.id2label[i] for i in self.unsafe_ids]}
