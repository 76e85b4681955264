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
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from .captioner_protocol import EncodedImage, InvalidCaption
from .endpoint_server import COMMANDS, ManagedServer, gpu_env
from .openai_client import ChatClient, ChatResult, ResponseCache, RetryPolicy, Usage, cache_key
from .specs import EndpointSpec

MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
        "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}
FATAL_STATUS = (401, 403, 404)  # a wrong key, URL or model: every request would fail alike


class EndpointError(RuntimeError):
    """Requests that cannot succeed: retries exhausted, a dead external server, a wrong key or model."""


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
    trainable = False

    def __init__(self, spec: EndpointSpec, model: str, prompt: str, cache_dir: str | Path | None = None,
                 log_dir: str | Path | None = None, device: str | None = None) -> None:
        if not (prompt or "").strip():
            raise ValueError("an endpoint captioner needs captioner.prompt (or prompt_file), e.g. "
                             "'Describe this image in one sentence.'")
        self.spec, self.prompt = spec, prompt.strip()
        self.server: ManagedServer | None = None
        base_url = spec.base_url
        if spec.server != "external":
            command = (list(spec.server_command) or COMMANDS[spec.server]) + list(spec.server_args)
            # one server per rank / Ray actor, on that rank's GPU
            self.server = ManagedServer(command, model, spec.server_python, spec.health_timeout_s, log_dir,
                                        env=gpu_env(device))
            base_url = self.server.start()
        elif not base_url:
            raise ValueError("captioner.endpoint.server=external needs captioner.endpoint.base_url")
        policy = RetryPolicy(spec.timeout_s, spec.max_attempts, spec.backoff_base_s, spec.backoff_max_s, spec.jitter)
        self.client = ChatClient(base_url, spec.api_key_env, policy, before_retry=self._revive)
        self.cache = ResponseCache(cache_dir) if spec.cache and cache_dir else None
        self.send_min_tokens = spec.min_tokens if spec.min_tokens is not None else spec.server != "external"
        self.model_name, self.served = model, self._server_facts(model)
        self.pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="captioner-endpoint")
        self.restarts = 0
        self._lock = threading.Lock()
        self._usage: dict[str, Usage] = defaultdict(Usage)  # per input shard

    # ---- the server ----------------------------------------------------------------------------
    def _server_facts(self, model: str) -> dict:
        """The model id as ``/v1/models`` reports it, and the server's version (``/version``)."""
        ids = self.client.model_ids()
        if ids and model not in ids:
            raise EndpointError(f"the server at captioner.endpoint.base_url serves {ids}, not captioner.name={model!r}")
        version = self.client.root_json("/version")
        return {"model_id": model if model in ids else None,
                "version": version.get("version") if isinstance(version, dict) else None}

    def _revive(self, exn: Exception) -> None:
        """Before retrying a failed connection: restart a managed server that died."""
        if self.server is None or self.server.alive():
            return
        with self._lock:
            if self.server.alive():
                return
            if self.restarts >= self.spec.max_restarts:
                raise EndpointError(f"the managed server died {self.restarts + 1} times "
                                    f"(captioner.endpoint.max_restarts={self.spec.max_restarts}); the end of its "
                                    f"log:\n{self.server.log_tail()}") from exn
            self.restarts += 1
            self.client.client.base_url = self.server.restart()

    # ---- the interface ---------------------------------------------------------------------------
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
                                 self.send_min_tokens, repetition_penalty)
        return list(self.pool.map(lambda image: self._caption_one(image, params), inputs))

    def _caption_one(self, image: EncodedImage, params: dict) -> list[str]:
        key = self._cache_key(image, params)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self._tally(image.shard, Usage(cache_hits=1))
            return [InvalidCaption(c["text"], c["invalid"]) if c.get("invalid") else c["text"] for c in hit["captions"]]
        result = self.client.complete(self.model_name, self._messages(image), seed=image.seed, **params)
        # per request, its own tries and tokens (the client's totals mix concurrent requests)
        self._tally(image.shard, Usage(requests=result.attempts, retries=max(0, result.attempts - 1),
                                       prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens))
        captions = self._captions(image, result, params["n"])
        if self.cache is not None and result.status == "ok":
            self.cache.put(key, {"captions": [{"text": str(c), "invalid": getattr(c, "invalid", None)}
                                              for c in captions],
                                 "model": self.model_name, "prompt_tokens": result.prompt_tokens,
                                 "completion_tokens": result.completion_tokens})
        return captions

    def _captions(self, image: EncodedImage, result: ChatResult, n: int) -> list[str]:
        """Captions of one answer; refusals and failures become `InvalidCaption`s or an error."""
        if result.status == "failed":
            raise EndpointError(f"{image.shard}/{image.key}: no answer after {result.attempts} tries: {result.error}")
        if result.status == "rejected":
            if any(f"Error code: {code}" in (result.error or "") for code in FATAL_STATUS):
                raise EndpointError(f"the endpoint refuses every request: {result.error}")
            return [InvalidCaption("", "rejected")] * n
        if result.status == "malformed":
            return [InvalidCaption("", "malformed")] * n
        out: list[str] = []
        for choice in result.choices[:n]:
            if choice.refusal or choice.finish_reason == "content_filter":
                out.append(InvalidCaption((choice.refusal or choice.text or "").strip(), "refused"))
            else:
                out.append(choice.text.strip())
        return out + [InvalidCaption("", "malformed")] * (n - len(out))  # fewer choices than asked

    def _messages(self, image: EncodedImage) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                             {"type": "text", "text": self.prompt}]}]

    def _cache_key(self, image: EncodedImage, params: dict) -> str:
        content = {"prompt": self.prompt, "image_sha256": hashlib.sha256(image.data).hexdigest()}
        return cache_key(content, self.model_name, {**params, "seed": image.seed})

    # ---- counters ----------------------------------------------------------------------------------
    def _tally(self, shard: str, usage: Usage) -> None:
        with self._lock:
            self._usage[shard].add(usage)

    def shard_usage(self, shard: str) -> dict:
        """Requests, retries, cache hits and tokens spent on input shard ``shard`` (then forgotten)."""
        with self._lock:
            usage = self._usage.pop(shard, Usage())
        return {**usage.to_json(), "server_restarts": self.restarts}

    def provenance(self) -> dict:
        """Model id as the server reports it, server kind and version, prompt; never a URL or key."""
        return {"kind": "endpoint", "server": self.spec.server, "server_version": self.served["version"],
                "model_id": self.served["model_id"], "prompt": self.prompt}

    def save(self, path: str | Path) -> None:
        """Nothing to save: the weights live with the server (``captioner.name`` names them)."""
        return None

    def close(self) -> None:
        """Stop the threads, the connections and a managed server."""
        self.pool.shutdown(wait=True)
        self.client.close()
        if self.server is not None:
            self.server.stop()
