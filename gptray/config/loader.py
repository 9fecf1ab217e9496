"""Typed dataclass configs from plain dicts and YAML, with dotted `key=value` overrides.

Every error names the dotted key it is about (`optimizer.lr`, `data.sources[0].path`),
so a bad config stops before any work with a message the user can act on.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from gptray.core.errors import ConfigError

T = TypeVar("T")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def build(cls: type[T], data: Any, prefix: str = "") -> T:
    """Construct dataclass `cls` from a dict, checking every key and value type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    moved = getattr(cls, "MOVED_KEYS", {})
    for key in data:
        if key in moved:
            section, new_key = moved[key].split(".", 1)
            raise ConfigError(_join(prefix, str(key)), f"has moved to {moved[key]} (write {moved[key]}=…, or "
                                                       f"{new_key}: in the {section}: section of a YAML file)")
        if key not in fields:
            raise ConfigError(_join(prefix, str(key)), _unknown_key_message(str(key), fields, moved))
    values = {name: coerce(hints[name], data[name], _join(prefix, name)) for name in fields if name in data}
    return cls(**values)


def _unknown_key_message(key: str, fields: dict, moved: dict[str, str]) -> str:
    close = difflib.get_close_matches(key, [*fields, *moved], n=1)
    hint = f" (did you mean '{moved.get(close[0], close[0])}'?)" if close else ""
    return f"unknown key{hint}; valid keys here: {', '.join(sorted(fields))}"


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against type `tp` (as written in a dataclass), converting where lossless."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(key, "must be set (got null)")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, key)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(key, " or ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, allowed))} (got {value!r})")
        return value
    if tp in (dict, list):  # unparameterized: any mapping / any list
        if not isinstance(value, tp):
            raise ConfigError(key, f"must be a {'mapping' if tp is dict else 'list'} (got {value!r})")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list (got {value!r})")
        (item_type, *_) = get_args(tp) or (Any,)
        return [coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping (got {value!r})")
        _, value_type = get_args(tp) or (Any, Any)
        return {str(k): coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be true or false (got {value!r})")
    if tp is int:
        number = _as_number(value, key, "an integer")
        if float(number).is_integer():
            return int(number)
        raise ConfigError(key, f"must be an integer (got {value!r})")
    if tp is float:
        return float(_as_number(value, key, "a number"))
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, f"must be a string (got {value!r})")
    raise TypeError(f"config type {tp!r} at {key} is not supported")  # a bug in a schema, not user input


def _as_number(value: Any, key: str, what: str) -> int | float:
    # YAML 1.1 reads `3e-4` and `1e6` as strings; accept them as the numbers users meant.
    if isinstance(value, bool):
        raise ConfigError(key, f"must be {what} (got {value!r})")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            try:
                return float(value)
            except ValueError:
                pass
    raise ConfigError(key, f"must be {what} (got {value!r})")


def to_dict(config: Any) -> dict:
    """Plain-dict form of a config dataclass (what YAML files and Ray workers hold)."""
    return dataclasses.asdict(config)


def deep_merge(base: dict, update: dict) -> dict:
    """`update` laid over `base`: mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b.c=value`; the value is read as YAML, so `1e-3`, `true`, `[1, 2]` work."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key=value (e.g. train.max_steps=50)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override needs a dotted key before '=' (e.g. model.preset=nano)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the string as the user typed it
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted `key=value` overrides to a raw config dict (before type checking), in order."""
    for text in overrides:
        set_dotted(data, *parse_override(text))
    return data


def apply_settings(data: dict, settings: dict[str, Any]) -> dict:
    """Apply dotted keys with values already parsed (a command's options) to a raw config dict, in order."""
    for key, value in settings.items():
        set_dotted(data, key, value)
    return data


def set_dotted(data: dict, key: str, value: Any) -> None:
    """data[a][b][c] = value for key a.b.c, making sections as needed; a digit indexes a list."""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(where, f"holds {child!r}, not a section; cannot set {key}")
            node = child
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value


def _list_index(items: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(where, f"index {part!r} is not in a list of {len(items)} item(s)")
    return int(part)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"no such config file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`; lists of sections become JSON strings (one param each)."""
    flat: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict):
                flat.update(flatten(value, _join(prefix, key)))
            elif isinstance(value, list):
                flat[_join(prefix, key)] = json.dumps(value, sort_keys=True)
            else:
                flat[_join(prefix, key)] = value
    return flat
