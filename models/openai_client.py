"""One OpenAI-compatible chat-completions client for every stage that talks to a server.

The bootstrap's endpoint captioner and the synthesize stage's API backend both go through
``ChatClient``: the official ``openai`` client with its own retries switched off, so that the policy
is ours and counted: 408/409/429, 5xx, timeouts and connection errors are retried with exponential
backoff and jitter, honouring ``Retry-After``; any other 4xx is a rejected request; a 200 whose body
is no chat completion is malformed. ``ResponseCache`` keeps answers on disk by what decides them,
so a rerun or a redone shard requests nothing it already paid for.

The API key is read from the environment variable the caller names, handed to the ``openai``
client and never kept anywhere else: not in ``describe()``, a cache entry or an error message.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

log = logging.getLogger(__name__)
Status = Literal["ok", "rejected", "failed", "malformed"]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait for an answer and how often to ask again."""

    timeout_s: float = 60.0
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    jitter: float = 0.25

    def delay(self, attempt: int, exn: Exception | None = None) -> float:
        """Seconds to wait after failed try ``attempt`` (1-based): doubling, capped, jittered,
        at least the server's ``Retry-After`` (seconds) when it sent one."""
        wait = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        wait *= 1.0 + self.jitter * random.random()
        retry_after = getattr(getattr(exn, "response", None), "headers", {}).get("retry-after")
        try:
            wait = max(wait, float(retry_after)) if retry_after is not None else wait
        except ValueError:  # an HTTP date; the computed backoff stands
            pass
        return min(wait, self.backoff_max_s)


@dataclass
class Choice:
    """One returned completion: its text, why it stopped, and a refusal if the model refused."""

    text: str
    finish_reason: str | None = None
    refusal: str | None = None


@dataclass
class ChatResult:
    """The outcome of one request, after retries."""

    status: Status
    choices: list[Choice] = field(default_factory=list)
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Usage:
    """Counters of what a client did: requests sent (retries included), retries, tokens."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "Usage") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class ChatClient:
    """Chat completions against one base URL with our retry policy; thread-safe.

    ``before_retry(exn)`` runs before each retry of a connection failure or timeout: a managed
    server's owner restarts a dead server there. It may raise to stop retrying.
    """

    def __init__(self, base_url: str | None, api_key_env: str, policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep,
                 before_retry: Callable[[Exception], None] | None = None) -> None:
        import openai

        self._openai, self.policy, self._sleep, self.before_retry = openai, policy, sleep, before_retry
        self.base_url, self.api_key_env = base_url, api_key_env
        # A local server needs some key; the client refuses to start without one.
        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                                    max_retries=0, timeout=policy.timeout_s)
        self.usage, self._lock = Usage(), threading.Lock()

    def describe(self) -> dict:
        """What may be recorded about this client (never the key, only the variable's name)."""
        return {"base_url": self.base_url, "api_key_env": self.api_key_env}

    def _count(self, **delta: int) -> None:
        with self._lock:
            for name, value in delta.items():
                setattr(self.usage, name, getattr(self.usage, name) + value)

    def retryable(self, exn: Exception) -> bool:
        """Whether a failed request may succeed when sent again."""
        o = self._openai
        if isinstance(exn, (o.APITimeoutError, o.APIConnectionError)):
            return True
        return isinstance(exn, o.APIStatusError) and (exn.status_code in (408, 409, 429) or exn.status_code >= 500)

    def complete(self, model: str, messages: list[dict], **params: Any) -> ChatResult:
        """One chat completion with retries; ``params`` go to ``chat.completions.create``."""
        o, error = self._openai, None
        for attempt in range(1, self.policy.max_attempts + 1):
            self._count(requests=1, retries=int(attempt > 1))
            try:
                completion = self.client.chat.completions.create(model=model, messages=messages, **params)
            except o.APIResponseValidationError as exn:
                return ChatResult("malformed", attempts=attempt, error=f"invalid completion: {exn}")
            except o.OpenAIError as exn:
                error = f"{type(exn).__name__}: {exn}"
                if not self.retryable(exn):
                    return ChatResult("rejected", attempts=attempt, error=error)
                if attempt < self.policy.max_attempts:
                    log.debug("attempt %d failed (%s); retrying", attempt, error)
                    self._sleep(self.policy.delay(attempt, exn))
                    if self.before_retry is not None and isinstance(exn, (o.APITimeoutError, o.APIConnectionError)):
                        self.before_retry(exn)
                continue
            except ValueError as exn:  # a 200 whose body is not JSON at all
                return ChatResult("malformed", attempts=attempt, error=f"{type(exn).__name__}: {exn}")
            result = completion_result(completion, attempt)
            self._count(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
            return result
        return ChatResult("failed", attempts=self.policy.max_attempts, error=error)

    def model_ids(self) -> list[str]:
        """The model ids ``/v1/models`` lists (empty when the server does not say)."""
        try:
            return [m.id for m in self.client.models.list()]
        except Exception as exn:  # noqa: BLE001 - metadata only; some endpoints do not list models
            log.debug("GET /models failed: %s", exn)
            return []

    def root_json(self, path: str) -> Any:
        """GET ``path`` at the server's root (``/version``: vLLM, SGLang), as JSON; None if it fails."""
        root = str(self.client.base_url).rstrip("/").removesuffix("/v1")
        status, body = http_get(root + path, timeout=min(self.policy.timeout_s, 10.0))
        return body if status == 200 else None

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


def completion_result(completion: Any, attempts: int) -> ChatResult:
    """A `ChatResult` from an ``openai`` ChatCompletion (no choices: malformed)."""
    choices = getattr(completion, "choices", None)
    if not choices or any(c.message is None for c in choices):
        return ChatResult("malformed", attempts=attempts, error="completion without choices")
    usage = getattr(completion, "usage", None)
    ordered = sorted(choices, key=lambda c: c.index or 0)
    return ChatResult("ok", attempts=attempts,
                      choices=[Choice(c.message.content or "", c.finish_reason, getattr(c.message, "refusal", None))
                               for c in ordered],
                      prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                      completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))


def http_get(url: str, timeout: float) -> tuple[int | None, Any]:
    """``(status, JSON body or None)`` of a plain GET; status None when nothing answered.

    The standard library's, for the few unauthenticated GETs (health, version) that are not part
    of the OpenAI API the ``openai`` client covers.
    """
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own server's URL
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exn:
        return exn.code, None
    except (OSError, ValueError) as exn:  # refused, reset, timed out
        log.debug("GET %s failed: %s", url, exn)
        return None, None
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, None


# --------------------------------------------------------------------------------------------
# Response cache


def cache_key(messages: Any, model: str, params: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of what decides an answer."""
    payload = json.dumps({"messages": messages, "model": model, "params": params},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """Get and put response entries (plain JSON dicts) by `cache_key`.

    One JSON file per key under ``FOLDER/ab/abcdef...json``, written through a unique temporary
    file and a rename, so concurrent writers and a kill mid-write never leave half an entry.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives (two-character fan-out keeps folders small)."""
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The entry of ``key``, or None (also for an unreadable entry, which is then refetched)."""
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, entry: dict) -> None:
        """Store ``entry`` atomically."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=key[:8], suffix=".partial")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json"))
