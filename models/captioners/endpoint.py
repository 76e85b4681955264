"""``EndpointCaptioner``: an OpenAI-compatible chat-completions server as the captioner.

vLLM, SGLang, TGI, LMDeploy, Ollama and hosted models answer ``POST /v1/chat/completions``; each
image goes there as a ``data:`` URL of its ORIGINAL bytes (never re-encoded), with the prompt.

Why the captions are the same at any concurrency, batch size, worker or rank count and resume
point: every image is its own request, carrying its own seed (derived from the run seed, the shard
and the key by the bootstrap), and answers are put back in input order. Decoding maps onto the
request: greedy is ``temperature=0``; nucleus is ``temperature=1, top_p``; ``num_captions`` is ``n``;
``max_new_tokens`` is ``max_tokens`` (and ``min_new_tokens`` is vLLM / SGLang's ``min_tokens``). Beam
search is not part of the API and is refused.

Answers are cached on disk by (model, prompt, image SHA-256, decoding, seed): a killed and resumed
run requests nothing already answered. A refusal (the message's ``refusal`` field, or
``finish_reason=content_filter``), an answer that is no completion, and a request the server rejects
(a 4xx other than auth) become `InvalidCaption`s, counted by reason; retries that run out raise
`EndpointError`, and the shard stays incomplete for a rerun.

The captioner only captions: it has no ``loss`` or ``log_likelihood`` (``require_trainable``
refuses it for training and likelihood scoring).
"""
from __future__ import annotations

import base64
import hashlib
import mimetypes
from pathlib import Path
from typing import Any, Sequence

from .protocol import EncodedImage
from ..endpoint_session import EndpointSession
from ..specs import EndpointSpec

__all__ = ["EndpointCaptioner", "data_url", "decoding_params"]

MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
        "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}

def data_url(image: EncodedImage) -> str:
    """``data:MIME;base64,...`` of the image's original bytes."""
    mime = MIME.get(image.ext.lower()) or mimetypes.types_map.get("." + image.ext.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(image.data).decode('ascii')}"


def decoding_params(method: str, num_captions: int, top_p: float, max_new_tokens: int, min_new_tokens: int,
                    send_min_tokens: bool, repetition_penalty: float = 1.0) -> dict[str, Any]:
    """The request fields of one decoding setting (``seed`` is per request, added by the caller)."""
    if num_captions < 1:
        raise ValueError(f"num_captions must be >= 1, got {num_captions}")
    if method == "greedy":
        if num_captions != 1:
            raise ValueError("greedy decoding gives one caption per image; use nucleus for more")
        params: dict[str, Any] = {"temperature": 0.0, "n": 1}
    elif method == "nucleus":
        params = {"temperature": 1.0, "top_p": top_p, "n": num_captions}
    else:
        raise ValueError(f"decoding.method={method!r}: an OpenAI-compatible endpoint samples (nucleus) or decodes "
                         "greedily; beam search is not part of the chat-completions API")
    params["max_tokens"] = max_new_tokens
    extra = {}
    if send_min_tokens and min_new_tokens > 0:
        extra["min_tokens"] = min_new_tokens
    if repetition_penalty != 1.0:
        extra["repetition_penalty"] = repetition_penalty
    if extra:
        params["extra_body"] = extra
    return params


class EndpointCaptioner:
    """Captions through an OpenAI-compatible endpoint (see the module docstring)."""

    kind = "endpoint"
    inputs = "encoded"  # caption() reads `EncodedImage`s (original bytes), not tensors

    def __init__(self, spec: EndpointSpec, model: str, prompt: str, cache_dir: str | Path | None = None,
                 log_dir: str | Path | None = None, device: str | None = None) -> None:
        if not (prompt or "").strip():
            raise ValueError("an endpoint captioner needs captioner.prompt (or prompt_file), e.g. "
                             "'Describe this image in one sentence.'")
        self.prompt = prompt.strip()
        self.session = EndpointSession(spec, model, cache_dir, log_dir, device)

    @property
    def server(self):
        """The managed server (None: external)."""
        return self.session.server

    @property
    def restarts(self) -> int:
        return self.session.restarts

    def input_builder(self) -> None:
        """Nothing runs in data-loader workers: the server decodes the original bytes itself."""
        return None

    def caption(self, inputs: Sequence[EncodedImage], *, num_captions: int = 1, method: str = "nucleus",
                top_p: float = 0.9, num_beams: int = 3, max_new_tokens: int = 20, min_new_tokens: int = 0,
                repetition_penalty: float = 1.0, seed: int | None = None) -> list[list[str]]:
        """``num_captions`` captions per image, in input order, ``concurrency`` requests in flight.

        Each image's own ``seed`` decides its sampling; the batch ``seed`` is not used, so that a
        caption never depends on the other images of its batch.
        """
        params = decoding_params(method, num_captions, top_p, max_new_tokens, min_new_tokens,
                                 self.session.send_min_tokens, repetition_penalty)
        return self.session.map(lambda image: self._caption_one(image, params), inputs)

    def _caption_one(self, image: EncodedImage, params: dict) -> list[str]:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                                 {"type": "text", "text": self.prompt}]}]
        key = {"prompt": self.prompt, "image_sha256": hashlib.sha256(image.data).hexdigest()}
        return self.session.ask(messages, key, image.seed, params, image.shard, f"{image.shard}/{image.key}")

    def shard_usage(self, shard: str) -> dict:
        """Requests, retries, cache hits and tokens spent on input shard ``shard`` (then forgotten)."""
        return self.session.shard_usage(shard)

    def provenance(self) -> dict:
        """Model id as the server reports it, server kind and version, prompt; never a URL or key."""
        return {"kind": "endpoint", **self.session.facts, "prompt": self.prompt}

    def save(self, path: str | Path) -> None:
        """Nothing to save: the weights live with the server (``captioner.name`` names them)."""
        return None

    def close(self) -> None:
        """Stop the threads, the connections and a managed server."""
        self.session.close()
