"""``EndpointSession``: one OpenAI-compatible server as the endpoint captioner and rewriter use it.

It holds the server (a managed one it started, or an external URL), the shared ``ChatClient``, the
answer cache, the thread pool that keeps ``concurrency`` requests in flight, and per-shard counters.
``ask`` sends one request (or answers it from the cache) and turns the answer into texts:
refusals (a ``refusal`` field, ``finish_reason=content_filter``), bodies that are no completion and
requests the server rejects become `InvalidCaption`s with their reason; retries that run out raise
`EndpointError`. A managed server that died is restarted before the request is retried.
"""
from __future__ import annotations

import subprocess
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

from .captioners.protocol import InvalidCaption
from .endpoint_server import COMMANDS, ManagedServer, gpu_env
from .openai_client import ChatClient, ChatResult, ResponseCache, RetryPolicy, Usage, cache_key
from .specs import EndpointSpec

FATAL_STATUS = (401, 403, 404)  # a wrong key, URL or model: every request would fail alike


class EndpointError(RuntimeError):
    """Requests that cannot succeed: retries exhausted, a dead external server, a wrong key or model."""


class EndpointSession:
    """A server, a client, a cache, a pool and counters (see the module docstring)."""

    def __init__(self, spec: EndpointSpec, model: str, cache_dir: str | Path | None = None,
                 log_dir: str | Path | None = None, device: str | None = None) -> None:
        self.spec, self.model = spec, model
        self.server: ManagedServer | None = None
        self.restarts, self._lock = 0, threading.Lock()
        self._usage: dict[str, Usage] = defaultdict(Usage)  # per input shard
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
        self.pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="endpoint")
        self.facts = self._server_facts(model)

    # ---- the server ----------------------------------------------------------------------------
    def _server_facts(self, model: str) -> dict:
        """The model id as ``/v1/models`` reports it, and the server's version (``/version``)."""
        ids = self.client.model_ids()
        if ids and model not in ids:
            raise EndpointError(f"the server at captioner.endpoint.base_url serves {ids}, not captioner.name={model!r}")
        version = self.client.root_json("/version")
        return {"server": self.spec.server, "server_version": version.get("version") if isinstance(version, dict)
                else None, "model_id": model if model in ids else None}

    def _revive(self, exn: Exception) -> None:
        """Before retrying a failed connection: restart a managed server that died."""
        if self.server is None:
            return
        if self.server.alive():
            # A refused connection from a process that still runs: it may be dying (on a busy
            # machine its exit takes a while). Give it a moment rather than spending every retry.
            try:
                self.server.proc.wait(timeout=min(self.spec.timeout_s, 10))
            except (subprocess.TimeoutExpired, AttributeError):
                return  # still running: a transient failure, retried as usual
        if self.server.alive():
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

    # ---- requests ------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """``fn`` over ``items`` with ``concurrency`` in flight; results in input order."""
        return list(self.pool.map(fn, items))

    def ask(self, messages: list[dict], key_content: dict, seed: int, params: dict, shard: str, where: str) -> list[str]:
        """``params["n"]`` answers to ``messages``, from the cache when ``key_content`` (what decides the
        answer besides model, decoding and seed, e.g. prompt + image SHA-256) was asked before."""
        key = cache_key(key_content, self.model, {**params, "seed": seed})
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self._tally(shard, Usage(cache_hits=1))
            return [InvalidCaption(c["text"], c["invalid"]) if c.get("invalid") else c["text"] for c in hit["answers"]]
        result = self.client.complete(self.model, messages, seed=seed, **params)
        # per request, its own tries and tokens (the client's totals mix concurrent requests)
        self._tally(shard, Usage(requests=result.attempts, retries=max(0, result.attempts - 1),
                                 prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens))
        answers = self._answers(result, params["n"], where)
        if self.cache is not None and result.status == "ok":
            self.cache.put(key, {"answers": [{"text": str(a), "invalid": getattr(a, "invalid", None)} for a in answers],
                                 "model": self.model, "prompt_tokens": result.prompt_tokens,
                                 "completion_tokens": result.completion_tokens})
        return answers

    def _answers(self, result: ChatResult, n: int, where: str) -> list[str]:
        """Texts of one answer; refusals and failures become `InvalidCaption`s or an error."""
        if result.status == "failed":
            raise EndpointError(f"{where}: no answer after {result.attempts} tries: {result.error}")
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

    # ---- counters and lifetime -------------------------------------------------------------------
    def _tally(self, shard: str, usage: Usage) -> None:
        with self._lock:
            self._usage[shard].add(usage)

    def shard_usage(self, shard: str) -> dict:
        """Requests, retries, cache hits and tokens spent on input shard ``shard`` (then forgotten)."""
        with self._lock:
            usage = self._usage.pop(shard, Usage())
        return {**usage.to_json(), "server_restarts": self.restarts}

    def close(self) -> None:
        """Stop the threads (requests not yet sent are dropped), the connections and a managed server."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        if self.server is not None:
            self.server.stop()
