"""``EndpointRewriter``: LaCLIP-style rewriting of web captions through an OpenAI-compatible endpoint.

LaCLIP (Fan et al., 2023) rewrites each alt-text with an LLM prompted in context by k example pairs
(original => rewritten). Here the pairs come from a YAML file (``configs/prompts/rewrite/laclip.yaml``:
an ``instruction`` and a pool of ``exemplars``); each request draws its k pairs from the pool with the
sample's own seed and is sent as chat turns (the instruction as the system message, each pair as a
user / assistant exchange, then the caption), text only, through the same ``EndpointSession`` the
endpoint captioner uses: the same retries, cache and counters, and the same server when the
captioner is an endpoint too. Rewrites are tagged ``source="rewrite"`` (`Caption`), so the bootstrap
scores and keeps them like synthetic captions and records where they came from.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from .captioners.protocol import Caption
from .endpoint_session import EndpointSession


@dataclass(frozen=True)
class RewritePrompt:
    """The instruction and the pool of (caption, rewrite) exemplar pairs of a rewrite prompt file."""

    instruction: str
    exemplars: tuple[tuple[str, str], ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.instruction, self.exemplars]).encode()).hexdigest()[:16]


def load_rewrite_prompt(path: str | Path) -> RewritePrompt:
    """Read a rewrite prompt file; a missing field or a malformed pair is an error naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exn:
        raise ValueError(f"rewrite prompt {path}: cannot read it ({exn})") from exn
    if not isinstance(data, dict) or not isinstance(data.get("instruction"), str) \
            or not isinstance(data.get("exemplars"), list):
        raise ValueError(f"rewrite prompt {path}: needs an 'instruction' (text) and 'exemplars' (a list of "
                         "{caption, rewrite} pairs)")
    pairs = []
    for i, pair in enumerate(data["exemplars"]):
        if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in ("caption", "rewrite")):
            raise ValueError(f"rewrite prompt {path}: exemplar {i} needs text 'caption' and 'rewrite' fields")
        pairs.append((pair["caption"].strip(), pair["rewrite"].strip()))
    return RewritePrompt(data["instruction"].strip(), tuple(pairs))


@dataclass(frozen=True)
class RewriteRequest:
    """One web caption to rewrite, with its sample's seed and shard (for the counters)."""

    key: str
    shard: str
    text: str
    seed: int


class EndpointRewriter:
    """Rewrites captions in context (see the module docstring)."""

    def __init__(self, session: EndpointSession, prompt: RewritePrompt, exemplars: int, num_rewrites: int,
                 temperature: float, top_p: float, max_new_tokens: int) -> None:
        if not 0 <= exemplars <= len(prompt.exemplars):
            raise ValueError(f"rewrite.exemplars={exemplars}, but the prompt file holds {len(prompt.exemplars)} pairs")
        self.session, self.prompt, self.k = session, prompt, exemplars
        self.params = {"temperature": temperature, "n": num_rewrites, "max_tokens": max_new_tokens,
                       **({"top_p": top_p} if temperature > 0 else {})}

    def messages(self, text: str, seed: int) -> list[dict]:
        """The chat turns of one request: instruction, k exemplar exchanges drawn by ``seed``, the caption."""
        pairs = random.Random(seed).sample(self.prompt.exemplars, self.k)
        turns = [{"role": "system", "content": self.prompt.instruction}]
        for caption, rewrite in pairs:
            turns += [{"role": "user", "content": caption}, {"role": "assistant", "content": rewrite}]
        return turns + [{"role": "user", "content": text}]

    def rewrite(self, requests: Sequence[RewriteRequest]) -> list[list[str]]:
        """``num_rewrites`` rewrites per caption, in input order, each a `Caption` of source ``rewrite``."""
        return self.session.map(self._rewrite_one, requests)

    def _rewrite_one(self, r: RewriteRequest) -> list[str]:
        messages = self.messages(r.text, r.seed)
        answers = self.session.ask(messages, {"messages": messages}, r.seed, self.params, r.shard,
                                   f"{r.shard}/{r.key} (rewrite)")
        return [Caption(a, invalid=getattr(a, "invalid", None), source="rewrite") for a in answers]

    def provenance(self) -> dict:
        """Model, server, prompt file hash, exemplars per request and decoding of the rewrites."""
        return {**self.session.facts, "prompt_sha256": self.prompt.sha256, "exemplars": self.k,
                "decoding": {k: v for k, v in self.params.items()}}
