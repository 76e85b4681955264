"""An on-disk cache of model responses, keyed by what determines them: (messages, model, parameters).

One JSON file per key under ``FOLDER/ab/abcdef...json``, written through a unique temporary file
and a rename, so concurrent writers and a kill mid-write never leave half an entry. A rerun (or a
redone shard) finds every response it already paid for and sends no request.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_key(messages: list[dict], model: str, params: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the request's content."""
    payload = json.dumps({"messages": messages, "model": model, "params": params},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    """Get and put response entries (plain JSON dicts) by `cache_key`."""

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
