"""Command lines generated from dataclasses: one typed field, one flag, one line of help.

    @dataclass
    class Args:
        preset: str = arg("tiny", "model preset or folder")
    args = parse(Args)            # --preset wan21-1.3b

Booleans become ``--flag/--no-flag``; tuples take several values; unknown flags and values
of the wrong type are rejected by argparse with the flag's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def arg(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with help text (and optional ``choices``)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _base_type(annotation):
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _base_type(args[0])[0], True
    return annotation, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, suppress_defaults: bool = False,
                            skip: tuple[str, ...] = ()) -> None:
    """One flag per field; with ``suppress_defaults`` absent flags leave no attribute, so callers
    can layer presets and config files under what was actually typed."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        annotation, optional = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = field.metadata.get("help", "") + f" (default: {default})"
        kwargs: dict[str, Any] = dict(dest=field.name, default=argparse.SUPPRESS if suppress_defaults else default,
                                      help=help_text)
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(annotation) in (tuple, list):
            inner = typing.get_args(annotation)[0]
            parser.add_argument(flag, nargs="+", type=inner, **kwargs)
        else:
            parser.add_argument(flag, type=annotation, **kwargs)


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    parser = argparse.ArgumentParser(description=description or (cls.__doc__ or "").strip().splitlines()[0])
    add_dataclass_arguments(parser, cls)
    namespace = parser.parse_args(argv)
    values = vars(namespace)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        annotation, _ = _base_type(hints[field.name])
        if typing.get_origin(annotation) is tuple and values[field.name] is not None:
            values[field.name] = tuple(values[field.name])
    return cls(**values)
