"""Files mmw2s ships: the default configs and prompts.

In a source checkout they are the repo's `configs/` folder; installed from a wheel they are package
data of `mmw2s.configs` (pyproject maps the one to the other). Either way `config_dir()` finds
them, so `mmw2s STAGE` works from any directory, and a default such as
`configs/prompts/llava` still names the shipped file when the current directory has none.
"""
from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path


@cache
def config_dir() -> Path:
    """The folder of the shipped configs (the installed package data, or the checkout's configs/)."""
    spec = importlib.util.find_spec("mmw2s.configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "configs"  # a checkout run without installing


def shipped(path: str) -> str:
    """`path` as given when it exists (a user's file wins); else, for a relative `configs/...` path,
    the shipped file of that name (when there is one)."""
    p = Path(path)
    if p.exists() or p.is_absolute() or p.parts[:1] != ("configs",):
        return path
    candidate = config_dir().joinpath(*p.parts[1:])
    return str(candidate) if candidate.exists() else path
