"""Config schemas read as rows of keys: what `--help`, the did-you-mean of a config error and the
reference pages (`mmw2s.reference`) list.

A `dict[str, Any]` field whose metadata has `keys_of` (a command name, or `module:Class`) is a section
that holds that schema's keys: the sections of `mmw2s run`. `keys_under` names sub-sections that
each hold them (`llava_student.stage1`). A schema is expanded at its first section only; later
sections of the same schema refer to it, so `mmw2s run --help` lists the train keys once, not seven
times.

A leaf module: `mmw2s.config` (errors) and `mmw2s.reference` (pages) both read schemas through it.
"""
from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from mmw2s.commands import COMMANDS

MISSING = dataclasses.MISSING
SECTION = "keys_of"
SUBSECTIONS = "keys_under"
REQUIRED = "(required)"


def section(of: str, help: str, under: tuple[str, ...] = ()) -> Any:  # noqa: A002 - the metadata key
    """A `dict[str, Any]` field holding the keys of another schema (`of`: a command name, or
    `module:Class`), or, with `under`, sub-sections that each hold them; empty by default."""
    metadata = {SECTION: of, "help": help, **({SUBSECTIONS: under} if under else {})}
    return dataclasses.field(default_factory=dict, metadata=metadata)


@dataclass(frozen=True)
class KeyRow:
    """One config key: `type` is a readable name, `allowed` the values a Literal admits."""

    key: str
    type: str
    default: Any
    help: str
    allowed: tuple = ()
    section: bool = False  # a mapping of another stage's keys, not a leaf


def allowed_values(tp: Any) -> tuple:
    """The values a `Literal` annotation admits (inside Optional or list too), else ()."""
    origin = get_origin(tp)
    if origin is Literal:
        return get_args(tp)
    if origin in (Union, types.UnionType, list, tuple, typing.Sequence):
        values = [v for arg in get_args(tp) for v in allowed_values(arg)]
        if origin in (Union, types.UnionType) and values and type(None) in get_args(tp):
            values.append(None)
        return tuple(values)
    return ()


def section_schema(target: str) -> tuple[type, str]:
    """The schema a section's `keys_of` names, and a label: "keys of `mmw2s train`"."""
    if target in COMMANDS:
        return COMMANDS[target].load_schema(), f"keys of `mmw2s {target}`"
    module, attr = target.split(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls, f"keys of {cls.__name__}"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return REQUIRED


def walk(schema: type, prefix: str = "", seen: dict | None = None) -> list[KeyRow]:
    """Every key of `schema` in declaration order: leaves, and sections expanded (see the module)."""
    seen = {} if seen is None else seen
    rows: list[KeyRow] = []
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            rows.extend(walk(tp, key + ".", seen))
        elif SECTION in f.metadata:
            rows.extend(_section(key, f, seen))
        else:
            rows.append(KeyRow(key, type_name(tp), _default(f), f.metadata.get("help", ""),
                               allowed_values(tp)))
    return rows


def _section(key: str, f: dataclasses.Field, seen: dict) -> list[KeyRow]:
    """The section's own row, then its schema's keys under it unless an earlier section has them."""
    schema, _ = section_schema(f.metadata[SECTION])
    under = f.metadata.get(SUBSECTIONS) or ()
    prefixes = [f"{key}.{u}." for u in under] or [key + "."]
    where = " and ".join(f"`{p}*`" for p in prefixes)
    first = seen.get(schema)
    note = f"its keys: {where}" + (f", as listed under `{first}*`" if first else "")
    help_text = f.metadata.get("help", "")
    rows = [KeyRow(key, "mapping", _default(f), f"{help_text}; {note}" if help_text else note, section=True)]
    if first is None:
        seen[schema] = prefixes[0]
        rows.extend(walk(schema, prefixes[0], seen))
    return rows


def describe(schema: type) -> list[tuple[str, str, Any, str]]:
    """Every key of `schema` as `(dotted key, type name, default, help)`; for `--help`."""
    return [(r.key, r.type, r.default, r.help) for r in walk(schema)]


def type_name(tp: Any) -> str:
    """A readable name of a type annotation: `int`, `str or null`, `list of float`."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in get_args(tp) if a is not type(None)]
        nullable = type(None) in get_args(tp)
        return " or ".join(names) + (" or null" if nullable else "")
    if origin is Literal:
        return "one of " + ", ".join(map(repr, get_args(tp)))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        args = get_args(tp)
        return f"mapping of str to {type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))
