"""Task adapters: what `mmw2s train` needs from a captioner or a dual encoder, behind one interface.

A `TrainTask` holds the model (`module`, the `torch.nn.Module` that is optimized and prepared by
accelerate), a light `images_to_tensor` callable that runs in DataLoader workers, `loss(batch,
step)` computed through the prepared module's forward (so DDP synchronizes gradients), and
`export(folder)`, which writes the model in its own library's format:
- captioner: a `save_pretrained` folder (model, tokenizer, image processor) that
  `BlipForConditionalGeneration` / `VisionEncoderDecoderModel.from_pretrained` and
  `BlipVedCaptioner.load` read;
- clip: `open_clip_model.safetensors`, the state dict that
  `open_clip.create_model_and_transforms(arch, pretrained=PATH)` loads (+ its config JSON);
- llava: a `LlavaStudent.save_pretrained` folder (vision tower, projector, `lm/` with its
  tokenizer) that `LlavaStudent.from_pretrained` reads.

A task may also set `data`, the shards the loop reads when they are not `cfg.data` itself.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import random
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from PIL import Image

from mmw2s.data_pipelines import ReadLimits, iter_samples
from mmw2s.train.config import TrainConfig
from mmw2s.train.data import TokenCache
from mmw2s.train.conversations import llava_sources, stage1_turns, stage2_selector, vocabulary_texts
from mmw2s.train.texts import TextSelector, mix_pools, public_meta
from mmw2s.models.captioners.build import build_captioner, list_captioners
from mmw2s.models.captioners.protocol import NotTrainableError, require_trainable
from mmw2s.models.captioners.blip_ved import BlipVedCaptioner
from mmw2s.models.image_inputs import ProcessorPixels
from mmw2s.models.dual_encoders import DualEncoder, build_dual_encoder
from mmw2s.models.llava import IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID, LlavaStudent, images_to_tensor, registered_lms
from mmw2s.models.losses import build_loss

log = logging.getLogger(__name__)
CLIP_WEIGHTS = "open_clip_model.safetensors"  # the name DualEncoder.save writes


class TrainTask(Protocol):
    """What the loop needs from a model family."""

    module: torch.nn.Module
    selector: TextSelector
    images_to_tensor: Callable[[list[Image.Image]], torch.Tensor]  # light: runs in workers

    def attach(self, prepared: torch.nn.Module) -> None: ...

    def loss(self, batch: dict, step: int) -> torch.Tensor: ...

    def export(self, folder: Path) -> None: ...


def model_path(task: str, folder: Path) -> Path:
    """The path the next stage loads from a final or checkpoint model folder."""
    return folder / CLIP_WEIGHTS if task == "clip" else folder


def build_task(cfg: TrainConfig, selector: TextSelector, resume_model: Optional[Path]) -> TrainTask:
    """The task adapter of `cfg.task`, its model built from the spec or a checkpoint's model."""
    if cfg.task == "captioner":
        return CaptionerTask(cfg, selector, resume_model)
    if cfg.task == "llava":
        return LlavaTask(cfg, selector, resume_model)
    return ClipTask(cfg, selector)


class CaptionerTask:
    """Language-model loss on (image, caption); `weighted` weights each caption's token losses."""

    def __init__(self, cfg: TrainConfig, selector: TextSelector, resume_model: Optional[Path]) -> None:
        self.cfg, self.selector = cfg, selector
        spec = cfg.captioner
        if spec.kind == "endpoint":  # refused before building it: that would start a server
            raise NotTrainableError("mmw2s train task=captioner needs a trainable captioner (BLIP or "
                                    "VisionEncoderDecoder); captioner.kind=endpoint only captions")
        if resume_model is not None:  # the checkpoint's own tokenizer, not one rebuilt from data
            captioner = BlipVedCaptioner.load(resume_model, max_length=spec.max_length)
        elif spec.name in list_captioners():
            captions = training_captions(cfg.data, selector, cfg.tokenizer_captions)
            log.info("captioner %s from scratch: tokenizer built from %d captions", spec.name, len(captions))
            captioner = build_captioner(spec, captions)
        else:
            captioner = build_captioner(spec)
        self.captioner = require_trainable(captioner, "mmw2s train task=captioner")
        self.module = self.captioner.model
        # the captioner's own image preprocessing, as a picklable callable for the DataLoader workers
        self.images_to_tensor = ProcessorPixels(self.captioner.image_processor)

    def attach(self, prepared: torch.nn.Module) -> None:
        """Route the captioner's forward passes through the prepared (e.g. DDP) module."""
        self.captioner.model = prepared

    def loss(self, batch: dict, step: int) -> torch.Tensor:
        """Mean token cross-entropy; per-caption weighted for `loss.name=weighted`."""
        pixels = batch["pixel_values"].to(self.captioner.device)  # (B, 3, H, W)
        if self.cfg.loss_name != "weighted":
            return self.captioner.loss(pixels, batch["texts"])
        log_p = self.captioner.log_likelihood(pixels, batch["texts"])  # (B,) summed over tokens
        _, mask = self.captioner.encode_texts(batch["texts"])
        tokens = mask[:, 1:].sum(dim=1).to(log_p)  # (B,) predicted tokens per caption
        weights = batch["weights"].to(log_p)
        return -(weights * log_p).sum() / (weights * tokens).sum().clamp_min(1e-8)

    def export(self, folder: Path) -> None:
        """A `save_pretrained` folder: model, tokenizer and image processor."""
        self.captioner.save(folder)


class ClipTask:
    """Contrastive training of an open_clip dual encoder with a loss from `models.losses.LOSSES`."""

    def __init__(self, cfg: TrainConfig, selector: TextSelector) -> None:
        self.cfg, self.selector = cfg, selector
        self.dual: DualEncoder = build_dual_encoder(cfg.dual_encoder)
        self.module = self.dual.model
        self.images_to_tensor = TransformImages(self.dual.preprocess_train)
        self.texts_to_tokens = TokenCache(self.dual.tokenizer)  # runs in workers, off the training thread
        kwargs: dict[str, Any] = {"duplicates": cfg.loss.duplicates}
        if cfg.loss_name == "aux_confidence":
            kwargs.update(aux_coef=cfg.loss.aux_coef, warmup_frac=cfg.loss.aux_warmup_frac)
        self.loss_fn = build_loss(cfg.loss_name, **kwargs)

    def attach(self, prepared: torch.nn.Module) -> None:
        """Forward passes go through the prepared (e.g. DDP) module."""
        self.dual.model = prepared

    def loss(self, batch: dict, step: int) -> torch.Tensor:
        """The configured contrastive loss, over the global batch when ranks are gathered."""
        device = self.dual.device
        tokens = batch["tokens"].to(device) if "tokens" in batch else self.dual.tokenize(batch["texts"])  # (B, L)
        out = self.dual.model(batch["pixel_values"].to(device), tokens)
        img, txt = out["image_features"], out["text_features"]  # (B, D) each, normalized
        weights = batch["weights"].to(device)  # (B,)
        ids = caption_ids(batch["texts"]).to(device) if self.cfg.loss.duplicates == "multi_positive" else None
        if self.cfg.loss.gather_ranks and _world() > 1:
            img, txt, weights = _gather_with_grad(img), _gather_with_grad(txt), _gather_with_grad(weights)
            ids = _gather(ids) if ids is not None else None
        return self.loss_fn(img, txt, out["logit_scale"], weights=weights,
                            step_frac=step / self.cfg.steps, caption_ids=ids)

    def export(self, folder: Path) -> None:
        """`open_clip_model.safetensors` + `open_clip_config.json` (open_clip loads both)."""
        self.dual.save(folder)


class LlavaTask:
    """LLaVA's two stages: next-token loss on the answers of (image, conversation) pairs.

    Stage 1 trains the projector on image-caption pairs (each a one-turn conversation); stage 2
    the projector and the LM on `mmw2s synthesize` records. The vision tower trains only with
    `train_vision`, the LM in stage 1 only with `train_lm`. A from-scratch LM gets its word
    vocabulary in stage 1 from every text the student will see (captions and, when `data` is a
    synthesize folder, its records); stage 2 starts from the stage-1 folder (`init_from`) and keeps
    that tokenizer.
    """

    def __init__(self, cfg: TrainConfig, selector: TextSelector, resume_model: Optional[Path]) -> None:
        self.cfg = cfg
        self.data, records = llava_sources(cfg)
        self.stage = cfg.llava_stage
        self.selector = stage2_selector(cfg, records) if self.stage == 2 else selector
        self.student = self._build(cfg, selector, records, resume_model)
        trainable = self.student.freeze(self.stage, cfg.train_vision, cfg.train_lm)
        log.info("llava stage %d: training %s; %d image tokens, vocabulary %d", self.stage,
                 " + ".join(trainable), self.student.num_image_tokens, len(self.student.tokenizer))
        self.module = self.student
        self.images_to_tensor = functools.partial(images_to_tensor, image_cfg=self.student.image_cfg)
        self.model: torch.nn.Module = self.student

    def _build(self, cfg: TrainConfig, selector: TextSelector, records: Optional[Path],
               resume_model: Optional[Path]) -> LlavaStudent:
        if resume_model is not None or cfg.init_from:  # that folder's own tokenizer
            source = resume_model or Path(cfg.init_from)
            log.info("llava student from %s", source)
            return LlavaStudent.from_pretrained(source)
        if cfg.llava.lm not in registered_lms():
            return LlavaStudent.build(cfg.llava)
        captions = training_captions(self.data, selector, cfg.tokenizer_captions)
        texts = vocabulary_texts(captions, records, cfg.instruction_kinds)
        log.info("llava LM %s from scratch: vocabulary from %d texts (%d captions)",
                 cfg.llava.lm, len(texts), len(captions))
        return LlavaStudent.build(cfg.llava, texts)

    def attach(self, prepared: torch.nn.Module) -> None:
        """Forward passes go through the prepared (e.g. DDP) module."""
        self.model = prepared

    def loss(self, batch: dict, step: int) -> torch.Tensor:
        """Mean next-token cross-entropy over the answer tokens of the batch's conversations."""
        if self.stage == 1:
            turns = [stage1_turns(c, k) for c, k in zip(batch["texts"], batch["keys"])]
        else:
            turns = batch["texts"]
        encoded = [self.student.encode_conversation(t) for t in turns]
        keep = [i for i, e in enumerate(encoded) if e is not None]
        if any(IMAGE_TOKEN_ID not in encoded[i]["input_ids"] for i in keep):
            # Every sample here has an image: a conversation without its placeholder would train
            # the LM to answer blind (the student would never learn to look).
            raise ValueError(f"a conversation of the batch has no {IMAGE_PLACEHOLDER} placeholder, so its "
                             "image would be ignored; LLaVA records carry one in the first human turn")
        if not keep:
            raise ValueError(f"no sample of the batch fits llava.max_length={self.student.spec.max_length} "
                             "with an answer token left; raise llava.max_length")
        tensors = {k: v.to(self.student.device) for k, v in self.student.collate([encoded[i] for i in keep]).items()}
        pixels = batch["pixel_values"][keep].to(self.student.device)  # (B, 3, S, S)
        return self.model(pixels, **tensors).loss

    def export(self, folder: Path) -> None:
        """A `save_pretrained` folder that `LlavaStudent.from_pretrained` reads."""
        self.student.save_pretrained(folder)


class TransformImages:
    """PIL images -> `(B, 3, H, W)` with a per-image transform (open_clip's training transform);
    its to-tensor + normalize tail runs once per batch (`mmw2s.train.data.BatchedToTensor`)."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        from mmw2s.train.data import BatchedToTensor

        self.transform = transform
        self._batched = BatchedToTensor(transform)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self._batched(images)


def caption_ids(texts: list[str]) -> torch.Tensor:
    """`(B,)` int64 ids, equal exactly when the captions are (a 63-bit BLAKE2b of the text).

    A hash rather than an index into the batch, so ids from different ranks agree when the batch
    is gathered across ranks; a 63-bit collision between two distinct captions is negligible.
    """
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big") >> 1
                         for t in texts], dtype=torch.int64)


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` of every rank along dim 0; gradients flow back to each rank's part."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)  # (world * B, ...)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` of every rank along dim 0 (no gradient: integer ids)."""
    parts = [torch.empty_like(x) for _ in range(_world())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)  # (world * B,)


def training_captions(data: str, selector: TextSelector, limit: int) -> list[str]:
    """Up to `limit` training captions, in shard order, for a from-scratch tokenizer.

    With `source=mix` every candidate caption counts (the web one and the synthetic ones), so the
    vocabulary covers whatever the draws pick later. Every rank reads the same captions.
    """
    cfg = selector.cfg
    limits = ReadLimits(decode_images=False, require_caption=cfg.source == "txt")
    rng = random.Random(0)
    captions: list[str] = []
    for sample in iter_samples(data, limits):
        if cfg.source == "mix":
            web, synthetic = mix_pools(public_meta(sample["json"]), sample["caption"], cfg.mix_kept_only)
            captions.extend(text for text, _ in web + synthetic)
        elif (chosen := selector(sample, rng)) is not None:
            captions.append(chosen[0])
        if len(captions) >= limit:
            break
    if not captions:
        raise ValueError(f"no training captions found in {data} for text.source={cfg.source}")
    return captions[:limit]
