"""The on-disk response cache of the synthesize stage: ``models.openai_client``'s, shared with the
bootstrap's endpoint captioner (one JSON file per key, written atomically; a rerun sends nothing it
already paid for)."""
from __future__ import annotations

from mmw2s.models.openai_client import ResponseCache, cache_key

__all__ = ["ResponseCache", "cache_key"]
