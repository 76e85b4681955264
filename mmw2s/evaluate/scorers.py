"""Scorers: one interface for every model that evaluation puts in the table.

- `EmbeddingScorer` (dual encoders): ``encode_images(images) -> (N, D)`` and
  ``encode_texts(texts) -> (M, D)``, both L2-normalised; a score is a cosine similarity.
- `PairwiseScorer` (captioners, ITM filters): ``score(images, texts) -> (N, M)`` for every pair and
  ``score_pairs(images, texts) -> (N,)`` for aligned pairs. For a captioner the score is the mean
  per-token log-likelihood of the text given the image (length-normalised, so that captions of one,
  two and three objects compete fairly; ``length_norm=False`` sums instead). A captioner also
  writes greedy captions (``can_caption``) and answers questions from them (``can_answer``).
- `AnswerScorer` (LLaVA-style students): ``answer(images, questions) -> list[str]``, one short
  answer per question; such a model has no image-text score, so only VQA applies to it.

Adapters over the models of `models/` live in `mmw2s.evaluate.adapters`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from PIL import Image


class Scorer(ABC):
    """A model as evaluation sees it; ``name`` and ``pretrained`` go into the result JSON."""

    name: str = "model"
    pretrained: str = ""
    can_caption: bool = False
    can_answer: bool = False

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """Greedy captions of ``images`` (only when ``can_caption``)."""
        raise NotImplementedError(f"{type(self).__name__} does not write captions")

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        """A short answer to question i about image i (only when ``can_answer``)."""
        raise NotImplementedError(f"{type(self).__name__} does not answer questions")


class EmbeddingScorer(Scorer):
    """Images and texts embedded into one space (CLIP-style)."""

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(M, D) L2-normalised text embeddings."""


class PairwiseScorer(Scorer):
    """A model that scores an image together with a text (higher = better match)."""

    def prepare_texts(self, texts: Sequence[str]) -> Any:
        """Texts in the form `score` takes (e.g. tokenised once for many image batches)."""
        return list(texts)

    @abstractmethod
    def score(self, images: Sequence[Image.Image], texts: Any) -> torch.Tensor:
        """(N, M) score of every image with every text (``texts`` from `prepare_texts`)."""

    @abstractmethod
    def score_pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """(N,) score of image i with text i."""


class AnswerScorer(Scorer):
    """A model that answers questions about images in words (VQA only)."""

    can_answer = True

    @abstractmethod
    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        """A short answer to question i about image i."""
