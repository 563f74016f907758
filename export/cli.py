"""What the ``python -m export.*`` command lines add to ``runtime.cli``'s shared options:
progress logged at INFO by default, and the command line as typed (recorded in spec.json
and reports)."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from runtime import cli
from runtime.cli import HelpFormatter, add_logging_args as add_logging_arguments

__all__ = ["HelpFormatter", "add_logging_arguments", "command_line", "configure_logging"]


def configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr at the level ``-v``/``-q`` choose (INFO by default: training progress)."""
    cli.configure_logging(args, default=logging.INFO)


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command as typed (recorded in spec.json and reports)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([prog, *(shlex.quote(a) for a in args)])
