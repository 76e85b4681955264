"""Shard specs -> shard URLs: brace patterns, globs, folders, `pipe:` commands and fsspec URLs."""
from __future__ import annotations

import glob
import os
from typing import Iterable

import braceexpand

from mmw2s.data_pipelines.tar_reader import TAR_SUFFIXES


def expand_urls(spec: str | os.PathLike | Iterable[str]) -> list[str]:
    """Expand a shard spec into URLs, in order.

    Accepts a list, or a string of `::`-separated parts, each a brace pattern
    (`shards/{00000..00009}.tar`), a glob (`shards/*.tar`), a folder (all its `*.tar`, `*.tar.gz`,
    `*.tgz`, `*.tar.bz2`, `*.tar.xz`, ... in name order: what `tarfile` reads), a `pipe:`
    command or a remote/fsspec URL (`s3://...`, `gs://...`). Raises `FileNotFoundError` when a
    local part matches nothing.
    """
    parts = [str(spec)] if isinstance(spec, (str, os.PathLike)) else [str(s) for s in spec]
    urls: list[str] = []
    for part in (p for item in parts for p in item.split("::") if p):
        for url in braceexpand.braceexpand(part):
            urls.extend(_expand_one(url))
    return urls


def _expand_one(url: str) -> list[str]:
    if url.startswith("pipe:") or "://" in url:
        return [url]
    if os.path.isdir(url):
        found = sorted(os.path.join(url, name) for name in os.listdir(url)
                       if name.endswith(TAR_SUFFIXES) and os.path.isfile(os.path.join(url, name)))
        if not found:
            raise FileNotFoundError(f"no .tar (or .tar.gz, .tgz, ...) shards in folder {url}")
        return found
    if glob.has_magic(url):
        found = sorted(glob.glob(url))
        if not found:
            raise FileNotFoundError(f"no shards match {url}")
        return found
    if not os.path.exists(url):
        raise FileNotFoundError(f"shard not found: {url}")
    return [url]
