"""Parsed command-line flags -> a dataclass config, the one way every ``foundir_model`` CLI does it.

A flag's ``dest`` is the name of the config field it sets (``--tile-batch`` -> ``tile_batch``),
so a config is built by picking the namespace entries that name its fields (House style: "CLI
flags map onto fields", ``docs/ARCHITECTURE.md``). Flags that are not fields (``--overwrite``,
``--checkpoint`` of ``foundir-restore``) stay with the command; values a command derives
(a resolved device, a nested config) are passed explicitly and win over the namespace.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def flag_values(cls: type, args: argparse.Namespace, *, given_only: bool = False) -> dict[str, Any]:
    """The namespace entries that name an init field of the dataclass ``cls``.

    Args:
        cls: A dataclass type.
        args: Parsed flags. A flag with ``default=argparse.SUPPRESS`` that was not given is
            absent from it, so the field keeps its default (``train_flags.py``).
        given_only: Also leave out entries that are None (flags whose default is None stand
            for "the config's default", which may depend on other flags, e.g. ``--small``).

    Returns:
        ``{field name: value}``.
    """
    values = vars(args)
    return {f.name: values[f.name] for f in fields(cls)
            if f.init and f.name in values and not (given_only and values[f.name] is None)}


def config_from_flags(cls: type[T], args: argparse.Namespace, **derived: Any) -> T:
    """``cls(**flag_values(cls, args), **derived)``: ``derived`` wins over a flag of the same name.

    Raises:
        TypeError: a ``derived`` name that is not a field of ``cls`` (a programming error).
    """
    return cls(**{**flag_values(cls, args), **derived})
