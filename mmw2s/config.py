"""Typed configs: YAML files and `key.sub=value` overrides loaded into dataclass schemas.

Every stage declares its config as a tree of dataclasses (plain types, `field(metadata={"help": ...})`).
`load_config` reads the stage's YAML, applies command-line overrides on top, and validates the
result against the schema once, before any work starts: an unknown key, a wrong type or a missing
required value raises `ConfigError` naming the file, the key, the expected type and, for a typo,
the closest valid key. Nothing downstream ever sees an untyped dict of options.
"""
from __future__ import annotations

import copy

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from mmw2s.schema import describe, type_name

T = TypeVar("T")
MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A config file or override does not match the stage's schema."""


class _Loader(yaml.SafeLoader):
    """YAML as users mean it (1.2 core schema): `no`/`on` stay strings, `2e-3` is a float.

    PyYAML implements YAML 1.1, where `mixed_precision: no` is False and `lr: 2e-3` a string.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def yaml_load(text: str) -> Any:
    """Parse YAML text with the 1.2-style scalars above."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# --------------------------------------------------------------------------------------------
# Loading


def load_config(schema: type[T], path: str | os.PathLike | None = None,
                overrides: Iterable[str] = ()) -> T:
    """Load `path` (YAML) into `schema`, with `key.sub=value` overrides applied on top.

    Values of overrides are parsed as YAML scalars (`seed=3` is an int, `out=runs/a` a str,
    `web.samples=1e3` is rejected for an int key). Raises `ConfigError` on any mismatch.
    """
    source = str(path) if path is not None else "<defaults>"
    raw = read_yaml(path) if path is not None else {}
    # Validate the file alone first, then each override, so that an error names where the
    # bad value came from; required keys are checked last (an override may supply them).
    build(schema, raw, source, require=False)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
        build(schema, raw, f"command-line override '{item}'", require=False)
    return build(schema, raw, source + (" + overrides" if overrides else ""))


BASE_KEY = "base"


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping top level is a `ConfigError`.

    A top-level `base: other.yaml` (relative to this file) is read first and this file's keys are
    deep-merged over it, so an experiment variant states only what it changes.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (f" (base of {_seen[-1]})" if _seen else ""))
    if p.resolve() in _seen:
        raise ConfigError(f"{p}: `base` files form a cycle: {' -> '.join(map(str, _seen))}")
    try:
        data = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as exn:
        raise ConfigError(f"{p}: not valid YAML: {exn}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: `base` must be the path of a YAML file, got {base!r}")
    return deep_merge(read_yaml(p.parent / base, (*_seen, p.resolve())), data)


def deep_merge(base: dict, extra: dict) -> dict:
    """A copy of `base` with `extra` merged in: mappings merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """`"a.b=3"` -> `("a.b", 3)`; the value is read as a YAML scalar."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. seed=3)")
    key, text = item.split("=", 1)
    key = key.strip().removeprefix("--")
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set `tree[a][b] = value` for `key="a.b"`, creating mappings on the way."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def build(schema: type[T], raw: dict, source: str, prefix: str = "", require: bool = True) -> T:
    """Validate the mapping `raw` against the dataclass `schema` and instantiate it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: key '{prefix.rstrip('.') or '<top>'}' expects a mapping "
                          f"of {schema.__name__} fields, got {_show(raw)}")
    hints = get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(schema, prefix, key, source))
    kwargs, missing = {}, []
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = coerce(raw[name], hints[name], prefix + name, source, require)
        elif f.default is MISSING and f.default_factory is MISSING:
            missing.append(name)
    if missing and require:
        name = missing[0]
        raise ConfigError(f"{source}: missing required key '{prefix + name}' "
                          f"(expected {type_name(hints[name])})")
    if missing:
        return None  # type: ignore[return-value]  # a partial check: an override may supply it
    obj = schema(**kwargs)
    check = getattr(obj, "validate", None)
    if require and callable(check):
        try:
            check()
        except ConfigError as exn:  # a nested schema's own error already names its key
            raise ConfigError(f"{source}: {exn}") from None
        except ValueError as exn:
            raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {exn}") from None
    return obj


def coerce(value: Any, tp: Any, where: str, source: str, require: bool = True) -> Any:
    """Check (and minimally convert) `value` against the type annotation `tp`."""
    def fail() -> ConfigError:
        return ConfigError(f"{source}: key '{where}' expects {type_name(tp)}, got {_show(value)}")

    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, source, where + ".", require)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where, source)
            except ConfigError:
                continue
        raise fail()
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{source}: key '{where}' expects one of "
                          f"{', '.join(map(repr, get_args(tp)))}, got {_show(value)}"
                          + _suggest(str(value), [str(a) for a in get_args(tp)]))
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise fail()
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [coerce(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        _, val_tp = get_args(tp) or (Any, Any)
        return {str(k): coerce(v, val_tp, f"{where}.{k}", source) for k, v in value.items()}
    return _coerce_scalar(value, tp, fail)


def _coerce_scalar(value: Any, tp: Any, fail) -> Any:
    # bool is a subclass of int in Python; `samples: true` is a mistake, not the number 1.
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `out=123` on the command line is still a path
        raise fail()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail()


# --------------------------------------------------------------------------------------------
# Messages


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) < 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_key_message(schema: type, prefix: str, key: str, source: str) -> str:
    # Suggest among every dotted key of the whole level, so `web.sampels` -> `web.samples`
    # and a key put at the wrong depth (`samples` at top) -> `web.samples`.
    candidates = [k for k, *_ in describe(schema)]
    local = [f.name for f in dataclasses.fields(schema)]
    hint = _suggest(key, local) or _suggest(prefix + key, [prefix + c for c in candidates])
    valid = ", ".join(local)
    return (f"{source}: unknown key '{prefix}{key}'{hint}. "
            f"Valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {valid}")


# --------------------------------------------------------------------------------------------
# Introspection and saving


def to_dict(cfg: Any) -> dict:
    """The config as plain YAML-able data."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, folder: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config next to a stage's output (atomically) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
    return path
