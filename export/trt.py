"""Build (or refresh) the TensorRT engine of a model folder on the machine that will run it.

    python -m export.trt --model-dir weights/emotech --precision fp16
    python -m export.trt --precision int8 --batch 1,4,8 --audio-seconds 0.5,4,10 --tokens 1,32,64

Engines do not move between GPUs or TensorRT versions, so this runs on the target (a
Jetson with TensorRT 10.3, a desktop with 11.x). It parses the chosen ONNX variant into a
strongly typed network (the precision is the graph's: FP32, FP16 casts or INT8 Q/DQ),
builds one optimisation profile (defaults: batch 1-32, audio from the front-end's shortest
to its longest accepted clip, tokens up to the spec's ``max_tokens``), reuses and updates a
persistent timing cache, prints build progress, and stores the engine in the cache that
``EmotionRecognizer.load(engine="trt")`` reads: keyed by GPU, compute capability,
TensorRT version, ONNX sha256, precision and profile, written atomically. A cache file
that is corrupt, truncated or built for something else is rebuilt with a warning.

This module is a thin CLI over ``runtime.engines.trt`` (the runtime builds the same engine
on first use); it does not import torch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from runtime import trt_cache
from runtime.errors import EmotionError
from runtime.spec import load_spec
from runtime.trt_cache import Profile


def profile_from_args(spec, batch: str | None, audio_seconds: str | None, tokens: str | None) -> Profile:
    """The kiosk-default profile for ``spec`` with any of ``"min,opt,max"`` overrides."""
    return Profile.for_spec(
        spec,
        batch=trt_cache.parse_triple(batch, int) if batch else None,
        audio_seconds=trt_cache.parse_triple(audio_seconds, float) if audio_seconds else None,
        tokens=trt_cache.parse_triple(tokens, int) if tokens else None,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None, help="model folder (default: the bundled weights)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="which ONNX variant to build")
    p.add_argument("--batch", default=None, help="min,opt,max items per call (default 1,8,32)")
    p.add_argument("--audio-seconds", default=None, help="min,opt,max padded audio seconds (default: the front-end's limits, opt 4)")
    p.add_argument("--tokens", default=None, help="min,opt,max padded tokens (default 1,32,max_tokens)")
    p.add_argument("--cache-dir", type=Path, default=None, help=f"engine + timing cache folder (default {trt_cache.default_cache_dir()})")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--workspace-gb", type=float, default=None, help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    p.add_argument("--quiet", action="store_true", help="no build progress")
    args = p.parse_args(argv)
    try:
        from runtime.engines.trt import build_or_load, device_index

        spec = load_spec(args.model_dir)
        profile = profile_from_args(spec, args.batch, args.audio_seconds, args.tokens)
        onnx_path = spec.graph_file("fused", args.precision)
        t0 = time.time()
        workspace = int(args.workspace_gb * (1 << 30)) if args.workspace_gb else None
        _, path, built = build_or_load(onnx_path, args.precision, profile, args.cache_dir, device_index(args.device), args.rebuild, not args.quiet, workspace)
    except (EmotionError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(f"{'built' if built else 'cached'} {args.precision} engine for {onnx_path.name} in {time.time() - t0:.1f} s: {path}")
    print(f"profile: {profile.to_dict()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
