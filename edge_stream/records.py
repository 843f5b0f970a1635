"""Dicts (parsed TOML or JSON) -> frozen dataclasses, checking field names and types once.

The launch file (edge_stream.node.config) and the model manifest
(edge_stream.runtime.manifest) both map one-to-one onto dataclasses; this is
the one validator they share. It sits at the top level, beside errors.py,
because both layers import it and neither may pull the other (nor onnxruntime)
in: a sensor's `import edge_stream.node.client` loads the launch-file config.
Errors name the field path (`node[0].models[1].max_new_tokens`) and the
expected type, and are raised as the caller's exception class.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from edge_stream.errors import EdgeStreamError


def build(cls, d: Any, where: str, error: type[EdgeStreamError], table: str = "table"):
    """Dataclass `cls` from dict `d`: unknown, missing and mistyped fields raise `error`
    naming `where.field`. `table` is what a dict is called in the source format
    ("table" in TOML, "object" in JSON)."""
    if not isinstance(d, dict):
        raise error(f"{where}: expected {_a(table)}, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise error(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise error(f"{where}.{name}: required field is missing")
            continue
        kwargs[name] = _convert(hints[name], d[name], f"{where}.{name}", error, table)
    return cls(**kwargs)


def _a(table: str) -> str:
    return f"an {table}" if table[0] in "aeiou" else f"a {table}"


def _convert(tp, value, where: str, error, table: str):
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, error, table)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, list):  # [[node.models]] arrays of tables
            raise error(f"{where}: expected one {table}, got an array")
        return build(tp, value, where, error, table)
    if origin is tuple:
        if isinstance(value, str) and args[0] is str:
            value = [value]  # a single endpoint or topic may be given as a string
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}: expected an array, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{where}[{i}]", error, table) for i, v in enumerate(value))
    if tp is dict:
        if not isinstance(value, dict):
            raise error(f"{where}: expected {_a(table)}, got {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool, float):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise error(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise error(f"{where}: unsupported field type {tp}")  # internal: a field type we do not map


def check_args(func, values: dict, where: str, error: type[EdgeStreamError]) -> None:
    """Type-check keyword options against `func`'s annotations before it uses them, so an option
    from the wire (`threshold: "high"`) gets `error` naming it instead of a TypeError deep inside.
    Values still at their parameter's default, unannotated parameters and **kwargs are skipped."""
    import inspect

    hints = typing.get_type_hints(func)
    for name, p in inspect.signature(func).parameters.items():
        if name in values and name in hints and p.kind is not p.VAR_KEYWORD and values[name] is not p.default:
            _convert(hints[name], values[name], f"{where} {name}", error, "map")
