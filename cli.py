"""What the command lines here share: argument errors as one line, not a usage dump, and a
frozen dataclass of settings (train.TrainConfig, detector.DetectorConfig) as the command line."""

import argparse
import dataclasses
import math
import os
import sys
from typing import Optional


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the problem (exit status 2)."""

    def error(self, message):
        self.exit(2, f"error: {message} (python {os.path.basename(sys.argv[0] or self.prog)} --help "
                     "lists the options)\n")


class ConfigError(ValueError):
    """A setting is out of its range."""


def setting(default, why, low=None, high=None, low_open=False, **extra):
    """A config field: its default, the reason for it (the CLI's help) and its valid range."""
    return dataclasses.field(default=default, metadata={"help": why, "range": (low, high, low_open), **extra})


def check_settings(config):
    """Raise ConfigError unless every field of `config` suits its type, choices and range
    (a config dataclass calls this from __post_init__)."""
    for f in dataclasses.fields(config):
        check_setting(f, getattr(config, f.name))


def check_setting(f, value):
    """Raise ConfigError unless `value` suits field `f` (its type, choices and range)."""
    option = "--" + f.name.replace("_", "-")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    low, high, low_open = f.metadata["range"]
    if low is None or (value is None and f.default is None):
        return
    kind = int if f.type is int else float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ConfigError(f"{option} must be {'a whole number' if kind is int else 'a number'}, not {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, not {value}")
    if value < low or value > high or (low_open and value == low):
        low_side = f"above {low}" if low_open else f"at least {low}"
        raise ConfigError(f"{option} must be {low_side} and at most {high}, not {value}")


def parse_config(config_class, argv, description):
    """The command line as a `config_class`: one option per field, with its reason and default as help."""
    parser = OneLineParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_class):
        option = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                help=f.metadata["help"])
            continue
        kind = {int: int, float: float, Optional[float]: float}.get(f.type, str)
        parser.add_argument(option, type=kind, default=f.default, help=f.metadata["help"],
                            choices=f.metadata.get("choices"))
    try:
        return config_class(**vars(parser.parse_args(argv)))
    except ConfigError as error:
        parser.error(str(error))
