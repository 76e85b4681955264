"""Tiny random image-text-to-text models of real transformers families, saved with their processors.

The tests and the `caption_vlm` bench row need a prompted VLM that loads by path exactly as a hub
checkpoint does (``AutoProcessor`` + ``AutoModelForImageTextToText``), with no download. Each
builder makes one family from its own transformers config classes, at a few thousand parameters,
with a word-level tokenizer over ``words`` plus the family's special tokens and chat template.

Embeddings are untied (``tie_word_embeddings=False``): random models with tied input/output
embeddings favour the tokens they were just fed and generate only newlines or an immediate end
token, which would test nothing.

    build_tiny_vlm("qwen2_vl", "/tmp/qwen", words=["a", "red", "circle"])  # -> the folder
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
# Words of the chat templates below, so a prompt tokenizes into known ids.
TEMPLATE_WORDS = ["user", "assistant", ":", "describe", "this", "image", "in", "one", "sentence", ".", "caption",
                  "en"]
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512)

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_TEMPLATE = (  # llava-1.5-hf's: "USER: <image>\nPROMPT ASSISTANT:"
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
SMOLVLM_TEMPLATE = (  # SmolVLM-Instruct's: "<|im_start|>User:<image>PROMPT<end_of_utterance>\nAssistant:"
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


def word_tokenizer(words: Iterable[str], special: list[str], chat_template: str | None = None,
                   **named: str) -> PreTrainedTokenizerFast:
    """A lowercase word-level fast tokenizer: ``special`` tokens first, then every distinct word.

    ``named`` maps HF attribute names to tokens of ``special`` (``image_token="<image>"``).
    """
    vocab: dict[str, int] = {}
    for token in [PAD, UNK, BOS, EOS, *special, *TEMPLATE_WORDS, *sorted(set(words))]:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # "red ." -> "red."
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS,
                                  eos_token=EOS, extra_special_tokens={k: v for k, v in named.items()})
    out.add_special_tokens({"additional_special_tokens": [t for t in special if t not in named.values()]})
    if chat_template:
        out.chat_template = chat_template
    return out


def _ids(tok: PreTrainedTokenizerFast, **tokens: str) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in tokens.items()}


def _text(tok: PreTrainedTokenizerFast, **extra: Any) -> dict[str, Any]:
    """Text-model config fields tied to the tokenizer (vocabulary, special ids)."""
    ids = _ids(tok, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return {**TINY_TEXT, "vocab_size": len(tok), **ids, "tie_word_embeddings": False, **extra}


def _blip2(words: list[str], image_size: int) -> tuple[Any, Any]:
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor)

    tok = word_tokenizer(words, [])
    queries = 4
    # The processor adds BLIP-2's "<image>" query placeholder to the tokenizer itself.
    processor = Blip2Processor(BlipImageProcessor(size={"height": image_size, "width": image_size}), tok,
                               num_query_tokens=queries)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            encoder_hidden_size=32, vocab_size=len(tok)),
        text_config=dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=32, vocab_size=len(tok), max_position_embeddings=512,
                         **_ids(tok, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD), tie_word_embeddings=False),
        num_query_tokens=queries, image_token_index=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    return Blip2ForConditionalGeneration(config), processor


def _llava(words: list[str], image_size: int) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = word_tokenizer(words, ["<image>"], LLAVA_TEMPLATE, image_token="<image>")
    patch = 8
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=32),
        text_config=dict(model_type="llama", **_text(tok)), image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False)
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size)
    processor = LlavaProcessor(images, tok, patch_size=patch, vision_feature_select_strategy="default",
                               chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
    return LlavaForConditionalGeneration(config), processor


def _qwen2_vl(words: list[str], image_size: int) -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    special = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = word_tokenizer(words, special, QWEN_TEMPLATE, image_token="<|image_pad|>", video_token="<|video_pad|>")
    ids = _ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")
    text = _text(tok, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                 rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0})
    config = Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4,
                                                                patch_size=14, spatial_merge_size=2,
                                                                temporal_patch_size=2), **ids)
    pixels = dict(min_pixels=28 * 28, max_pixels=4 * 28 * 28)  # 1 to 4 merged image tokens per image
    processor = Qwen2VLProcessor(Qwen2VLImageProcessor(**pixels), tok, Qwen2VLVideoProcessor(),
                                 chat_template=QWEN_TEMPLATE)
    return Qwen2VLForConditionalGeneration(config), processor


def _smolvlm(words: list[str], image_size: int) -> tuple[Any, Any]:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>", *grid]
    tok = word_tokenizer(words, special, SMOLVLM_TEMPLATE, image_token="<image>",
                         fake_image_token="<fake_token_around_image>", global_image_token="<global-img>",
                         end_of_utterance_token="<end_of_utterance>")
    patch, scale = 8, 2
    seq = (image_size // patch) ** 2 // scale**2
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=image_size, patch_size=patch),
        text_config=dict(model_type="llama", **_text(tok, eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"))),
        scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    images = SmolVLMImageProcessor(size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size})
    processor = SmolVLMProcessor(images, tok, SmolVLMVideoProcessor(), image_seq_len=seq, chat_template=SMOLVLM_TEMPLATE)
    return SmolVLMForConditionalGeneration(config), processor


def _paligemma(words: list[str], image_size: int) -> tuple[Any, Any]:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    tok = word_tokenizer(words, [])
    patch = 8
    images = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    images.image_seq_length = (image_size // patch) ** 2
    # The processor adds "<image>" and PaliGemma's 1024 <locNNNN> + 128 <segNNN> tokens itself.
    processor = PaliGemmaProcessor(images, tok)
    text = _text(tok, head_dim=8)
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=image_size, patch_size=patch, projection_dim=32),
        text_config=dict(model_type="gemma", **text), image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=32, hidden_size=32, vocab_size=len(tok), tie_word_embeddings=False)
    return PaliGemmaForConditionalGeneration(config), processor


def _florence2(words: list[str], image_size: int) -> tuple[Any, Any]:
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tok = word_tokenizer(words, ["<image>"], image_token="<image>")
    tok.image_token_id = tok.convert_tokens_to_ids("<image>")
    ids = _ids(tok, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    text = dict(model_type="bart", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=len(tok),
                max_position_embeddings=512, decoder_start_token_id=ids["eos_token_id"], forced_eos_token_id=None,
                tie_word_embeddings=False, **ids)
    vision = dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                  patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4],
                  window_size=2, projection_dim=32, drop_path_rate=0.0)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tok.image_token_id,
                             tie_word_embeddings=False)
    images = CLIPImageProcessor(size={"height": image_size, "width": image_size}, do_center_crop=False)
    images.image_seq_length = (image_size // 8) ** 2 + 1  # stride-8 grid + the pooled token
    return Florence2ForConditionalGeneration(config), Florence2Processor(images, tok)


def _qwen2_vl_vllm(words: list[str], image_size: int) -> tuple[Any, Any]:
    """A Qwen2-VL that vLLM's CPU attention accepts: text head_dim 32 (it rejects 16 and less), so
    a wider text model (hidden 128, 4 heads) with M-RoPE sections summing to head_dim / 2."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    special = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = word_tokenizer(words, special, QWEN_TEMPLATE, image_token="<|image_pad|>", video_token="<|video_pad|>")
    ids = _ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")
    text = _text(tok, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), hidden_size=128, intermediate_size=256,
                 max_position_embeddings=1024,
                 rope_parameters={"rope_type": "default", "mrope_section": [8, 4, 4], "rope_theta": 10000.0})
    config = Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=64, hidden_size=128, num_heads=2,
                                                                patch_size=14, spatial_merge_size=2,
                                                                temporal_patch_size=2), **ids)
    processor = Qwen2VLProcessor(Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=4 * 28 * 28), tok,
                                 Qwen2VLVideoProcessor(), chat_template=QWEN_TEMPLATE)
    return Qwen2VLForConditionalGeneration(config), processor


FAMILIES: dict[str, Callable[[list[str], int], tuple[Any, Any]]] = {
    "blip-2": _blip2, "llava": _llava, "qwen2_vl": _qwen2_vl, "smolvlm": _smolvlm, "paligemma": _paligemma,
    "florence2": _florence2, "qwen2_vl_vllm": _qwen2_vl_vllm}


def build_tiny_vlm(family: str, folder: str | Path, words: Iterable[str] = (), image_size: int = 32,
                   seed: int = 0) -> Path:
    """Build a random tiny VLM of ``family`` (a key of ``FAMILIES``) and ``save_pretrained`` it with its
    processor into ``folder``; returns the folder."""
    if family not in FAMILIES:
        raise KeyError(f"no tiny VLM builder for {family!r}; have {sorted(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's RNG
        torch.manual_seed(seed)
        model, processor = FAMILIES[family](sorted(set(words)), image_size)
    gen = model.generation_config
    text = model.config.get_text_config()
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = text.eos_token_id, text.pad_token_id, text.bos_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
