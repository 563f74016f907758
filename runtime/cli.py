"""Command-line options shared by every entry point, defined once.

``add_model_args`` declares ``--model-dir/--engine/--precision/--device`` with the same
defaults everywhere (choices read from the engine registry); ``add_logging_args`` and
``configure_logging`` give every CLI ``-v/--verbose`` and ``-q/--quiet``. Library code only
logs; these functions are the one place that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runtime.engines import AUTO, REGISTRY
from runtime.engines.base import PRECISIONS, parse_device

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" to an option's help only when X says something: not for None,
    False or an empty list, not for a flag (an option that takes no value: its default is
    "not given"), and not when the help text already states its default; the description
    keeps its line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, False, [], argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the project's help formatter and ``prog`` as users type it."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def device_arg(value: str) -> str:
    """argparse type for ``--device``: cpu, cuda or cuda:N."""
    try:
        parse_device(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return value


def add_model_args(p: argparse.ArgumentParser, *, engine: bool = True, precision: bool = True, device: bool = True,
                   model_dir_help: str | None = None) -> None:
    """Declare ``--model-dir`` and, unless turned off, ``--engine``, ``--precision``, ``--device``."""
    g = p.add_argument_group("model")
    g.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                   help=model_dir_help or "model folder holding spec.json (default: $EMOTECH_MODEL_DIR if set, else the bundled model)")
    if engine:
        g.add_argument("--engine", default=AUTO, choices=(AUTO, *REGISTRY),
                       help="inference engine; auto: TensorRT, else PyTorch on CUDA, else ONNX Runtime (CUDA, else CPU)")
    if precision:
        g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="graph variant: fp32, fp16 (GPUs), int8 (Q/DQ graph; fastest on TensorRT)")
    if device:
        g.add_argument("--device", type=device_arg, default=None, metavar="DEVICE",
                       help="cpu, cuda or cuda:N (default: cuda:0 for GPU engines when a GPU is visible, else cpu)")


def unit_interval(value: str) -> float:
    """argparse type for a number in [0, 1]."""
    try:
        x = float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from e
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return x


def add_fusion_args(p: argparse.ArgumentParser) -> None:
    """Declare ``--audio-weight`` (``EmotionRecognizer.load(audio_weight=...)``)."""
    p.add_argument("--audio-weight", type=unit_interval, default=None, metavar="W",
                   help="for a late-fusion folder (spec.json fusion.method weighted_average): fuse audio+text items as "
                        "W * audio + (1 - W) * text probabilities (default: the folder's fitted fusion.audio_weight)")


def add_logging_args(p: argparse.ArgumentParser) -> None:
    """Declare ``-v/--verbose`` (repeatable) and ``-q/--quiet``."""
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log lines on stderr (-vv: debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="log errors only")


def configure_logging(args: argparse.Namespace, default: int = logging.WARNING) -> None:
    """Configure the root logger from ``-v/-q`` (``default``: the level without either)."""
    if getattr(args, "quiet", False):
        level = logging.ERROR
    else:
        level = max(logging.DEBUG, default - 10 * getattr(args, "verbose", 0))
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def fail(message: str) -> int:
    """Print ``error: message`` on stderr; returns 2, the exit code for usage, model or engine errors."""
    print(f"error: {message}", file=sys.stderr)
    return 2
