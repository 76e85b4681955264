"""Typed specs that name a model: what a config file says, nothing more.

Plain types only, a ``help`` on every field, so that the typed YAML loader in ``mmw2s`` can turn a
config block into one of these and report unknown keys. Builders live next to the models
(``build_captioner``, ``build_dual_encoder``, ``build_itm_filter``, ``build_filter``).

Real checkpoints are named the same way as our small from-scratch models, e.g.::

    CaptionerSpec(name="Salesforce/blip-image-captioning-base")
    CaptionerSpec(name="nlpconnect/vit-gpt2-image-captioning")
    DualEncoderSpec(arch="ViT-B-32", pretrained="laion2b_s34b_b79k")
    ItmSpec(name="Salesforce/blip-itm-base-coco", mode="itm")
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CaptionerSpec:
    """Which image captioner to build (BLIP or a VisionEncoderDecoder)."""

    name: str = field(
        default="blip-tiny",
        metadata={
            "help": "a registered small config (blip-tiny, blip-small, ved-tiny, ved-small; built from "
            "scratch with a word tokenizer), or a Hugging Face hub id / local folder loaded with "
            "from_pretrained (also a folder written by Captioner.save)"
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "input resolution for a registered config; None keeps the config's own"},
    )
    max_length: int = field(
        default=32, metadata={"help": "longest caption in tokens, bos/eos included"}
    )
    max_vocab: int | None = field(
        default=None,
        metadata={"help": "cap on the word vocabulary built from training captions (None: every word)"},
    )
    min_word_freq: int = field(
        default=1, metadata={"help": "words seen fewer times in the training captions map to [UNK]"}
    )
    seed: int = field(default=0, metadata={"help": "seed for the from-scratch weight init"})


@dataclass
class DualEncoderSpec:
    """Which CLIP-style dual encoder to build (any open_clip architecture)."""

    arch: str = field(
        default="mmw2s-conv-small",
        metadata={
            "help": "open_clip architecture name (ours: mmw2s-conv-tiny/small/base, mmw2s-vit-tiny; or any "
            "open_clip built-in such as ViT-B-32), a path to a model-config JSON in open_clip's "
            "model_configs format, or 'local-dir:FOLDER' written by DualEncoder.save"
        },
    )
    pretrained: str | None = field(
        default=None,
        metadata={"help": "open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a checkpoint file path"},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "override of the architecture's input resolution"}
    )
    context_length: int | None = field(
        default=None, metadata={"help": "override of the text tower's context length in tokens"}
    )
    seed: int = field(default=0, metadata={"help": "seed for the from-scratch weight init"})


@dataclass
class ItmSpec:
    """Which BLIP image-text matching filter to build, and which of its heads scores."""

    name: str = field(
        default="blip-tiny",
        metadata={
            "help": "a registered BLIP config (blip-tiny, blip-small; random weights, word tokenizer) or a "
            "hub id / local folder of a BlipForImageTextRetrieval checkpoint, e.g. Salesforce/blip-itm-base-coco"
        },
    )
    mode: str = field(
        default="itm",
        metadata={"help": "'itm': match probability in [0, 1]; 'itc': contrastive cosine in [-1, 1]"},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "input resolution for a registered config"}
    )
    max_length: int = field(default=32, metadata={"help": "longest text in tokens"})
    seed: int = field(default=0, metadata={"help": "seed for the from-scratch weight init"})
