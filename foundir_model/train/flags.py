"""Command-line flags of ``foundir-train``: one per :class:`TrainConfig` field, plus ``--recipe``.

Flags map onto fields (underscores become dashes). ``--recipe NAME`` starts from a named
preset of :data:`foundir_model.config.TRAIN_RECIPES` instead of the plain defaults; only the
flags given on the command line override it, so ``--recipe release --batch-size 16`` keeps
every other release setting (``docs/training.md``, "Recipes").
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from typing import Any

from foundir_model.config import TRAIN_RECIPES, TrainConfig, train_recipe
from foundir_model.flags import flag_values
from foundir_model.threads import add_threads_flag


def _field_type(tp: Any) -> tuple[Any, bool]:
    """argparse type of a TrainConfig field, and whether it is optional (None allowed)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and len(args) < len(typing.get_args(tp)):
        return args[0], True
    return tp, False


def _help(name: str, default: Any) -> str:
    per_recipe = [f"{r}: {v[name]}" for r, v in TRAIN_RECIPES.items() if name in v and v[name] != default]
    return f"(default: {default}" + (f"; recipe {', '.join(per_recipe)}" if per_recipe else "") + ")"


def configure(parser: argparse.ArgumentParser) -> None:
    """``--recipe`` and one ``--flag`` per :class:`TrainConfig` field. Unset flags stay out
    of the namespace (``argparse.SUPPRESS``), so :func:`config_from_args` can tell a flag
    given on the command line from a default."""
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help=f"start from a named training recipe ({', '.join(TRAIN_RECIPES)}); "
                             "flags given explicitly override its fields")
    hints = typing.get_type_hints(TrainConfig)
    d = TrainConfig()
    for f in fields(TrainConfig):
        tp, optional = _field_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=_help(f.name, default))
        else:
            conv = tp if not optional else (lambda s, tp=tp: None if s.lower() == "none" else tp(s))
            parser.add_argument(flag, type=conv, default=argparse.SUPPRESS, help=_help(f.name, default))
    # The advice a too-large crop gives (foundir_data.streaming.transforms.check_crop_fits): one word for
    # the common case, the same config field.
    parser.add_argument("--upscale-small", dest="small_pairs", action="store_const", const="upscale",
                        default=argparse.SUPPRESS, help="same as --small-pairs upscale: resize pairs smaller "
                        "than --crop up (bicubic, aspect kept) instead of refusing them")
    parser.add_argument("--specialist", default=None, metavar="NAME",
                        help="train the named specialist (see specialists.EXPERTS) on top of --generalist")
    parser.add_argument("--generalist", default=None, help="generalist checkpoint for --specialist")
    add_threads_flag(parser)  # how this process runs, not what it trains: not a TrainConfig field


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed CLI flags: the recipe (if any), then the flags given.

    Raises:
        ValueError: for an unknown recipe name, naming the valid ones.
    """
    return train_recipe(getattr(args, "recipe", None), **flag_values(TrainConfig, args))
