"""Adapters that turn the models of `models/` into evaluation scorers, and `build_scorer`.

- `DualEncoderScorer`: open_clip ``encode_image`` / ``encode_text`` (normalised): an embedding scorer.
- `CaptionerScorer`: log p(text | image) from ``TrainableCaptioner.log_likelihood_matrix`` (images
  encoded once per batch, texts in chunks), per token by default; greedy captions from any
  ``Captioner``'s ``caption``.
- `ItmScorer`: BLIP ITM, log p(match) of every pair. The image is encoded once per batch and its
  states repeated for the texts (the ITM branch of ``BlipForImageTextRetrieval.forward``, which
  would re-encode the image for every pair).
- `ItcScorer`: BLIP ITC as an embedding scorer: the projected, normalised [CLS] features the ITC
  branch of that forward compares, computed per tower so that texts are embedded once.
- `LlavaScorer`: a LLaVA-style student's greedy answers to `vqa_prompt(question)` (VQA only).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from mmw2s.data_pipelines.vqa import vqa_prompt
from mmw2s.evaluate.config import ModelEntry, PairwiseConfig, VqaConfig
from mmw2s.evaluate.scorers import AnswerScorer, EmbeddingScorer, PairwiseScorer, Scorer
from mmw2s.models.captioners.protocol import Captioner, TrainableCaptioner, require_trainable
from mmw2s.models.dual_encoders import DualEncoder, build_dual_encoder
from mmw2s.models.filters.blip_itm import BlipItmFilter

log = logging.getLogger(__name__)


def _chunks(n_texts: int, n_images: int, pairs: int) -> list[slice]:
    """Slices of texts so that images x texts per forward pass stays near ``pairs``."""
    step = max(1, pairs // max(1, n_images))
    return [slice(i, i + step) for i in range(0, n_texts, step)]


class DualEncoderScorer(EmbeddingScorer):
    """A CLIP-style dual encoder (open_clip)."""

    def __init__(self, dual: DualEncoder, name: str, pretrained: str = "") -> None:
        self.dual, self.name, self.pretrained = dual, name, pretrained

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.dual.encode_image(self.dual.preprocess(list(images))).float().cpu()  # (N, D)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.dual.encode_text(list(texts)).float().cpu()  # (M, D)


class CaptionerScorer(PairwiseScorer):
    """A captioner: the score of a text is its log-likelihood given the image."""

    can_caption = True

    def __init__(self, captioner: Captioner, name: str, pretrained: str = "",
                 settings: PairwiseConfig = PairwiseConfig()) -> None:
        self.captioner, self.name, self.pretrained = captioner, name, pretrained
        self.settings = settings
        # BLIP / VED score a text by its likelihood; a prompted VLM only writes captions
        self.can_score = isinstance(captioner, TrainableCaptioner)

    def _scorer(self) -> TrainableCaptioner:
        """The captioner, when it scores likelihoods (`run_task` skips the others before scoring)."""
        return require_trainable(self.captioner, f"likelihood scoring (model {self.name})")

    def _token_counts(self, texts: Sequence[str]) -> torch.Tensor:
        """Predicted tokens per text (words and eos; bos is given, not predicted)."""
        _, mask = self._scorer().encode_texts(list(texts))
        return (mask.sum(dim=1) - 1).float().cpu()  # (M,)

    def prepare_texts(self, texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
        return list(texts), self._token_counts(texts)

    def score(self, images: Sequence[Image.Image], texts: Any) -> torch.Tensor:
        texts, counts = texts if isinstance(texts, tuple) else self.prepare_texts(texts)
        scorer = self._scorer()
        pixels = scorer.preprocess(list(images))
        parts = [scorer.log_likelihood_matrix(pixels, texts[s]).float().cpu()
                 for s in _chunks(len(texts), len(images), self.settings.text_chunk)]
        scores = torch.cat(parts, dim=1)  # (N, M) summed log-likelihoods
        return scores / counts if self.settings.length_norm else scores

    def score_pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        scorer = self._scorer()
        pixels = scorer.preprocess(list(images))
        scores = scorer.log_likelihood(pixels, list(texts)).float().cpu()  # (N,)
        return scores / self._token_counts(texts) if self.settings.length_norm else scores

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return self.write_captions(images, method="greedy", max_new_tokens=self.settings.caption_max_new_tokens)

    def write_captions(self, images: Sequence[Image.Image], **decoding: Any) -> list[str]:
        """One caption per image with the given decoding (``Captioner.caption``'s arguments), through
        the captioner's own input builder: BLIP, VisionEncoderDecoder and prompted VLMs alike."""
        out = self.captioner.caption(self.captioner.input_builder()(list(images)), num_captions=1, **decoding)
        return [caps[0] for caps in out]

    can_answer = True

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        """The weak teacher's answers: what its greedy caption of each image says (each distinct
        image is captioned once, however many questions it gets)."""
        from mmw2s.synthesize.answers import answer_from_caption

        unique = list({id(im): im for im in images}.values())
        captions = dict(zip(map(id, unique), self.caption(unique)))
        return [answer_from_caption(q, captions[id(im)]) for im, q in zip(images, questions)]


class LlavaScorer(AnswerScorer):
    """A LLaVA-style student: greedy generation, batched, without gradients."""

    def __init__(self, student: Any, name: str, pretrained: str = "", max_new_tokens: int = 8) -> None:
        self.student, self.name, self.pretrained = student, name, pretrained
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        pixels = self.student.preprocess(list(images))  # (B, 3, S, S)
        return self.student.generate(pixels, [vqa_prompt(q) for q in questions],
                                     max_new_tokens=self.max_new_tokens)


class ItmScorer(PairwiseScorer):
    """BLIP ITM: the score of a pair is log p(match)."""

    def __init__(self, flt: BlipItmFilter, name: str, pretrained: str = "",
                 settings: PairwiseConfig = PairwiseConfig()) -> None:
        self.flt, self.name, self.pretrained, self.settings = flt, name, pretrained, settings

    def _image_states(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.flt.image_states(self.flt.preprocess(list(images)))  # (N, P, D)

    def _log_match(self, states: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(match) of image state i with text i: (B,)."""
        return F.log_softmax(self.flt.match_logits(states, tokens).float(), dim=-1)[:, 1]

    def score(self, images: Sequence[Image.Image], texts: Any) -> torch.Tensor:
        states = self._image_states(images)  # (N, P, D)
        n, cols = len(images), []
        for s in _chunks(len(texts), n, self.settings.text_chunk):
            chunk = texts[s]
            tokens = self.flt.tokenize(chunk)
            tiled = {k: v.repeat(n, 1) for k, v in tokens.items()}  # (N*K, T), image-major
            rep = states.repeat_interleave(len(chunk), dim=0)  # (N*K, P, D)
            cols.append(self._log_match(rep, tiled).view(n, len(chunk)).cpu())
        return torch.cat(cols, dim=1)  # (N, M)

    def score_pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        return self._log_match(self._image_states(images), self.flt.tokenize(list(texts))).cpu()


class ItcScorer(EmbeddingScorer):
    """BLIP ITC: projected [CLS] features of the image and text towers, normalised."""

    def __init__(self, flt: BlipItmFilter, name: str, pretrained: str = "") -> None:
        self.flt, self.name, self.pretrained = flt, name, pretrained

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.flt.image_features(self.flt.preprocess(list(images))).cpu()  # (N, D)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.flt.text_features(list(texts)).cpu()  # (M, D)


# --------------------------------------------------------------------------------------------
# Building


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_scorer(entry: ModelEntry, device: str = "auto",
                 settings: PairwiseConfig = PairwiseConfig(), vqa: VqaConfig = VqaConfig()) -> Scorer:
    """Load the model an entry names (its ``path`` or its spec) and wrap it as a scorer, in eval mode."""
    dev = resolve_device(device)
    if entry.kind == "dual_encoder":
        spec = entry.dual_encoder
        path = entry.path.removeprefix("local-dir:") if entry.path else None
        dual = DualEncoder.load(path, arch=spec.arch) if path else build_dual_encoder(spec)
        if not entry.path and not spec.pretrained and not spec.arch.startswith("local-dir:"):
            log.warning("model %s: dual encoder %s has random weights (no path or pretrained)", entry.name, spec.arch)
        dual.model.to(dev).eval()
        return DualEncoderScorer(dual, entry.name, entry.path or spec.pretrained or spec.arch)
    if entry.kind == "captioner":
        from mmw2s.models.captioners.build import load_captioner  # BLIP, VED or a prompted VLM, by its config

        source = entry.path or entry.captioner.name
        captioner = load_captioner(replace(entry.captioner, name=_existing(source, entry)))
        if entry.captioner.device_map is None:  # else from_pretrained placed it
            captioner.model.to(dev)
        captioner.model.eval()
        return CaptionerScorer(captioner, entry.name, source, settings)
    if entry.kind == "filter":
        source = entry.path or entry.filter.name
        flt = BlipItmFilter.load(_existing(source, entry), mode=entry.filter.mode, max_length=entry.filter.max_length)
        flt.model.to(dev).eval()
        if flt.mode == "itc":
            return ItcScorer(flt, entry.name, source)
        return ItmScorer(flt, entry.name, source, settings)
    if entry.kind == "llava":
        from mmw2s.models.llava import LlavaStudent

        if not entry.path:
            raise ValueError(f"model {entry.name}: a llava model is evaluated from its saved folder (path=...)")
        student = LlavaStudent.from_pretrained(entry.path).to(dev).eval()
        return LlavaScorer(student, entry.name, entry.path, vqa.max_new_tokens)
    raise ValueError(f"unknown model kind {entry.kind!r}")


def _existing(source: str, entry: ModelEntry) -> str:
    """A captioner / filter source must be a saved folder or a hub id; a registered from-scratch
    name has no vocabulary without training captions, so it cannot be evaluated as such."""
    from mmw2s.models.captioners.build import list_captioners

    if source in list_captioners() and not Path(source).exists():
        raise ValueError(f"model {entry.name}: {source!r} is a from-scratch config; evaluate a trained "
                         "model by its saved folder (path=...) or a hub id")
    return source
