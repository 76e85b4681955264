"""`LlavaSpec`: what a config says to name a LLaVA-style student (plain types, no torch import).

Kept apart from ``models/llava.py`` so that config schemas can embed it and ``mmw2s --help`` stays
fast. Real checkpoints are named the same way as the small from-scratch parts::

    LlavaSpec(vision_source="open_clip", vision_tower="ViT-L-14-336", vision_pretrained="openai",
              lm="lmsys/vicuna-7b-v1.5")
    LlavaSpec(vision_source="timm", vision_tower="vit_base_patch16_clip_224.openai",
              vision_pretrained="hub", lm="/models/Llama-3.2-1B-Instruct")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

DEFAULT_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed and polite answers about the image.")


@dataclass
class LlavaSpec:
    """Vision tower + projector + causal LM of a LLaVA-style student."""

    vision_source: Literal["timm", "open_clip"] = field(default="timm", metadata={
        "help": "timm: a timm model name; open_clip: an open_clip architecture (its visual tower)"})
    vision_tower: str = field(default="mmw2s_convnet_small", metadata={
        "help": "timm name (ours: mmw2s_convnet_tiny/small/base) or open_clip architecture "
                "(ours: mmw2s-conv-*, mmw2s-vit-tiny; or e.g. ViT-L-14-336)"})
    vision_pretrained: Optional[str] = field(default=None, metadata={
        "help": "timm: 'hub' (timm's pretrained weights) or a weights file; open_clip: a pretrained "
                "tag or checkpoint path (e.g. a CLIP student's final model); null: random init"})
    vision_layer: Optional[int] = field(default=-2, metadata={
        "help": "which block's feature map becomes image tokens (LLaVA: the penultimate, -2); "
                "null: the tower's final features"})
    image_size: Optional[int] = field(default=None, metadata={
        "help": "input resolution; null: the tower's own"})
    projector: Literal["mlp2x_gelu", "linear"] = field(default="mlp2x_gelu", metadata={
        "help": "vision-to-LM projector: LLaVA-1.5's Linear-GELU-Linear, or LLaVA-1's Linear"})
    image_positions: bool = field(default=False, metadata={
        "help": "add a learned embedding per image token to the projected features (LLaVA has none: "
                "a CLIP ViT's features carry their position; a conv tower's do not)"})
    lm: str = field(default="llama-tiny", metadata={
        "help": "causal LM: a registered from-scratch config (llama-tiny, llama-small; word-level "
                "tokenizer built from the training texts), a hub id or a local folder"})
    max_vocab: Optional[int] = field(default=None, metadata={
        "help": "from-scratch LM: cap on the word vocabulary (None: every word)"})
    min_word_freq: int = field(default=1, metadata={
        "help": "from-scratch LM: words seen fewer times map to [UNK]"})
    max_length: int = field(default=256, metadata={
        "help": "longest training sequence in tokens, image tokens included"})
    system_prompt: str = field(default=DEFAULT_SYSTEM, metadata={
        "help": "system text before the first USER turn (LLaVA v1 conversation format)"})
    seed: int = field(default=0, metadata={"help": "seed of the from-scratch weight init"})
