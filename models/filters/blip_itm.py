"""BLIP image-text matching filter: ``BlipForImageTextRetrieval`` with its processor.

CapFilt's filter (Li et al. 2022) keeps a caption when the ITM head calls the pair a match.
Two heads score a pair:
- ``itm``: the cross-attending text encoder reads the caption over the image patches, and a linear
  head says match / no match; the score is softmax(itm_logits)[:, 1], a probability in [0, 1].
- ``itc``: cosine of the projected image [CLS] and text [CLS] embeddings, in [-1, 1] (cheaper; the
  two towers never see each other).

For users with BLIP weights: ``ItmSpec(name="Salesforce/blip-itm-base-coco")``. The registered
``blip-tiny`` / ``blip-small`` configs (shared with the captioners, ``BlipConfig`` is the same
class) build a random-weight model with a word tokenizer for tests and from-scratch training
(``loss``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessor,
    BlipProcessor,
)

from ..captioners.build import captioner_config, list_captioners
from ..image_inputs import ProcessorPixels
from ..specs import ItmSpec
from ..tokenizers import CLS, PAD, SEP, build_word_tokenizer

MODES = ("itm", "itc")
ITC_TEMPERATURE = 0.07  # BLIP's initial ITC temperature; HF's retrieval model carries no learned one


class BlipItmFilter:
    """Scores (image, text) pairs with BLIP's ITM or ITC head; higher is a better match."""

    def __init__(self, model: BlipForImageTextRetrieval, tokenizer, image_processor, mode: str = "itm", max_length: int = 32,
                 name: str = ""):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.mode = mode
        self.max_length = max_length
        self.name = name  # the hub id, folder or registered config it was built from (provenance)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def input_builder(self) -> ProcessorPixels:
        """PIL images -> CPU pixel tensor ``(B, 3, H, W)``; holds no model (data-loader workers)."""
        return ProcessorPixels(self.image_processor)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> pixel tensor ``(B, 3, H, W)`` on the model's device."""
        return self.input_builder()(images).to(self.device)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` ``(B, T)`` with the tokenizer's own special tokens."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
            return_token_type_ids=False,
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def itm_logits(self, pixel_values: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """``(B, 2)`` no-match / match logits for image i with text i."""
        out = self.model(pixel_values=pixel_values, use_itm_head=True, **self.tokenize(texts))
        return out.itm_score

    def itc_similarity(self, pixel_values: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """``(B_images, B_texts)`` cosine similarities of every image with every text."""
        return self.model(pixel_values=pixel_values, use_itm_head=False, **self.tokenize(texts)).itm_score

    def image_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` the vision tower's patch states, what the ITM text encoder attends to."""
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def match_logits(self, states: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 2)`` no-match / match logits of text i over image states i.

        The second half of ``BlipForImageTextRetrieval.forward(use_itm_head=True)``: given the
        states, an image is encoded once however many texts it is matched with.
        """
        atts = torch.ones(states.shape[:-1], dtype=torch.long, device=states.device)  # (B, N)
        hidden = self.model.text_encoder(**tokens, encoder_hidden_states=states,
                                         encoder_attention_mask=atts).last_hidden_state  # (B, L, D)
        return self.model.itm_head(hidden[:, 0, :])

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` ITC image features: the projected [CLS] state of the vision tower, normalised."""
        states = self.image_states(pixel_values)
        return F.normalize(self.model.vision_proj(states[:, 0, :]).float(), dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """``(B, D)`` ITC text features: the projected [CLS] state of the text tower (no image), normalised."""
        tokens = self.tokenize(texts)
        hidden = self.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(self.model.text_proj(hidden.last_hidden_state[:, 0, :]).float(), dim=-1)

    def truncated(self, texts: list[str]) -> list[bool]:
        """Per text, whether ``tokenize`` cuts it to ``max_length`` tokens."""
        return [len(ids) > self.max_length for ids in self.tokenizer(list(texts))["input_ids"]]

    def score_grouped(self, pixels: torch.Tensor, texts: list[str], owner: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        """``(T,)`` score of text t with image ``owner[t]``, each image through the ViT once, and
        which texts were truncated (see ``CaptionFilter``)."""
        if self.mode == "itc":
            scores = self.itc_similarity(pixels, texts)[owner, torch.arange(len(texts))]  # (T,)
        else:
            states = self.image_states(pixels)[owner]  # (T, N, D)
            scores = self.match_logits(states, self.tokenize(texts)).float().softmax(dim=-1)[:, 1]  # (T,)
        return scores, self.truncated(texts)

    @torch.no_grad()
    def score(self, images: list[Image.Image] | torch.Tensor, texts: list[str], mode: str | None = None) -> torch.Tensor:
        """``(B,)`` score of image i with text i: ITM match probability or ITC cosine."""
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        if mode == "itm":
            return self.itm_logits(pixels, texts).float().softmax(dim=-1)[:, 1]
        return self.itc_similarity(pixels, texts).float().diagonal()

    def loss(self, pixel_values: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """ITC + ITM training loss on a batch of matching pairs (BLIP's filter objectives).

        ITC: symmetric InfoNCE on the cosine matrix at temperature 0.07. ITM: each image with its
        own text (match) and with its hardest in-batch negative text by ITC (no match), as in
        BLIP's hard-negative mining.
        """
        sim = self.itc_similarity(pixel_values, texts) / ITC_TEMPERATURE  # (B, B)
        labels = torch.arange(sim.shape[0], device=sim.device)
        itc = 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels))
        masked = sim.detach().masked_fill(torch.eye(len(texts), dtype=torch.bool, device=sim.device), float("-inf"))
        negatives = [texts[j] for j in masked.argmax(dim=1).tolist()]
        logits = self.itm_logits(torch.cat([pixel_values, pixel_values]), list(texts) + negatives)  # (2B, 2)
        targets = torch.cat([torch.ones_like(labels), torch.zeros_like(labels)])
        return itc + F.cross_entropy(logits, targets)

    def save(self, path: str | Path) -> Path:
        """``save_pretrained`` of model and ``BlipProcessor`` (tokenizer + image processor)."""
        path = Path(path)
        self.model.save_pretrained(path)
        BlipProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer).save_pretrained(path)
        return path

    @classmethod
    def load(cls, name_or_path: str | Path, mode: str = "itm", max_length: int = 32) -> BlipItmFilter:
        """Load from a hub id or local folder, e.g. ``Salesforce/blip-itm-base-coco``."""
        model = BlipForImageTextRetrieval.from_pretrained(name_or_path).eval()
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        return cls(model, tokenizer, image_processor, mode=mode, max_length=max_length, name=str(name_or_path))


def build_itm_filter(spec: ItmSpec, train_captions: Iterable[str] | None = None) -> BlipItmFilter:
    """Build the ITM filter a spec names: a registered BLIP config from scratch, or ``from_pretrained``."""
    if spec.name not in list_captioners():
        return BlipItmFilter.load(spec.name, mode=spec.mode, max_length=spec.max_length)
    cfg = captioner_config(spec.name)
    if cfg["family"] != "blip":
        raise ValueError(f"{spec.name!r} is not a BLIP config; the ITM filter needs one")
    if train_captions is None:
        raise ValueError(f"ITM filter {spec.name!r} is built from scratch: pass train_captions for its vocabulary")
    # [CLS] first: both heads read the text encoder's first position.
    tokenizer = build_word_tokenizer(train_captions, model_max_length=spec.max_length, first_token=CLS)
    image_size = spec.image_size or cfg["image_size"]
    vision = dict(cfg["vision_config"], image_size=image_size)
    pad, sep = tokenizer.convert_tokens_to_ids([PAD, SEP])
    text = dict(
        cfg["text_config"], vocab_size=len(tokenizer), max_position_embeddings=spec.max_length,
        pad_token_id=pad, sep_token_id=sep, bos_token_id=tokenizer.convert_tokens_to_ids(CLS),
        encoder_hidden_size=vision["hidden_size"],
    )
    extra = {k: v for k, v in cfg.items() if k in ("projection_dim", "image_text_hidden_size")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = BlipForImageTextRetrieval(BlipConfig(vision_config=vision, text_config=text, **extra))
    processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipItmFilter(model, tokenizer, processor, mode=spec.mode, max_length=spec.max_length, name=spec.name)


