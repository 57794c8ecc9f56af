"""``ConfigError``: a config file, an override or a command-line value that cannot be used, with a
message that names the file or key and says how to fix it (the closest valid key for a typo).

``describe_validation_error`` turns pydantic's report on an ``ExperimentConfig`` into such a
message: one line per problem, the dotted key, where the value came from (the YAML file or a
``key=value`` override), and for an unknown key the nearest known one at the same level.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

_MAX_PROBLEMS = 3


class ConfigError(ValueError):
    """What the user asked for cannot be used; the message says which file or key and how to fix it."""


def describe_validation_error(
    err: ValidationError, *, root: type[BaseModel], source: str | None, overrides: Mapping[str, Any]
) -> str:
    """One line per problem (at most three, then a count): ``<where>: <key>: <problem>``.

    ``root`` is the model that was validated, ``source`` the YAML file (None: defaults only),
    ``overrides`` the nested dict parsed from the ``key=value`` arguments."""
    lines = []
    problems = err.errors()
    for problem in problems[:_MAX_PROBLEMS]:
        loc = tuple(problem.get("loc", ()))
        key = ".".join(str(part) for part in loc) or "<top level>"
        given = _given_in(overrides, loc) or (problem.get("type") == "missing" and _given_in(overrides, loc[:-1]))
        where = "override" if given else (source or "config")
        lines.append(f"{where}: {key}: {_problem_text(problem, root, loc)}")
    if len(problems) > _MAX_PROBLEMS:
        lines.append(f"... and {len(problems) - _MAX_PROBLEMS} more problem(s)")
    return "\n".join(lines)


def closest_key(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """The valid key nearest to the last part of ``loc`` among the fields of the model that
    holds it (``("train", "max_step")`` → ``"train.max_steps"``), or None."""
    model = _model_at(root, loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return None
    fields = list(model.model_fields)
    match = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.6)
    if not match:  # a shortened name: "topk" for "topk_tokens"
        match = [f for f in fields if f.startswith(loc[-1]) or loc[-1].startswith(f)][:1]
    if not match:
        return None
    return ".".join([str(part) for part in loc[:-1]] + match)


def valid_keys(root: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The field names of the model at ``loc`` (empty when ``loc`` is not a model)."""
    model = _model_at(root, loc)
    return sorted(model.model_fields) if model is not None else []


def _problem_text(problem: Mapping[str, Any], root: type[BaseModel], loc: tuple) -> str:
    kind = problem.get("type")
    if kind == "extra_forbidden":
        suggestion = closest_key(root, loc) if loc else None
        if suggestion:
            return f"unknown key; did you mean {suggestion}?"
        choices = valid_keys(root, loc[:-1])
        return "unknown key" + (f"; valid keys here: {', '.join(choices)}" if choices else "")
    message = str(problem.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if "input" in problem and kind not in ("missing",):
        shown = repr(problem["input"])
        message += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
    return message


def _given_in(overrides: Mapping[str, Any], loc: tuple) -> bool:
    node: Any = overrides
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return False
    return True


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Walk field annotations along ``loc`` (list indices step into the item type). The
    experiment's ``model`` section is a plain dict validated as a ``SalmaConfig``."""
    from salma.config import SalmaConfig

    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue  # an index into a list: the item type was taken at the list field
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        if part == "model" and model.__name__ == "ExperimentConfig":
            model = SalmaConfig
            continue
        model = _model_in(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]``; else the annotation."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation
