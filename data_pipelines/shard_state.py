"""What makes an output shard complete, and reading a run's state files.

A shard is complete when its `NAME_stats.json` exists (written last, after the tar is renamed into
place), parses, and records the tar on disk: its size always, its SHA-256 with `verify="full"`
(`tar_problem`). Anything else is redone. State files (stats, thresholds, trainer state) are read
by `read_state_json`, which names the file when it is corrupt. Nothing here touches webdataset.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from mmw2s.data_pipelines.sample_decode import clip_text
from mmw2s.data_pipelines.tar_reader import shard_name

log = logging.getLogger(__name__)


def stats_path(shard_path: str | os.PathLike) -> Path:
    """`DIR/00003.tar` -> `DIR/00003_stats.json` (img2dataset's naming)."""
    p = Path(shard_path)
    return p.with_name(shard_name(str(p)) + "_stats.json")


class StateFileError(ValueError):
    """A state file of a run (a shard's stats, thresholds) that cannot be used; names the file."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def read_state_json(path: str | os.PathLike) -> dict:
    """The JSON object in state file `path`; `StateFileError` naming the file when it is not one.

    A cut-off write, zeroed or random bytes, a list, or a bare NaN / Infinity (which strict JSON
    writers never produce) all raise; a missing file raises `FileNotFoundError` as usual.
    """
    data = Path(path).read_bytes()
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exn:  # JSONDecodeError is a ValueError
        raise StateFileError(path, f"corrupt ({len(data)} bytes that are not JSON: {clip_text(str(exn), 120)})") from None
    if not isinstance(value, dict):
        raise StateFileError(path, f"holds a JSON {type(value).__name__}, not the object it should")
    return value


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tar_problem(shard_path: str | os.PathLike, stats: dict, verify: str = "size") -> str | None:
    """Why the tar on disk is not the one `stats` describes, or None when it matches.

    `verify="size"` compares the size (a stat call: cheap enough for every run), `"full"` also
    re-hashes the file. Stats without a `tar` block (written before it existed) cannot vouch for
    their tar, so the shard is redone.
    """
    tar = stats.get("tar")
    if not isinstance(tar, dict) or not isinstance(tar.get("bytes"), int) or not isinstance(tar.get("sha256"), str):
        return "its stats record no size and checksum of the tar"
    size = os.path.getsize(shard_path)
    if size != tar["bytes"]:
        return f"the tar has {size} bytes where its stats recorded {tar['bytes']} (cut short or replaced)"
    if verify == "full" and file_sha256(shard_path) != tar["sha256"]:
        return "the tar's SHA-256 differs from the one its stats recorded"
    return None


def verified_stats(shard_path: str | os.PathLike, verify: str = "size", fingerprint: str | None = None) -> dict | None:
    """The stats of a complete shard whose tar checks out, else None (with a warning saying why).

    With `fingerprint`, a shard made by other settings raises `OtherSettings` before its tar is
    looked at: a rerun must refuse a folder of another config, not redo parts of it.
    """
    if not (Path(shard_path).exists() and stats_path(shard_path).exists()):
        return None
    try:
        stats = read_state_json(stats_path(shard_path))
    except StateFileError as exn:
        log.warning("%s; redoing shard %s", exn, shard_path)
        return None
    if fingerprint is not None and not isinstance(stats.get("fingerprint"), str):
        log.warning("%s records no fingerprint of the settings that made it; redoing shard %s",
                    stats_path(shard_path), shard_path)
        return None
    if fingerprint is not None and stats.get("fingerprint") != fingerprint:
        raise OtherSettings(f"{shard_path} was made with other settings "
                            f"(fingerprint {stats.get('fingerprint')}, now {fingerprint})")
    problem = tar_problem(shard_path, stats, verify)
    if problem:
        log.warning("redoing shard %s: %s", shard_path, problem)
        return None
    return stats


def is_complete(shard_path: str | os.PathLike, verify: str = "size") -> bool:
    """A shard is complete when the tar and its stats exist (stats are written last) and the tar
    is the one the stats describe (`tar_problem`)."""
    return verified_stats(shard_path, verify) is not None


class OtherSettings(ValueError):
    """A complete shard was made by other settings than the run that found it."""


def complete_with(shard_path: str | os.PathLike, fingerprint: str, verify: str = "size") -> bool:
    """Whether the shard is complete *and* its stats record `fingerprint` (the settings that made it).

    False for a missing, partial, corrupt or mismatched shard (redo it); raises `OtherSettings`
    for a complete shard made by other settings, so a rerun never mixes the outputs of two configs.
    """
    return verified_stats(shard_path, verify, fingerprint) is not None
