"""Pieces every ``python -m export.*`` command line shares: logging options and the
recorded command."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults appended to option help, except for required options and defaults of
    None or False (whose help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def add_logging_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    g.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")


def configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr at the level ``-v``/``-q`` choose (INFO by default)."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command as typed (recorded in spec.json and reports)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([prog, *(shlex.quote(a) for a in args)])
