"""Prompt files and the messages built from them.

LLM backends read ``configs/prompts/llava/KIND.yaml`` (``system`` + ``fewshot`` examples of
``context`` -> ``response``); the messages follow LLaVA's recipe: the system prompt, each example
as a user/assistant exchange, then the image's own context (its captions, and boxes for the
detail and reasoning kinds when the shard has them). The template backend reads its wording from
``configs/prompts/template.yaml``. Each prompt's id is its name plus a hash of its file, so every
record says which version of a prompt made it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
# LLaVA gave GPT captions for conversations, and captions plus boxes for the other two kinds.
KINDS_WITH_BOXES = ("detail", "reasoning")


def resolve(path: str) -> Path:
    """``path`` as given when it exists, else relative to the repository (for the shipped prompts)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return REPO_ROOT / p


def _file_id(name: str, path: Path) -> str:
    return f"{name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"


def load_wording(path: str) -> tuple[dict, str]:
    """The template backend's wording file and its prompt id."""
    p = resolve(path)
    if not p.is_file():
        raise FileNotFoundError(f"template wording file not found: {path}")
    return yaml.safe_load(p.read_text()), _file_id(p.stem, p)


@dataclass
class LlmPrompt:
    """One kind's system prompt and few-shot examples."""

    kind: str
    system: str
    fewshot: list[dict]
    prompt_id: str

    def messages(self, context: str) -> list[dict[str, str]]:
        """Chat messages for one image: system, the examples, then ``context``."""
        out = [{"role": "system", "content": self.system.strip()}]
        for example in self.fewshot:
            out.append({"role": "user", "content": example["context"].strip()})
            out.append({"role": "assistant", "content": json.dumps(example["response"], ensure_ascii=False)})
        out.append({"role": "user", "content": context.strip()})
        return out


def load_llm_prompts(folder: str, kinds: list[str]) -> dict[str, LlmPrompt]:
    """``KIND.yaml`` of each kind in ``folder``; a missing file or key is an error up front."""
    prompts = {}
    for kind in kinds:
        p = resolve(folder) / f"{kind}.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"prompt file for kind {kind!r} not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data.get("system"), str):
            raise ValueError(f"{p}: needs a 'system' prompt (string)")
        fewshot = data.get("fewshot") or []
        if not all(isinstance(e, dict) and "context" in e and "response" in e for e in fewshot):
            raise ValueError(f"{p}: each fewshot example needs 'context' and 'response'")
        prompts[kind] = LlmPrompt(kind, data["system"], fewshot, _file_id(kind, p))
    return prompts


def build_context(kind: str, captions: list[str], boxes: list[dict] | None) -> str:
    """The user message about one image: its captions, and its boxes for detail/reasoning."""
    lines = ["Captions:", *captions]
    if boxes and kind in KINDS_WITH_BOXES:
        lines.append("Objects:")
        lines += [f"{b['label']}: [{', '.join(f'{v:.2f}' for v in b['box'])}]" for b in boxes]
    return "\n".join(lines)
