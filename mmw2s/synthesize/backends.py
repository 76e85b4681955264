"""Synthesis backends: a template writer (no model), an OpenAI-compatible API, a local causal LM.

Every backend turns `Request`s into `Response`s whose ``text`` is the JSON that
`data_pipelines.instructions.parse_turns` reads, so counting malformed output is one code path.
The model backends go through the on-disk `ResponseCache`: a response already paid for is never
requested again. The API backend talks through ``models.openai_client.ChatClient``, the client the
bootstrap's endpoint captioner uses too: 408/409/429, 5xx, timeouts and connection errors are
retried with exponential backoff and jitter (honouring ``Retry-After``); any other 4xx is a
rejected request.
"""
from __future__ import annotations

import logging
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from mmw2s.data_pipelines.instructions import turns_to_json
from mmw2s.models.openai_client import ChatClient, RetryPolicy

from mmw2s.models.openai_client import ResponseCache, cache_key
from mmw2s.synthesize.captions import ParsedCaption
from mmw2s.synthesize.config import ApiConfig, LocalConfig
from mmw2s.synthesize.prompts import LlmPrompt
from mmw2s.synthesize.templates import template_turns

log = logging.getLogger(__name__)
Status = Literal["ok", "empty", "rejected", "failed", "malformed"]


@dataclass
class Request:
    """What to write for one (image, kind): chat messages for LLMs, parsed facts for templates."""

    id: str
    kind: str
    messages: list[dict] | None = None
    parsed: ParsedCaption | None = None
    boxes: list[dict] | None = None
    seed: int = 0


@dataclass
class Response:
    """A backend's answer to one `Request`.

    ``status``: ok (``text`` holds the response), empty (nothing to ask about), rejected (a
    non-retryable error), failed (retries exhausted: the shard stays incomplete for a rerun),
    malformed (the transport returned something that is not a chat completion).
    """

    status: Status
    text: str | None = None
    cached: bool = False
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


def request_seed(seed: int, request_id: str) -> int:
    """A per-request seed: the same record gets the same draw whatever else the run contains."""
    return (seed * 1_000_003 + zlib.crc32(request_id.encode())) % (2**31)


# --------------------------------------------------------------------------------------------
# Template


class TemplateBackend:
    """Questions and answers filled into the wording file from the caption's facts."""

    name = "template"
    model = "template"

    def __init__(self, wording: dict, prompt_id: str) -> None:
        self.wording = wording
        self.prompt_id = prompt_id

    def prompt_ids(self, kinds: list[str]) -> dict[str, str]:
        """The prompt id of each kind (one wording file for all)."""
        return {k: self.prompt_id for k in kinds}

    def respond(self, requests: list[Request]) -> list[Response]:
        """Deterministic turns per request, seeded by the request id."""
        out = []
        for r in requests:
            rng = np.random.default_rng(r.seed)
            turns = template_turns(r.kind, r.parsed or ParsedCaption(), rng, self.wording, r.boxes)
            out.append(Response("ok", text=turns_to_json(turns)) if turns else
                       Response("empty", error="the caption states nothing to ask about"))
        return out

    def fingerprint(self) -> dict:
        """What decides this backend's output (for the run fingerprint)."""
        return {"backend": self.name, "prompt_id": self.prompt_id}

    def close(self) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------------------------
# Shared by model backends


class _CachedBackend:
    """Cache lookup around a backend's `_call(messages, seed) -> Response`."""

    name = "?"
    model = "?"
    params: dict[str, Any] = {}

    def __init__(self, prompts: dict[str, LlmPrompt], cache: ResponseCache | None) -> None:
        self.prompts = prompts
        self._prompt_ids = {kind: p.prompt_id for kind, p in prompts.items()}
        self.cache = cache

    def prompt_ids(self, kinds: list[str]) -> dict[str, str]:
        """The prompt id of each kind (a hash of its prompt file)."""
        return {k: self._prompt_ids[k] for k in kinds}

    def _call(self, messages: list[dict], seed: int) -> Response:
        raise NotImplementedError

    def _key_params(self, seed: int) -> dict:
        return dict(self.params)

    def respond_one(self, request: Request) -> Response:
        """The cached response to ``request``, or a fresh one (cached when it succeeded)."""
        key = cache_key(request.messages or [], self.model, self._key_params(request.seed))
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return Response("ok", text=hit["text"], cached=True, prompt_tokens=hit.get("prompt_tokens", 0),
                            completion_tokens=hit.get("completion_tokens", 0))
        response = self._call(request.messages or [], request.seed)
        if response.status == "ok" and self.cache is not None:
            self.cache.put(key, {"text": response.text, "model": self.model,
                                 "prompt_tokens": response.prompt_tokens,
                                 "completion_tokens": response.completion_tokens})
        return response

    def fingerprint(self) -> dict:
        """What decides this backend's output (for the run fingerprint)."""
        return {"backend": self.name, "model": self.model, "params": self.params,
                "prompt_ids": self._prompt_ids}


# --------------------------------------------------------------------------------------------
# OpenAI-compatible API


class ApiBackend(_CachedBackend):
    """Chat completions through the project's one OpenAI-compatible client (``models.openai_client``),
    the same the bootstrap's endpoint captioner uses: any compatible server."""

    name = "api"

    def __init__(self, cfg: ApiConfig, prompts: dict[str, LlmPrompt], cache: ResponseCache | None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(prompts, cache)
        self.cfg, self.model = cfg, cfg.model
        self.policy = RetryPolicy(cfg.timeout_s, cfg.max_attempts, cfg.backoff_base_s, cfg.backoff_max_s, cfg.jitter)
        self.chat = ChatClient(cfg.base_url, cfg.api_key_env, self.policy, sleep=sleep)
        self.params = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                       **({"seed": cfg.seed} if cfg.seed is not None else {}),
                       **({"response_format": {"type": "json_object"}} if cfg.json_mode else {})}
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="synth-api")

    def respond(self, requests: list[Request]) -> list[Response]:
        """Responses in request order; at most ``concurrency`` requests in flight."""
        return list(self.pool.map(self.respond_one, requests))

    def delay(self, attempt: int, exn: Exception | None = None) -> float:
        """Seconds to wait after failed try ``attempt`` (1-based): doubling, capped, jittered."""
        return self.policy.delay(attempt, exn)

    def _call(self, messages: list[dict], seed: int) -> Response:
        result = self.chat.complete(self.model, messages, **self.params)
        if result.status != "ok":
            return Response(result.status, attempts=result.attempts, error=result.error)
        return Response("ok", text=result.choices[0].text, attempts=result.attempts,
                        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)

    def close(self) -> None:
        """Stop the worker threads and the HTTP client."""
        self.pool.shutdown(wait=True)
        self.chat.close()


# --------------------------------------------------------------------------------------------
# Local causal LM


class LocalBackend(_CachedBackend):
    """A transformers ``AutoModelForCausalLM`` writing responses one request at a time.

    One request at a time, seeded per request, so a response never depends on what else was in
    the batch (and the cache key can include the seed).
    """

    name = "local"

    def __init__(self, cfg: LocalConfig, prompts: dict[str, LlmPrompt], cache: ResponseCache | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(prompts, cache)
        self.cfg, self.model, self._torch = cfg, cfg.model, torch
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        self.lm = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
        self.params = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p}

    def _key_params(self, seed: int) -> dict:
        return {**self.params, "seed": seed} if self.cfg.temperature > 0 else dict(self.params)

    def respond(self, requests: list[Request]) -> list[Response]:
        """Responses in request order."""
        return [self.respond_one(r) for r in requests]

    def encode(self, messages: list[dict]) -> Any:
        """Prompt ids ``(1, T)``: the tokenizer's chat template, or plain ``ROLE: text`` lines."""
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                                     return_tensors="pt")["input_ids"]
        else:
            text = "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages) + "\n\nASSISTANT:"
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        # Keep the end of an over-long prompt: the image's own context comes last.
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        if limit:
            ids = ids[:, -max(1, limit - self.cfg.max_new_tokens):]
        return ids.to(self.lm.device)

    def _call(self, messages: list[dict], seed: int) -> Response:
        torch, cfg = self._torch, self.cfg
        ids = self.encode(messages)
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} \
            if cfg.temperature > 0 else {"do_sample": False}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.max_new_tokens,
                                   pad_token_id=pad, **sampling)
        new = out[0, ids.shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Response("ok", text=text, attempts=1, prompt_tokens=int(ids.shape[1]),
                        completion_tokens=int(new.shape[0]))

    def close(self) -> None:
        """Drop the model."""
        self.lm = None


def usage_cost(prompt_tokens: int, completion_tokens: int, cfg: ApiConfig) -> float:
    """Estimated cost of token usage at the configured prices per 1000 tokens."""
    return prompt_tokens / 1000 * cfg.price_prompt_per_1k + completion_tokens / 1000 * cfg.price_completion_per_1k

