"""``build_captioner``: registered small captioners from scratch, anything else by ``from_pretrained``.

Registered configs are data: ``models/captioner_configs/<name>.json`` holds the family and the HF
config overrides (``blip``: ``vision_config`` / ``text_config`` of a ``BlipConfig``;
``vision-encoder-decoder``: an ``encoder`` and a ``decoder`` config, each with its ``model_type``).
Vocabulary size, special-token ids and text positions come from the word tokenizer built on the
training captions, so a config never goes stale against its vocabulary. Any other checkpoint gets
its class from its config's ``model_type``, in one place: ``captioner_class``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ViTImageProcessor,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from .blip_ved import BLIP, MODEL_CLASSES, VED, BlipVedCaptioner
from ..specs import CaptionerSpec
from ..tokenizers import BOS, PAD, SEP, build_word_tokenizer
from .prompted_vlm import PromptedCaptioner
from .protocol import Captioner, CaptionerLoadError, read_prompt

CONFIG_DIR = Path(__file__).parent.parent / "captioner_configs"


def list_captioners() -> list[str]:
    """Names of the registered from-scratch captioner configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def captioner_config(name: str) -> dict[str, Any]:
    """The registered config ``name`` as a dict (a fresh copy)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no registered captioner {name!r}; registered: {list_captioners()}")
    return json.loads(path.read_text())


def build_captioner(spec: CaptionerSpec, train_captions: Iterable[str] | None = None,
                    auto_dtype: str = "float32", run_dir: str | Path | None = None, device: Any = None) -> Captioner:
    """Build the captioner a spec names.

    A registered name (``list_captioners()``) is built from scratch with a word tokenizer trained
    on ``train_captions`` (required then). Any other name is a hub id or local folder loaded with
    ``from_pretrained`` (``load_captioner``), e.g. ``CaptionerSpec(name="Salesforce/blip-image-captioning-base")``,
    a folder written by ``BlipVedCaptioner.save``, or a prompted VLM. ``auto_dtype`` is what
    ``spec.dtype="auto"`` means for a VLM here (the caller knows the device). ``spec.kind="endpoint"``
    is an OpenAI-compatible server (``EndpointCaptioner``); it keeps its answer cache and server
    logs under ``run_dir`` when the spec names no cache folder, and starts a managed server on the
    GPU of ``device``.
    """
    if spec.kind == "endpoint":
        return build_endpoint_captioner(spec, run_dir, device)
    if spec.name not in list_captioners():
        return load_captioner(spec, auto_dtype)
    if train_captions is None:
        raise ValueError(f"captioner {spec.name!r} is built from scratch: pass train_captions for its vocabulary")
    cfg = captioner_config(spec.name)
    image_size = spec.image_size or cfg["image_size"]
    tokenizer = build_word_tokenizer(
        train_captions, max_vocab=spec.max_vocab, min_frequency=spec.min_word_freq, model_max_length=spec.max_length
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's RNG
        torch.manual_seed(spec.seed)
        if cfg["family"] == BLIP:
            model, processor = _blip_from_scratch(cfg, tokenizer, image_size, spec.max_length)
        elif cfg["family"] == VED:
            model, processor = _ved_from_scratch(cfg, tokenizer, image_size, spec.max_length)
        else:
            raise ValueError(f"{spec.name}: unknown family {cfg['family']!r}")
    return BlipVedCaptioner(model, tokenizer, processor, max_length=spec.max_length)


def build_endpoint_captioner(spec: CaptionerSpec, run_dir: str | Path | None = None, device: Any = None) -> Captioner:
    """An ``EndpointCaptioner`` for ``spec`` (starting its server when the spec says vllm / sglang)."""
    from .endpoint import EndpointCaptioner

    cache_dir = spec.endpoint.cache_dir or (Path(run_dir) / "cache" / "captions" if run_dir else None)
    log_dir = Path(run_dir) / "logs" if run_dir else None
    try:
        return EndpointCaptioner(spec.endpoint, spec.name, read_prompt(spec.prompt, spec.prompt_file) or "",
                                 cache_dir=cache_dir, log_dir=log_dir, device=str(device) if device else None)
    except (ValueError, RuntimeError) as exn:  # bad settings, a server that never came up, a wrong model
        raise CaptionerLoadError(str(exn)) from exn


def captioner_class(model_type: str | None) -> type[BlipVedCaptioner] | type[PromptedCaptioner] | None:
    """The captioner class of a checkpoint's ``model_type`` (None: no captioner).

    BLIP-1 and VisionEncoderDecoder are ours and trainable; any other model of transformers'
    image-text-to-text Auto mapping is a prompted VLM. BLIP and VisionEncoderDecoder are in that
    mapping too: they are looked up first.
    """
    if model_type in MODEL_CLASSES:
        return BlipVedCaptioner
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return PromptedCaptioner
    return None


def load_captioner(spec: CaptionerSpec, auto_dtype: str = "float32") -> Captioner:
    """A saved or hub captioner, its class read from its config (``captioner_class``).

    Raises ``CaptionerLoadError`` for a checkpoint that is no captioner, or a prompt that cannot be
    read, before loading weights.
    """
    try:
        config = AutoConfig.from_pretrained(spec.name, **({"revision": spec.revision} if spec.revision else {}))
    except (OSError, ValueError) as exn:
        raise CaptionerLoadError(f"captioner {spec.name!r}: no transformers checkpoint there ({exn})") from exn
    family = captioner_class(config.model_type)
    if family is None:
        raise CaptionerLoadError(
            f"captioner {spec.name!r} is a {config.model_type!r} checkpoint ({', '.join(config.architectures or [])}), "
            "not an image-text model: expected BLIP, VisionEncoderDecoder or a model of "
            "AutoModelForImageTextToText (BLIP-2, LLaVA, Qwen2-VL, SmolVLM, PaliGemma, ...)")
    if family is BlipVedCaptioner:
        return BlipVedCaptioner.load(spec.name, max_length=spec.max_length)
    dtype = auto_dtype if spec.dtype == "auto" else spec.dtype
    try:
        prompt = read_prompt(spec.prompt, spec.prompt_file)
    except ValueError as exn:  # the prompt and the prompt file disagree
        raise CaptionerLoadError(str(exn)) from exn
    return PromptedCaptioner.load(spec.name, prompt=prompt, chat_template=spec.chat_template, dtype=dtype,
                                  device_map=spec.device_map, revision=spec.revision)


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Vocabulary size and the special ids every from-scratch config needs."""
    ids = tokenizer.convert_tokens_to_ids([BOS, SEP, PAD])
    return dict(vocab_size=len(tokenizer), bos=ids[0], eos=ids[1], pad=ids[2])


def _blip_from_scratch(
    cfg: dict[str, Any], tokenizer: PreTrainedTokenizerFast, image_size: int, max_length: int
) -> tuple[PreTrainedModel, BlipImageProcessor]:
    """A ``BlipForConditionalGeneration`` with random weights sized by ``cfg``."""
    t = _token_ids(tokenizer)
    vision = dict(cfg["vision_config"], image_size=image_size)
    text = dict(
        cfg["text_config"],
        vocab_size=t["vocab_size"],
        max_position_embeddings=max_length,
        # BLIP's decoder starts from bos ([DEC] in BLIP) and generate() stops at sep_token_id.
        bos_token_id=t["bos"],
        sep_token_id=t["eos"],
        eos_token_id=t["eos"],
        pad_token_id=t["pad"],
        encoder_hidden_size=vision["hidden_size"],  # cross-attention reads the ViT states
    )
    extra = {k: v for k, v in cfg.items() if k in ("projection_dim", "image_text_hidden_size")}
    config = BlipConfig(vision_config=vision, text_config=text, **extra)
    processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipForConditionalGeneration(config), processor


def _ved_from_scratch(
    cfg: dict[str, Any], tokenizer: PreTrainedTokenizerFast, image_size: int, max_length: int
) -> tuple[PreTrainedModel, ViTImageProcessor]:
    """A ``VisionEncoderDecoderModel`` (vision encoder + causal decoder with cross-attention)."""
    t = _token_ids(tokenizer)
    enc_args = dict(cfg["encoder"], image_size=image_size)
    _check_swin_size(enc_args)
    encoder = AutoConfig.for_model(enc_args.pop("model_type"), **enc_args)
    if not hasattr(encoder, "hidden_size"):
        # hierarchical encoders (SegFormer) name their widths per stage; VisionEncoderDecoder reads
        # `hidden_size` for the cross-attention width: the width of the last stage, the one it sees
        encoder.hidden_size = encoder.hidden_sizes[-1]
    dec_args = dict(cfg["decoder"])
    decoder = AutoConfig.for_model(
        dec_args.pop("model_type"),
        vocab_size=t["vocab_size"],
        **_positions_arg(dec_args, max_length),
        bos_token_id=t["bos"],
        eos_token_id=t["eos"],
        pad_token_id=t["pad"],
        is_decoder=True,
        add_cross_attention=True,
        **dec_args,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = t["bos"], t["pad"], t["eos"]
    model = VisionEncoderDecoderModel(config=config)
    gen = model.generation_config
    gen.decoder_start_token_id, gen.bos_token_id = t["bos"], t["bos"]
    gen.eos_token_id, gen.pad_token_id = t["eos"], t["pad"]
    processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    return model, processor


def _check_swin_size(enc_args: dict[str, Any]) -> None:
    """Swin's windows must tile every stage's grid; say so instead of failing inside attention."""
    if enc_args.get("model_type") != "swin":
        return
    unit = enc_args.get("patch_size", 4) * enc_args.get("window_size", 7) * 2 ** (len(enc_args.get("depths", [])) - 1)
    if enc_args["image_size"] % unit:
        raise ValueError(f"a Swin encoder with this config needs image_size a multiple of {unit}, got {enc_args['image_size']}")


def _positions_arg(dec_args: dict[str, Any], max_length: int) -> dict[str, int]:
    """The decoder's position-table size under its own name (GPT-2: ``n_positions``)."""
    if any(k in dec_args for k in ("n_positions", "max_position_embeddings")):
        return {}
    return {"n_positions": max_length} if "n_embd" in dec_args else {"max_position_embeddings": max_length}
