"""Command-line flags generated from option dataclasses: SearchOptions and InferenceOptions
(`nmt.options`), and the service's EngineSettings and Limits.

Every field that the command lines offer carries its help text (and flags and choices, where they
differ from the field) in its metadata, so a new option is added once, in its dataclass, and
`nmt-translate`, `nmt-evaluate` and `nmt-serve` offer it with the dataclass's default.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any, TypeVar

Options = TypeVar("Options")


def add_option_flags(
    parser: argparse.ArgumentParser, options_class: type, title: str, exclude: tuple[str, ...] = ()
) -> None:
    """One flag per command-line field of the dataclass (but those in `exclude`), in an argument
    group named `title`."""
    group = parser.add_argument_group(title)
    for option in fields(options_class):
        if not option.metadata.get("cli", True) or option.name in exclude:
            continue
        default = option.default if option.default is not MISSING else option.default_factory()
        flags = option.metadata.get("flags") or ("--" + option.name.replace("_", "-"),)
        help_text = option.metadata["help"]
        if isinstance(default, bool):
            group.add_argument(
                *flags, dest=option.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        group.add_argument(
            *flags,
            dest=option.name,
            type=type(default),
            default=default,
            choices=option.metadata.get("choices") or None,
            metavar=None if option.metadata.get("choices") else option.name.upper(),
            help=f"{help_text} (default: %(default)s)",
        )


def options_from_args(options_class: type[Options], args: argparse.Namespace) -> Options:
    """The dataclass built from the parsed flags, with its defaults for fields that have none (its
    own checks run: ConfigError on a bad value)."""
    values: dict[str, Any] = {
        option.name: getattr(args, option.name)
        for option in fields(options_class)
        if option.metadata.get("cli", True) and hasattr(args, option.name)
    }
    return options_class(**values)
