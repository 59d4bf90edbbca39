"""Validation errors as people read them: one line per problem, the key's dotted path first,
without pydantic's "Value error," prefix, and an unknown key with the closest known one."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

# pydantic prefixes the text of a ValueError raised in a validator with this.
_PREFIXES = ("Value error, ", "Assertion failed, ")


def format_errors(exc: ValidationError, root: type[BaseModel]) -> str:
    """`invalid configuration:` and one indented line per error."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        path = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key{_suggestion(root, loc)}")
            continue
        msg = str(err["msg"])
        for prefix in _PREFIXES:
            msg = msg.removeprefix(prefix)
        lines.append(f"{path}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _suggestion(root: type[BaseModel], loc: Sequence[int | str]) -> str:
    """`; did you mean bus.username?` when a known key at that place is close to the unknown."""
    model = _model_at(root, loc[:-1])
    if model is None or not loc:
        return ""
    known = [f.alias or name for name, f in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if not close:
        return ""
    parent = ".".join(str(p) for p in loc[:-1])
    return f"; did you mean {parent + '.' if parent else ''}{close[0]}?"


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that holds the keys at `loc` (through lists, dicts and optionals)."""
    node: Any = root
    for part in loc:
        model = _as_model(node)
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                field = next((f for f in model.model_fields.values() if f.alias == part), None)
            if field is None:
                return None
            node = field.annotation
            continue
        args = [a for a in typing.get_args(node) if a is not type(None)]
        origin = typing.get_origin(node)
        if origin in (list, tuple) and args:
            node = args[0]
        elif origin is dict and len(args) == 2:  # dict[key, value]
            node = args[1]
        else:
            return None
    return _as_model(node)


def _as_model(node: Any) -> type[BaseModel] | None:
    """`node` if it is a model class, or the one model in an optional/union of it."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        return node
    if typing.get_origin(node) in (typing.Union, types.UnionType):
        models = [
            a for a in typing.get_args(node) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if len(models) == 1:
            return models[0]
    return None
