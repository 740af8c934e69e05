"""Typed config dataclasses as the one schema: Python checks and Hydra structured configs from the same class.

Every config section (trainer, buffer, objective, each rule, each follower, ...) is a dataclass whose fields carry
the type, the default and, for choices, a ``Literal``. Two things are derived from it:

* :func:`check_dataclass` — run by the dataclasses' ``__post_init__``: every ``Literal`` field holds one of its
  choices and every ``int`` / ``float`` / ``bool`` field holds that type (``1.5`` is not an ``int``), with one-line
  messages naming the config key (``upper.estimator: must be one of truncated|rollout, got 'x'``);
* :func:`structured` — the class Hydra registers in its ConfigStore: OmegaConf 2.3 cannot type ``Literal`` or
  ``tuple`` fields, so each ``Literal`` becomes a ``str`` Enum of its choices and each ``tuple`` a ``list``. Hydra
  then refuses unknown keys, wrong types and bad choices while composing, before a run directory exists.

Range checks (``lr > 0``) stay in each dataclass's ``__post_init__``, next to the field they guard.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

_CACHE: dict[type, type] = {}


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _choices(tp: Any) -> tuple[Any, ...] | None:
    return tuple(get_args(tp)) if get_origin(tp) is Literal else None


def check_dataclass(obj: Any, prefix: str) -> None:
    """Check ``Literal`` choices and scalar types of a config dataclass instance.

    Args:
        obj: the dataclass instance.
        prefix: the config group its keys live under (``upper``, ``trainer``, ...), for messages.

    Raises:
        ValueError: one line ``<prefix>.<field>: ...``.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        optional, tp = _is_optional(hints[f.name])
        key = f"{prefix}.{f.name}"
        if value is None:
            if not optional and tp is not Any:
                raise ValueError(f"{key}: must be set (null is not allowed)")
            continue
        choices = _choices(tp)
        if choices is not None:
            if isinstance(value, enum.Enum):
                value = value.value
                setattr(obj, f.name, value)
            if value not in choices:
                raise ValueError(f"{key}: must be one of {'|'.join(map(str, choices))}, got {value!r}")
        elif tp is bool and not isinstance(value, bool):
            raise ValueError(f"{key}: must be true or false, got {value!r}")
        elif tp is int and (isinstance(value, bool) or not isinstance(value, int)):
            if isinstance(value, float) and value.is_integer():
                setattr(obj, f.name, int(value))
            else:
                raise ValueError(f"{key}: must be an integer, got {value!r}")
        elif tp is float and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key}: must be a number, got {value!r}")
        elif tp is float:
            setattr(obj, f.name, float(value))


class _Choice(str, enum.Enum):
    """Base of the generated choice enums: prints as the plain choice."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def check_range(obj: Any, prefix: str, *keys: str, low: float = 0.0, strict: bool = True) -> None:
    """Refuse ``<prefix>.<key>`` values ``<= low`` (``< low`` when not ``strict``); ``None`` passes.

    Raises:
        ValueError: one line ``<prefix>.<key>: must be > low, got value``.
    """
    for key in keys:
        value = getattr(obj, key)
        if value is not None and (value <= low if strict else value < low):
            raise ValueError(f"{prefix}.{key}: must be {'>' if strict else '>='} {low:g}, got {value}")


def _structured_type(tp: Any, name: str) -> Any:
    optional, inner = _is_optional(tp)
    choices = _choices(inner)
    new: Any
    if choices is not None:
        new = _Choice(name, {str(c): str(c) for c in choices})  # type: ignore[call-overload]
    elif get_origin(inner) is tuple:
        args = [a for a in get_args(inner) if a is not Ellipsis]
        new = list[args[0]] if args else list[Any]  # type: ignore[valid-type]
    elif dataclasses.is_dataclass(inner) and isinstance(inner, type):
        new = structured(inner)
    else:
        new = inner
    return typing.Optional[new] if optional else new  # noqa: UP007, UP045 - built at runtime from a type object


def _list_factory(values: tuple[Any, ...]) -> Any:
    return lambda: list(values)


def schema_fields(schema_name: str) -> list[str]:
    """Field names of the registered schema class called ``schema_name`` (for "did you mean" hints)."""
    for schema in _CACHE.values():
        if schema.__name__ == schema_name:
            return [f.name for f in dataclasses.fields(schema)]
    return []


def structured(cls: type) -> type:
    """The OmegaConf-compatible twin of a config dataclass (same fields and defaults; ``Literal`` → Enum)."""
    if cls in _CACHE:
        return _CACHE[cls]
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _structured_type(hints[f.name], f"{cls.__name__}_{f.name}")
        default: Any
        if f.default is not dataclasses.MISSING:
            default = f.default
            if isinstance(default, tuple):
                default = dataclasses.field(default_factory=_list_factory(default))
            elif isinstance(default, enum.Enum):
                pass
            elif _choices(_is_optional(hints[f.name])[1]) is not None and default is not None:
                enum_tp = _is_optional(tp)[1]
                default = enum_tp(default)
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            if isinstance(factory, type) and dataclasses.is_dataclass(factory):
                factory = structured(factory)
            default = dataclasses.field(default_factory=factory)
        else:
            default = dataclasses.MISSING
        fields.append((f.name, tp, default) if default is not dataclasses.MISSING else (f.name, tp))
    out = dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)
    _CACHE[cls] = out
    return out
