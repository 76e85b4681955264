"""The interfaces every captioner kind implements, and what an encoded-image captioner reads.

``Captioner`` is what the bootstrap calls: ``input_builder`` (preprocessing that runs in data-loader
workers, or None when the captioner reads the images' original bytes), ``caption``, ``provenance``,
``save`` and ``close``. ``TrainableCaptioner`` adds what training and likelihood scoring call
(``preprocess``, ``encode_texts``, ``loss``, ``log_likelihood``, ``log_likelihood_matrix``): BLIP and
VisionEncoderDecoder have it (`blip_ved.BlipVedCaptioner`); prompted VLMs
(`prompted_vlm.PromptedCaptioner`) and endpoints (`endpoint.EndpointCaptioner`) do not, and
``require_trainable`` says so by name instead of failing deep inside a loop.

Light on purpose (no torch import): config schemas and the bootstrap stages import it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable


# A model's markup token: <loc0042>, <seg007>, <image>, <|im_end|>, <row_1_col_1>. Prompted VLMs
# drop such tokens when decoding; the bootstrap refuses captions made of nothing else.
MARKUP = re.compile(r"<[^<>\s]+>")


def read_prompt(prompt: str | None, prompt_file: str | None) -> str | None:
    """The prompt text: ``prompt`` itself, or the stripped content of ``prompt_file`` (UTF-8).

    Both set must say the same; a ``ValueError`` says so otherwise.
    """
    if prompt_file is None:
        return prompt
    text = Path(prompt_file).read_text(encoding="utf-8").strip()
    if prompt is not None and prompt.strip() != text:
        raise ValueError(f"captioner.prompt and captioner.prompt_file={prompt_file} disagree: set one")
    return text


@dataclass(frozen=True)
class EncodedImage:
    """One image as a captioner that reads original bytes gets it (an endpoint: no re-encoding).

    ``seed`` is the sample's own sampling seed (run seed, shard, key), so its captions do not depend
    on which other images travel with it; ``shard`` names the input shard for per-shard counters.
    """

    key: str
    shard: str
    data: bytes
    ext: str  # the member's extension in the shard: jpg, png, webp ...
    seed: int


@runtime_checkable
class Captioner(Protocol):
    """What the bootstrap needs from a captioner of any kind."""

    #: "tensors": ``caption`` reads what ``input_builder()`` made; "encoded": a list of `EncodedImage`
    inputs: str

    def input_builder(self) -> Callable[[list], Any] | None:
        """Images -> model inputs, run in data-loader workers (None: nothing to do there)."""

    def caption(self, inputs: Any, **decoding: Any) -> list[list[str]]:
        """``decoding["num_captions"]`` captions per image, in input order."""

    def provenance(self) -> dict:
        """What every bootstrapped sample records about this captioner beyond name and decoding."""

    def save(self, path: str | Path) -> Path | None:
        """Write what reloads this captioner to ``path`` (None: nothing local to save)."""

    def close(self) -> None:
        """Release threads, connections and servers."""


@runtime_checkable
class TrainableCaptioner(Captioner, Protocol):
    """A captioner that training (``loss``) and zero-shot likelihood scoring can use.

    ``pixel_values`` is ``preprocess(images)``: the images' pixel tensor on the model's device.
    """

    def preprocess(self, images: list) -> Any:
        """Images -> ``(B, 3, H, W)`` pixel values on the model's device."""

    def encode_texts(self, texts: list[str]) -> tuple[Any, Any]:
        """Texts -> token ids and mask ``(B, T)``, as ``loss`` and ``log_likelihood`` read them."""

    def loss(self, pixel_values: Any, captions: list[str]) -> Any:
        """Mean teacher-forced cross-entropy of ``captions`` given the images."""

    def log_likelihood(self, pixel_values: Any, texts: list[str]) -> Any:
        """``(B,)``: log p(text_i | image_i)."""

    def log_likelihood_matrix(self, pixel_values: Any, texts: list[str]) -> Any:
        """``(B, K)``: log p(text_k | image_b) for every image and every text."""


class NotTrainableError(TypeError):
    """A stage that trains or scores likelihoods was handed a captioner that only captions."""


class CaptionerLoadError(ValueError):
    """A checkpoint, processor, prompt or server that cannot caption; raised before any image is read."""


def require_trainable(captioner: Any, what: str) -> TrainableCaptioner:
    """``captioner`` itself when it can be trained and score likelihoods; else a clear error."""
    if isinstance(captioner, TrainableCaptioner):
        return captioner
    kind = getattr(captioner, "kind", type(captioner).__name__)
    raise NotTrainableError(f"{what} needs a trainable captioner (BLIP or VisionEncoderDecoder, with loss and "
                            f"log_likelihood); this {kind} captioner only captions")


class Caption(str):
    """A caption with what a text check cannot know: why it can never be kept (``invalid``:
    ``refused``, the model refused; ``malformed``, the answer was no completion; ``rejected``, the
    server refused the request) and which source wrote it (``source``: ``rewrite`` for LaCLIP-style
    rewrites of the web caption; None for the captioner's own)."""

    invalid: str | None
    source: str | None

    def __new__(cls, text: str, invalid: str | None = None, source: str | None = None) -> "Caption":
        obj = super().__new__(cls, text)
        obj.invalid, obj.source = invalid, source
        return obj

    def __reduce__(self) -> tuple:  # pickles (DataLoader, Ray) with its tags
        return (Caption, (str(self), self.invalid, self.source))


def InvalidCaption(text: str, reason: str) -> Caption:  # noqa: N802 - reads as the type it makes
    """A `Caption` that can never be kept, for ``reason``."""
    return Caption(text, invalid=reason)
