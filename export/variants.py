"""Write reduced-precision variants of a model folder's graphs and register them.

Each variant is written beside its FP32 graph (``emotech.onnx`` -> ``emotech.int8.onnx``),
first as ``<variant>.new`` so the registered file keeps matching its hash until the new
one is accepted, checked against TensorRT 10.3's parser rules (``export.op_support``),
then moved into place and recorded in ``spec.json`` (graph entry, sha256, how it was
made) through ``export.bundle``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from export.fp16 import convert_to_fp16
from export.int8 import calibration_items, feeds_for, quantize_int8

logger = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8")


def variant_file(fp32_file: str, precision: str) -> str:
    """``emotech.onnx`` -> ``emotech.int8.onnx``."""
    stem = fp32_file.removesuffix(".onnx")
    return f"{stem}.{precision}.onnx"


def pending_file(path: Path) -> Path:
    """Where a new variant waits until it is registered: ``emotech.int8.onnx.new``."""
    return path.with_name(path.name + ".new")


def make_variants(model_dir: Path, precision: str, data_root: Path | None, graphs: Sequence[str] | None = None, n_audio: int = 240, n_text: int = 480, method: str = "minmax", seed: int = 0) -> dict[str, Path]:
    """Write the ``precision`` variant of each FP32 graph of ``model_dir`` as a pending file.

    The registered variant stays intact and still matches its hash until
    ``install_variants`` replaces it: re-quantising a folder never leaves it failing
    verification.

    Args:
        model_dir: model folder with FP32 graphs registered in its ``spec.json``.
        precision: one of ``PRECISIONS``.
        data_root: RAVDESS + GoEmotions, read for INT8 calibration (unused for FP16).
        graphs: graph names to convert; ``None`` converts every FP32 graph.
        n_audio: RAVDESS training clips for INT8 calibration.
        n_text: GoEmotions training texts for INT8 calibration.
        method: INT8 activation calibration, one of ``export.int8.CALIBRATION_METHODS``.
        seed: seed of the calibration sample.

    Returns:
        graph name -> pending file (``pending_file``).

    Raises:
        ValueError: unknown precision or graph.
        FileNotFoundError: INT8 without the calibration data.
        RuntimeError: a variant fails the TensorRT 10.3 parser check.
    """
    from export.op_support import check_file
    from runtime.recognizer import EmotionRecognizer

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model_dir = Path(model_dir)
    rec = EmotionRecognizer.load(model_dir, engine="ort", precision="fp32")
    try:
        fp32 = {g: v["fp32"] for g, v in rec.spec.graphs.items() if "fp32" in v}
        graphs = list(graphs or fp32)
        unknown = [g for g in graphs if g not in fp32]
        if unknown:
            raise ValueError(f"{model_dir} has no fp32 graph {unknown}; it has {sorted(fp32)}")
        feeds = None
        if precision == "int8":
            if data_root is None or not Path(data_root).is_dir():
                raise FileNotFoundError(f"INT8 calibration needs the real data (RAVDESS, GoEmotions); not found at {data_root}")
            t0 = time.perf_counter()
            feeds = feeds_for(rec, calibration_items(rec, Path(data_root), n_audio, n_text, seed))
            logger.info("calibration: %d items in %d batches (%.0f s to read)", sum(len(f["audio"]) for f in feeds), len(feeds), time.perf_counter() - t0)
        out: dict[str, Path] = {}
        for graph in graphs:
            src = model_dir / fp32[graph]
            dst = pending_file(model_dir / variant_file(fp32[graph], precision))
            t0 = time.perf_counter()
            if precision == "fp16":
                onnx.save(convert_to_fp16(onnx.load(str(src))), str(dst))
            else:
                quantize_int8(src, dst, feeds, method)
            issues = check_file(dst)
            if issues:
                dst.unlink()
                raise RuntimeError(f"{dst.name} would not parse on TensorRT 10.3: " + "; ".join(map(str, issues)))
            logger.info("%s: written in %.0f s, TensorRT 10.3 op-support check OK", dst.name, time.perf_counter() - t0)
            out[graph] = dst
    finally:
        rec.close()
    return out


def discard_variants(pending: dict[str, Path]) -> None:
    """Delete pending variants that are not to be registered."""
    for path in pending.values():
        path.unlink(missing_ok=True)


def install_variants(pending: dict[str, Path]) -> dict[str, Path]:
    """Move pending variants over the registered files (atomic per file); graph -> final path."""
    final = {g: p.with_name(p.name.removesuffix(".new")) for g, p in pending.items()}
    for g, p in pending.items():
        p.replace(final[g])
    return final


def register_variants(model_dir: Path, pending: dict[str, Path], precision: str, report: dict[str, Any]) -> dict[str, Path]:
    """Install pending variants and record them in ``spec.json``: the graph entries, every
    file's sha256 (``bundle.update_files``) and ``report`` under ``quantization.<precision>``.

    Returns:
        graph name -> installed file.
    """
    from export import bundle

    written = install_variants(pending)
    spec = bundle.read_spec(model_dir)
    bundle.register_graphs(spec, {g: path.name for g, path in written.items()}, precision)
    spec.setdefault("quantization", {})[precision] = report
    bundle.update_files(model_dir, spec)
    return written
