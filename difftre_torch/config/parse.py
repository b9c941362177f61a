"""Typed reading of config mappings: a dataclass from a YAML/TOML mapping, every field checked.

:func:`build` fills a dataclass from a mapping and raises :class:`ConfigError` naming the file,
the field path (``trainer.updates``, ``targets[2].options.q_max``) and what was expected when a
field is unknown (with the closest known name), missing, of the wrong type (``"5.0"`` for a
number, ``"false"`` for a boolean: strings are never coerced; NaN and ±inf are no setting's
value) or rejected by the dataclass's own ``__post_init__``. :func:`apply_overrides` applies
``--set key.path=value`` overrides (values parsed as YAML) to a raw mapping, and
:func:`read_mapping` reads YAML or TOML, following an ``extends:`` chain (a file that names
another as its base and overrides parts of it). YAML is read as :func:`yaml_load` does
(``1e-3`` is a number).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A config value is wrong: the message names the file, the field and what was expected."""


def where(source: str, path: str) -> str:
    return f"{source}: {path}" if path else source


def suggest(name: str, known: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    match = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_keys(data: dict, known: typing.Iterable[str], source: str, path: str, what: str = "field") -> None:
    known = list(known)
    for key in data:
        if key not in known:
            raise ConfigError(f"{where(source, _join(path, str(key)))}: unknown {what} {key!r}"
                              f"{suggest(key, known)}; expected one of {sorted(known)}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
        return f"a list of {type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def coerce(value: Any, hint: Any, source: str, path: str) -> Any:
    """``value`` checked against the type ``hint`` (and converted: int → float, list → tuple,
    mapping → dataclass); a :class:`ConfigError` otherwise."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, source, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _wrong(value, hint, source, path)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where(source, path)}: expected one of {list(choices)}, got {value!r}"
                              f"{suggest(value, [str(c) for c in choices]) if isinstance(value, str) else ''}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong(value, hint, source, path)
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where(source, path)}: expected {type_name(hint)}, got {len(value)} values")
            return tuple(coerce(v, a, source, f"{path}[{k}]") for k, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, source, f"{path}[{k}]") for k, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(value, hint, source, path)
        key_t, val_t = (typing.get_args(hint) + (Any, Any))[:2]
        return {coerce(k, key_t, source, path): coerce(v, val_t, source, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise _wrong(value, hint, source, path)
        return build(hint, value, source, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(value, hint, source, path)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(value, hint, source, path)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(value, hint, source, path)
        if not math.isfinite(value):
            raise ConfigError(f"{where(source, path)}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(value, hint, source, path)
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise _wrong(value, hint, source, path)
        return value
    if hint is list:
        if not isinstance(value, list):
            raise _wrong(value, hint, source, path)
        return value
    return value


def _wrong(value: Any, hint: Any, source: str, path: str) -> ConfigError:
    hint_text = type_name(hint)
    extra = ""
    if isinstance(value, str) and hint in (float, int, bool) or (
            isinstance(value, str) and typing.get_origin(hint) in (Union, types.UnionType)
            and any(a in (float, int, bool) for a in typing.get_args(hint))):
        extra = " (write it without quotes)"
    return ConfigError(f"{where(source, path)}: expected {hint_text}, got {value!r} "
                       f"({type(value).__name__}){extra}")


def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls, data: dict | None, source: str, path: str = ""):
    """An instance of dataclass ``cls`` from ``data``: unknown, missing and mistyped fields and
    the dataclass's own validation errors all raise :class:`ConfigError` naming ``source`` and
    the field's path."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where(source, path)}: expected a mapping of {cls.__name__} fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown_keys(data, fields, source, path)
    types_ = hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(data[name], types_[name], source, _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            doc = f.metadata.get("doc", "")
            raise ConfigError(f"{where(source, _join(path, name))}: required field is missing"
                              + (f" ({doc})" if doc else ""))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(_validation_message(cls, str(exc), fields, source, path)) from None


def _validation_message(cls, message: str, fields, source: str, path: str) -> str:
    """A dataclass's own validation error with the field's path where the message is about one
    field: "SamplerConfig.timestep_fs: expected ..." and "timestep_fs: expected ..." →
    "sampler.timestep_fs: expected ..."; "temperature_K must be > 0" →
    "state_points[0].temperature_K: temperature_K must be > 0". A message that relates several
    fields ("cutoff_A must exceed sigma_A") stays at the section's path."""
    text = message[len(cls.__name__) + 1:] if message.startswith(f"{cls.__name__}.") else message
    head, sep, rest = text.partition(":")
    if head in fields and sep:
        return f"{where(source, _join(path, head))}:{rest}"
    first = text.split(" ", 1)[0]
    if first in fields and not any(re.search(rf"\b{re.escape(f)}\b", text) for f in fields if f != first):
        return f"{where(source, _join(path, first))}: {text}"
    return f"{where(source, path or cls.__name__)}: {message}"


# ------------------------------------------------------------------------------- files, overrides


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-3`` and ``2E5`` as numbers (YAML 1.2, as every
    other YAML and JSON reader does): PyYAML's YAML 1.1 needs a dot in the mantissa
    (``1.0e-3``) and would hand the string ``'1e-3'`` to a number field."""
    import yaml

    return yaml.load(text, Loader=_loader())


_LOADER = None


def _loader():
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
            list("-+0123456789"))
        _LOADER = Loader
    return _LOADER


def read_mapping(path: str | Path, _seen: tuple = ()) -> dict:
    """The mapping of a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file. A top-level
    ``extends: other.yaml`` (relative to this file) reads that file first and deep-merges this
    one over it; relative paths inside the base stay relative to the base (they are made
    absolute before merging, see :func:`_absolute_paths`)."""
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path in _seen:
        raise ConfigError(f"{path}: extends itself (through {' -> '.join(str(p) for p in _seen)})")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; expected a YAML or TOML file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is fine
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (UTF-8): byte {exc.object[exc.start]:#04x} at position "
                          f"{exc.start}; expected a YAML or TOML file") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    else:
        import yaml

        try:
            data = yaml_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({yaml_error(exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected a file name, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.exists():
        raise ConfigError(f"{path}: extends: {base_path} does not exist")
    parent = read_mapping(base_path, _seen + (path,))
    if base_path.resolve().parent != path.parent:
        raise ConfigError(f"{path}: extends: the base file must lie in the same folder "
                          f"(relative paths are resolved against that folder)")
    return deep_merge(parent, data)


def yaml_error(exc: Exception) -> str:
    """A YAML parser error on one line: "line L, column C: <problem> (<context>)"."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    at = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "
    return f"{at}{problem}" + (f" ({context})" if context else "")


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``: mappings merge key by key, anything else replaces. A mapping
    that names another ``kind`` than the base's (``potential: {kind: deepmd, ...}`` over a nequip
    one) replaces it whole: another kind has other options."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        other_kind = isinstance(value, dict) and isinstance(out.get(key), dict) and \
            value.get("kind", out[key].get("kind")) != out[key].get("kind")
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not other_kind:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"trainer.updates=4"`` → (["trainer", "updates"], 4); the value is read as YAML, so
    ``4`` is an integer, ``[1, 2]`` a list, ``true`` a boolean and ``"4"`` a string; a path part
    that is a number indexes a list (``targets.0.weight=2``)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. trainer.updates=4")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key {key!r} is not a dotted path such as trainer.updates")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({yaml_error(exc)})") from None
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    return parts, value


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict:
    """A copy of ``data`` with each ``KEY=VALUE`` of ``overrides`` set (missing mappings are
    created; a list index must exist)."""
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for k, part in enumerate(parts[:-1]):
            nxt = parts[k + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ConfigError(f"--set {text}: {'.'.join(map(str, parts[:k + 1]))} is not an existing list item")
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {'.'.join(map(str, parts[:k]))} is not a mapping")
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise ConfigError(f"--set {text}: {'.'.join(map(str, parts))} is not an existing list item")
            node[last] = value
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {'.'.join(map(str, parts[:-1]))} is not a mapping")
            node[last] = value
    return out
