"""``BlipVedCaptioner``: the trainable captioners, Hugging Face BLIP and VisionEncoderDecoder.

The wrapper holds the HF model, its tokenizer and image processor, and gives the trainer, the
bootstrapper and the evaluator what they need: ``preprocess``, ``loss`` (teacher-forced LM loss),
``generate`` (nucleus / beam / greedy, several captions per image), ``log_likelihood`` (sum of
log p(text | image), used to score class names zero-shot) and ``save`` / ``load``: the
``TrainableCaptioner`` protocol (`protocol.py`). The bootstrap goes through ``input_builder``
(images -> a dict of tensors, in data-loader workers) and ``caption`` (that dict -> captions), as
for every ``Captioner``.

A saved folder is a plain ``save_pretrained`` folder: ``BlipForConditionalGeneration`` or
``VisionEncoderDecoderModel`` ``.from_pretrained(folder)``, ``AutoTokenizer`` and
``AutoImageProcessor`` (and, for BLIP, ``AutoProcessor``) load it without any code of ours.

How the two families line up. Every caption is turned into ``[bos] words [eos]``:
- BLIP's decoder reads the whole sequence; its first token must be ``text_config.bos_token_id``
  (BLIP's ``[DEC]`` token; ``BlipForConditionalGeneration.generate`` starts from it and stops at
  ``text_config.sep_token_id``). Real BLIP checkpoints ship a BERT tokenizer whose ``[CLS]`` we
  never emit: we tokenize without special tokens and add bos / eos ourselves.
- A VisionEncoderDecoder reads ``decoder_input_ids = [start] words`` and predicts
  ``words [eos]``, with ``decoder_start_token_id`` as ``[start]``.
In both, logits at position t predict token t + 1 of the full sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipProcessor,
    PreTrainedModel,
    VisionEncoderDecoderModel,
)
from transformers.modeling_outputs import BaseModelOutput

from ..image_inputs import ProcessorPixels

from .generation import decoding_kwargs, seeded

BLIP, VED = "blip", "vision-encoder-decoder"
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    BLIP: BlipForConditionalGeneration,
    VED: VisionEncoderDecoderModel,
}


class BlipVedCaptioner:
    """An HF captioning model (BLIP or VisionEncoderDecoder) with its tokenizer and image processor.

    ``model`` is the ``torch.nn.Module`` to train (``captioner.model.parameters()``); it may be
    replaced by a distributed wrapper (``accelerator.prepare``): ``loss`` goes through its forward,
    and generation unwraps it.
    """

    kind = "checkpoint"
    inputs = "tensors"  # caption() reads input_builder()'s tensors (`protocol.Captioner.inputs`)

    def __init__(self, model: PreTrainedModel, tokenizer: Any, image_processor: Any, max_length: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        self.family = self._core().config.model_type
        self.bos_id, self.eos_id, self.pad_id = _special_ids(self._core())

    # ---- inputs -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> normalized pixel tensor ``(B, 3, H, W)`` on the model's device."""
        return ProcessorPixels(self.image_processor)(images).to(self.device)

    def input_builder(self) -> PixelInputs:
        """Images -> ``{"pixel_values": (B, 3, H, W)}`` on CPU; holds no model (data-loader workers)."""
        return PixelInputs(self.image_processor)

    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> ``[bos] words [eos]`` ids and mask, both ``(B, T)``, right-padded, truncated."""
        words = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length - 2
        )["input_ids"]
        seqs = [[self.bos_id, *w, self.eos_id] for w in words]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    # ---- training and scoring -------------------------------------------------------------------
    def _next_token_logits(self, pixel_values: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T-1, V)``; row t predicts ``ids[:, t + 1]``. Goes through ``model.forward``."""
        if self.family == BLIP:
            out = self.model(pixel_values=pixel_values, input_ids=ids, attention_mask=mask)
            return out.logits[:, :-1]  # (B, T-1, V): the logits after eos predict nothing
        out = self.model(
            pixel_values=pixel_values, decoder_input_ids=ids[:, :-1], decoder_attention_mask=mask[:, :-1]
        )
        return out.logits  # (B, T-1, V)

    def loss(self, pixel_values: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Mean teacher-forced cross-entropy per caption token (eos included): the LM loss to train."""
        ids, mask = self.encode_texts(captions)
        logits = self._next_token_logits(pixel_values, ids, mask)  # (B, T-1, V)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (B, T-1)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def log_likelihood(self, pixel_values: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """``(B,)``: sum over tokens of log p(text_i | image_i), eos included (a complete caption).

        Run it under ``torch.no_grad()`` to score; it keeps the graph otherwise.
        """
        ids, mask = self.encode_texts(texts)
        logits = self._next_token_logits(pixel_values, ids, mask)  # (B, T-1, V)
        return _sequence_logprob(logits, ids[:, 1:], mask[:, 1:])

    @torch.no_grad()
    def log_likelihood_matrix(self, pixel_values: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """``(B, K)``: log p(text_k | image_b) for every image and every text (zero-shot classes).

        The images are encoded once and their states repeated for the K texts.
        """
        core = self._core()
        b, k = pixel_values.shape[0], len(texts)
        ids, mask = self.encode_texts(texts)  # (K, T)
        ids, mask = ids.repeat(b, 1), mask.repeat(b, 1)  # (B*K, T): image-major
        if self.family == BLIP:
            states = core.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, N, D)
            states = states.repeat_interleave(k, dim=0)  # (B*K, N, D)
            logits = core.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=states).logits
            logits = logits[:, :-1]  # (B*K, T-1, V)
        else:
            states = core.encoder(pixel_values=pixel_values).last_hidden_state  # (B, N, D)
            enc = BaseModelOutput(last_hidden_state=states.repeat_interleave(k, dim=0))
            logits = core(
                encoder_outputs=enc, decoder_input_ids=ids[:, :-1], decoder_attention_mask=mask[:, :-1]
            ).logits  # (B*K, T-1, V)
        return _sequence_logprob(logits, ids[:, 1:], mask[:, 1:]).view(b, k)

    # ---- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        *,
        num_captions: int = 1,
        method: str = "nucleus",
        top_p: float = 0.9,
        num_beams: int = 3,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
    ) -> list[list[str]]:
        """``num_captions`` captions for each image: a list (images) of lists (captions).

        ``nucleus``: sampling from the smallest token set with mass ``top_p`` (BLIP's CapFilt
        captioner, diverse); ``beam``: the ``num_captions`` best of ``max(num_beams, num_captions)``
        beams; ``greedy``: one caption per image. ``seed`` makes sampling reproducible without
        touching the global RNG.
        """
        kwargs = decoding_kwargs(method, num_captions, top_p, num_beams)
        kwargs.update(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
        if repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = repetition_penalty
        if self.family == VED:  # BLIP's own generate sets these from its text config
            kwargs.update(eos_token_id=self.eos_id, pad_token_id=self.pad_id, decoder_start_token_id=self.bos_id)
        with seeded(pixel_values.device, seed):
            out = self._core().generate(pixel_values=pixel_values, **kwargs)  # (B * num_captions, L)
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return [texts[i : i + num_captions] for i in range(0, len(texts), num_captions)]

    def caption(self, inputs: dict[str, torch.Tensor], **decoding: Any) -> list[list[str]]:
        """``generate`` on what ``input_builder`` made (the bootstrap's entry point)."""
        return self.generate(inputs["pixel_values"].to(self.device, non_blocking=True), **decoding)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """``save_pretrained`` of model, tokenizer and image processor into one folder.

        BLIP folders also get a ``BlipProcessor`` config, so ``AutoProcessor`` loads them like the
        Salesforce checkpoints.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._core().save_pretrained(path)
        if self.family == BLIP:
            BlipProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer).save_pretrained(path)
        else:
            self.tokenizer.save_pretrained(path)
            self.image_processor.save_pretrained(path)
        return path

    @classmethod
    def load(cls, name_or_path: str | Path, max_length: int = 32, **model_kwargs: Any) -> BlipVedCaptioner:
        """Load a captioner from a hub id or local folder (ours or a real checkpoint).

        ``model_kwargs`` go to ``from_pretrained`` (e.g. ``torch_dtype``, ``revision``).
        """
        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in MODEL_CLASSES:
            raise ValueError(f"{name_or_path}: model_type {config.model_type!r} is not a supported captioner")
        model = MODEL_CLASSES[config.model_type].from_pretrained(name_or_path, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if tokenizer.pad_token is None:  # GPT-2 tokenizers have none; eos is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        positions = _text_positions(model.config)
        if positions is not None and max_length > positions:
            # a longer text would index past the decoder's position table: truncate to what it has
            max_length = positions
        return cls(model.eval(), tokenizer, image_processor, max_length=max_length)

    def provenance(self) -> dict:
        """What a bootstrapped sample records about this captioner beyond its name and decoding."""
        return {}

    def close(self) -> None:
        """Nothing held outside this process."""

    def _core(self) -> PreTrainedModel:
        """The HF model itself, under any DDP / accelerate wrapper."""
        return getattr(self.model, "module", self.model)


class PixelInputs:
    """Images -> ``{"pixel_values": (B, 3, H, W)}`` with one image processor (BLIP, VED)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        return {"pixel_values": ProcessorPixels(self.image_processor)(images)}


def _special_ids(model: PreTrainedModel) -> tuple[int, int, int]:
    """(bos, eos, pad) token ids as each family's own ``generate`` uses them."""
    if model.config.model_type == BLIP:
        text = model.config.text_config
        return text.bos_token_id, text.sep_token_id, text.pad_token_id
    gen, dec = model.generation_config, model.config.decoder
    bos = gen.decoder_start_token_id if gen.decoder_start_token_id is not None else model.config.decoder_start_token_id
    eos = gen.eos_token_id if gen.eos_token_id is not None else dec.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else eos
    if bos is None or eos is None:
        raise ValueError("VisionEncoderDecoder config needs decoder_start_token_id and eos_token_id")
    return bos, eos, pad


def _sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(target) over unmasked positions: logits ``(B, T, V)``, targets/mask ``(B, T)``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (token_logp * mask).sum(dim=1)


def _text_positions(config: Any) -> int | None:
    """The decoder's ``max_position_embeddings`` (BLIP: text_config; VisionEncoderDecoder: decoder)."""
    for part in ("text_config", "decoder"):
        sub = getattr(config, part, None)
        if sub is not None and getattr(sub, "max_position_embeddings", None):
            return int(sub.max_position_embeddings)
    return None
