"""`LlavaStudent`: a LLaVA-style model — vision tower + MLP projector + any causal LM.

The vision tower (timm, or an open_clip architecture's visual tower) turns an image into a grid
of feature vectors; the projector (LLaVA-1.5: Linear-GELU-Linear) maps each to the LM's embedding
width; the image tokens replace the ``<image>`` placeholder in the LM's input embeddings. Any
``AutoModelForCausalLM`` works: a hub id or folder for users with weights, or a small Llama built
from scratch here with a word-level tokenizer of the training texts.

Sequences follow LLaVA's v1 conversation format, each piece tokenized on its own so that masks
are exact::

    [bos] SYSTEM USER: <image x N> QUESTION ASSISTANT: ANSWER [eos] USER: QUESTION ASSISTANT: ...

The placeholder is expanded to ``N`` copies of ``IMAGE_TOKEN_ID`` (an id no vocabulary has) at
tokenization, so splicing never changes sequence lengths. Labels are the answers and their
``[eos]``; everything else (system, questions, image tokens, padding) is ``IGNORE_INDEX``.

A saved folder: ``llava_config.json``, ``vision_tower.safetensors``, ``projector.safetensors``,
``lm/`` (the LM and its tokenizer, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer``) and,
for an open_clip tower, ``vision/open_clip_config.json`` (its architecture): the folder is
self-contained, so a tower built from a ``local-dir:`` CLIP reloads without that CLIP folder.
With ``image_positions``, ``image_positions.safetensors`` holds the image tokens' learned positions.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn
from PIL import Image

import mmw2s.models.timm_towers  # noqa: F401 - registers the mmw2s_convnet_* towers with timm
from mmw2s.models.llava_spec import LlavaSpec

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_ID = -200  # LLaVA's sentinel: never a real token id
IGNORE_INDEX = -100
CONFIG_FILE, VISION_FILE, PROJECTOR_FILE, LM_DIR = ("llava_config.json", "vision_tower.safetensors",
                                                    "projector.safetensors", "lm")
POSITIONS_FILE = "image_positions.safetensors"
VISION_ARCH_DIR = "vision"  # an open_clip tower's architecture: VISION_ARCH_DIR/open_clip_config.json
LM_CONFIG_DIR = Path(__file__).resolve().parent / "llava_configs"
ROLES = ("USER", "ASSISTANT")


def registered_lms() -> list[str]:
    """Names of the from-scratch LM configs in ``models/llava_configs``."""
    return sorted(p.stem for p in LM_CONFIG_DIR.glob("*.json"))


# --------------------------------------------------------------------------------------------
# Vision tower and projector


class VisionTower(nn.Module):
    """Image -> a sequence of feature vectors ``(B, N, C)`` from one block of a backbone."""

    def __init__(self, backbone: nn.Module, layer: int | None, open_clip_cfg: dict | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        # open_clip towers: the architecture (``model_cfg``, ``preprocess_cfg``), saved with the weights
        self.open_clip_cfg = open_clip_cfg

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, N, C)``."""
        if self.layer is None and hasattr(self.backbone, "forward_features"):
            feats = self.backbone.forward_features(pixel_values)
        else:
            index = -1 if self.layer is None else self.layer
            out = self.backbone.forward_intermediates(pixel_values, indices=[index], intermediates_only=True)
            feats = out["image_intermediates"][0] if isinstance(out, dict) else out[0]
        if feats.ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
            return feats.flatten(2).transpose(1, 2)
        return feats[:, getattr(self.backbone, "num_prefix_tokens", 0):]  # (B, N, C) without class tokens


def build_vision_tower(spec: LlavaSpec, load_weights: bool = True) -> tuple[VisionTower, dict]:
    """The tower named by ``spec`` and its preprocessing (``size``, ``mean``, ``std``)."""
    import timm

    pretrained = spec.vision_pretrained if load_weights else None
    torch.manual_seed(spec.seed)
    if spec.vision_source == "timm":
        kwargs: dict[str, Any] = {"num_classes": 0}
        if pretrained and pretrained != "hub":
            kwargs["pretrained_cfg_overlay"] = {"file": pretrained}
        backbone = timm.create_model(spec.vision_tower, pretrained=bool(pretrained), **kwargs)
        data = timm.data.resolve_data_config({}, model=backbone)
        size, mean, std = data["input_size"][-1], data["mean"], data["std"]
        arch = None  # a timm name (or hub weights) is its own architecture
    else:
        # The dual-encoder builder knows our architectures, JSON configs and "local-dir:" folders
        # (e.g. a trained CLIP student); only its visual tower is kept.
        from mmw2s.models.dual_encoders import build_dual_encoder
        from mmw2s.models.specs import DualEncoderSpec

        dual = build_dual_encoder(DualEncoderSpec(arch=spec.vision_tower, pretrained=pretrained,
                                                  image_size=spec.image_size, seed=spec.seed))
        visual = dual.model.visual
        backbone = getattr(visual, "trunk", visual)  # open_clip's TimmModel wraps a timm trunk
        cfg = visual.preprocess_cfg
        size = cfg["size"][-1] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
        mean, std = cfg["mean"], cfg["std"]
        arch = {"model_cfg": dual.model_cfg, "preprocess_cfg": dict(cfg)}
    size = spec.image_size or size
    return VisionTower(backbone, spec.vision_layer, arch), {"size": int(size), "mean": list(mean), "std": list(std)}


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA-1.5's ``mlp2x_gelu`` (Linear-GELU-Linear) or LLaVA-1's single ``linear`` layer."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"unknown projector {kind!r}; expected mlp2x_gelu or linear")


class ImagePositions(nn.Module):
    """A learned embedding per image token, added to the projected features.

    The LM's rotary positions tell an answer only how far back an image token is, and that offset
    changes with the length of the question; a conv tower's features carry no absolute position
    either. With these, "where is the circle" can be read off which image token holds it.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        # On the scale of freshly projected features (per-dimension std ~0.3-0.5), so the tokens
        # are told apart from the first step.
        self.weight = nn.Parameter(torch.randn(num_tokens, dim) * 0.5)  # (N, D)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.weight.to(tokens.dtype)  # (B, N, D)


# --------------------------------------------------------------------------------------------
# Language model


def chat_words(spec: LlavaSpec) -> list[str]:
    """Text a from-scratch tokenizer must know besides the training texts (format words)."""
    return [spec.system_prompt, " ".join(f"{r}:" for r in ROLES)]


def build_lm(spec: LlavaSpec, texts: Iterable[str] = ()) -> tuple[nn.Module, Any]:
    """The causal LM and tokenizer: a registered config from scratch, or ``from_pretrained``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if spec.lm not in registered_lms():
        tokenizer = AutoTokenizer.from_pretrained(spec.lm)
        return AutoModelForCausalLM.from_pretrained(spec.lm), tokenizer
    from mmw2s.models.tokenizers import build_word_tokenizer

    tokenizer = build_word_tokenizer([*chat_words(spec), *texts], max_vocab=spec.max_vocab,
                                     min_frequency=spec.min_word_freq, model_max_length=spec.max_length)
    params = json.loads((LM_CONFIG_DIR / f"{spec.lm}.json").read_text())
    config = AutoConfig.for_model(**params, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(spec.seed)
    return AutoModelForCausalLM.from_config(config), tokenizer


# --------------------------------------------------------------------------------------------
# The student


class LlavaStudent(nn.Module):
    """Vision tower + projector + causal LM, with LLaVA's conversation format and masks."""

    def __init__(self, vision: VisionTower, projector: nn.Module, lm: nn.Module, tokenizer: Any,
                 spec: LlavaSpec, image_cfg: dict, num_image_tokens: int) -> None:
        super().__init__()
        self.vision, self.projector, self.lm = vision, projector, lm
        dim = lm.get_input_embeddings().embedding_dim
        self.image_positions = ImagePositions(num_image_tokens, dim) if spec.image_positions else None
        self.tokenizer, self.spec, self.image_cfg = tokenizer, spec, image_cfg
        self.num_image_tokens = num_image_tokens
        self.vision_trainable = False

    # ---- building and saving ------------------------------------------------------------------
    @classmethod
    def build(cls, spec: LlavaSpec, texts: Iterable[str] = ()) -> "LlavaStudent":
        """A new student; ``texts`` (training conversations) build a from-scratch LM's vocabulary."""
        vision, image_cfg = build_vision_tower(spec)
        lm, tokenizer = build_lm(spec, texts)
        feat_dim, n_tokens = _probe(vision, image_cfg["size"])
        torch.manual_seed(spec.seed)
        projector = build_projector(spec.projector, feat_dim, lm.get_input_embeddings().embedding_dim)
        return cls(vision, projector, lm, tokenizer, spec, image_cfg, n_tokens)  # (positions seeded too)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the folder that `from_pretrained` reads."""
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(path / LM_DIR)
        self.tokenizer.save_pretrained(path / LM_DIR)
        save_model(self.vision, str(path / VISION_FILE))
        if self.vision.open_clip_cfg is not None:
            (path / VISION_ARCH_DIR).mkdir(exist_ok=True)
            (path / VISION_ARCH_DIR / "open_clip_config.json").write_text(
                json.dumps(self.vision.open_clip_cfg, indent=2))
        save_model(self.projector, str(path / PROJECTOR_FILE))
        if self.image_positions is not None:
            save_model(self.image_positions, str(path / POSITIONS_FILE))
        config = {"format": "mmw2s-llava", "version": 1, "spec": asdict(self.spec), "image": self.image_cfg,
                  "num_image_tokens": self.num_image_tokens}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "LlavaStudent":
        """Reload a folder written by `save_pretrained` (the LM from its ``lm/`` subfolder)."""
        from safetensors.torch import load_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        config = json.loads((path / CONFIG_FILE).read_text())
        spec = LlavaSpec(**config["spec"])
        # The saved weights replace the init; an open_clip tower is built from the saved
        # architecture, not from the (maybe moved or deleted) folder or name the spec gives.
        arch = path / VISION_ARCH_DIR
        build = replace(spec, vision_tower=f"local-dir:{arch}") if (arch / "open_clip_config.json").is_file() else spec
        with _quiet_root_warnings():  # open_clip warns of a random init that the next line replaces
            vision, _ = build_vision_tower(build, load_weights=False)
        load_model(vision, str(path / VISION_FILE))
        lm = AutoModelForCausalLM.from_pretrained(path / LM_DIR)
        tokenizer = AutoTokenizer.from_pretrained(path / LM_DIR)
        feat_dim = vision(torch.zeros(1, 3, config["image"]["size"], config["image"]["size"])).shape[-1]
        projector = build_projector(spec.projector, feat_dim, lm.get_input_embeddings().embedding_dim)
        load_model(projector, str(path / PROJECTOR_FILE))
        student = cls(vision, projector, lm, tokenizer, spec, config["image"], config["num_image_tokens"])
        if student.image_positions is not None:
            load_model(student.image_positions, str(path / POSITIONS_FILE))
        return student.eval()

    # ---- training stages ----------------------------------------------------------------------
    def freeze(self, stage: int, train_vision: bool = False, train_lm: bool = False) -> list[str]:
        """Set what trains: stage 1 the projector only (LM frozen unless ``train_lm``); stage 2
        projector and LM.

        The vision tower stays frozen unless ``train_vision``. Returns the trainable parts.
        """
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (projector pre-training) or 2 (instruction tuning), got {stage}")
        lm = stage == 2 or train_lm
        self.vision_trainable = train_vision
        self.vision.requires_grad_(train_vision)
        self.projector.requires_grad_(True)
        if self.image_positions is not None:
            self.image_positions.requires_grad_(True)
        self.lm.requires_grad_(lm)
        return [n for n, on in (("vision", train_vision), ("projector", True), ("lm", lm)) if on]

    def train(self, mode: bool = True) -> "LlavaStudent":
        """Train mode everywhere except a frozen vision tower, whose norm statistics must not move."""
        super().train(mode)
        if not self.vision_trainable:
            self.vision.eval()
        return self

    # ---- inputs -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the projector's weights."""
        return next(self.projector.parameters()).device

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> ``(B, 3, S, S)`` on the model's device (see `images_to_tensor`)."""
        return images_to_tensor(images, self.image_cfg).to(self.device)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _human_ids(self, question: str, first: bool) -> list[int]:
        """``[SYSTEM] USER: q ASSISTANT:`` with ``<image>`` expanded to the image tokens."""
        head = f"{self.spec.system_prompt} {ROLES[0]}:" if first else f"{ROLES[0]}:"
        ids = self._ids(head)
        before, sep, after = question.partition(IMAGE_PLACEHOLDER)
        ids += self._ids(before.strip())
        if sep:
            ids += [IMAGE_TOKEN_ID] * self.num_image_tokens + self._ids(after.strip())
        return ids + self._ids(f"{ROLES[1]}:")

    def encode_conversation(self, turns: list[tuple[str, str]]) -> dict[str, list[int]] | None:
        """``input_ids`` and ``labels`` of a conversation, truncated to ``spec.max_length``.

        Returns None when truncation leaves no answer token to learn from.
        """
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids, labels = list(bos), [IGNORE_INDEX] * len(bos)
        for i, (question, answer) in enumerate(turns):
            human = self._human_ids(question, first=i == 0)
            reply = self._ids(answer) + [self.tokenizer.eos_token_id]
            ids += human + reply
            labels += [IGNORE_INDEX] * len(human) + reply
        ids, labels = ids[: self.spec.max_length], labels[: self.spec.max_length]
        if ids.count(IMAGE_TOKEN_ID) not in (0, self.num_image_tokens):
            return None  # the image itself was cut: max_length is too small for this record
        return {"input_ids": ids, "labels": labels} if any(t != IGNORE_INDEX for t in labels) else None

    def collate(self, encoded: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Right-pad encoded conversations into ``input_ids``, ``attention_mask``, ``labels`` ``(B, T)``."""
        width = max(len(e["input_ids"]) for e in encoded)
        pad = self._pad_id()
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    # ---- forward and generation ---------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> image tokens in the LM's embedding space ``(B, N, D)``."""
        with torch.set_grad_enabled(self.vision_trainable and torch.is_grad_enabled()):
            feats = self.vision(pixel_values)  # (B, N, C)
        tokens = self.projector(feats)  # (B, N, D)
        return tokens if self.image_positions is None else self.image_positions(tokens)

    def embed(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
        """LM input embeddings ``(B, T, D)`` with the image tokens spliced in at the placeholders."""
        is_image = input_ids == IMAGE_TOKEN_ID  # (B, T)
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(is_image, self._pad_id()))  # (B, T, D)
        if not is_image.any():
            return embeds
        image_tokens = self.encode_images(pixel_values).to(embeds.dtype)  # (B, N, D)
        rows = is_image.any(dim=1)  # only samples whose text holds the placeholder use their image
        if not torch.equal(is_image.sum(dim=1)[rows], torch.full_like(is_image.sum(dim=1)[rows], self.num_image_tokens)):
            raise ValueError(f"each <image> must expand to exactly {self.num_image_tokens} image tokens")
        embeds = embeds.clone()
        embeds[is_image] = image_tokens[rows].reshape(-1, embeds.shape[-1])
        return embeds

    def forward(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Any:
        """The LM's output (``loss`` when ``labels`` are given: mean next-token CE over answers)."""
        embeds = self.embed(pixel_values, input_ids)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to one question per image; a prompt without ``<image>`` gets it prepended."""
        if len(prompts) != pixel_values.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {pixel_values.shape[0]} images")
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        rows = [bos + self._human_ids(p if IMAGE_PLACEHOLDER in p else f"{IMAGE_PLACEHOLDER}\n{p}", first=True)
                for p in prompts]
        width = max(map(len, rows))
        # Left padding: every prompt ends where generation starts.
        ids = torch.tensor([[self._pad_id()] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        embeds = self.embed(pixel_values.to(self.device), ids)
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                               do_sample=False, pad_token_id=self._pad_id(),
                               eos_token_id=self.tokenizer.eos_token_id)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def images_to_tensor(images: list[Image.Image], image_cfg: dict) -> torch.Tensor:
    """PIL images -> CPU ``(B, 3, S, S)``: resize (bicubic), scale to [0, 1], normalise.

    A plain function of the image config, so DataLoader workers can run it without the model.
    """
    size = image_cfg["size"]
    mean = torch.tensor(image_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(image_cfg["std"]).view(3, 1, 1)
    out = []
    for im in images:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)  # (S, S, 3)
        out.append((x.permute(2, 0, 1).float() / 255.0 - mean) / std)  # (3, S, S)
    return torch.stack(out)


@contextlib.contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    """Drop WARNING records of the root logger (open_clip's) for the duration of the block."""
    root = logging.getLogger()
    drop = lambda record: record.levelno != logging.WARNING  # noqa: E731
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _probe(vision: VisionTower, size: int) -> tuple[int, int]:
    """Feature width and number of image tokens of ``vision`` at ``size`` pixels."""
    with torch.no_grad():
        feats = vision(torch.zeros(1, 3, size, size))  # (1, N, C)
    return int(feats.shape[-1]), int(feats.shape[1])
