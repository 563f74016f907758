"""Build (or refresh) the TensorRT engine of a model folder on the machine that will run it.

    python -m export.trt --model-dir weights/emotech --precision fp16
    python -m export.trt --precision int8 --max-batch 64
    python -m export.trt --precision int8 --batch 1,4,8 --audio-seconds 0.5,4,10 --tokens 1,32,64

Engines do not move between GPUs, drivers or TensorRT versions, so this runs on the target
(a Jetson with TensorRT 10.3, a desktop with 11.x). It parses the chosen ONNX variant into
a strongly typed network (the precision is the graph's: FP32, FP16 casts or INT8 Q/DQ),
builds one optimisation profile, reuses and updates a persistent timing cache, logs build
progress, and stores the engine in the cache that ``EmotionRecognizer.load(engine="trt")``
reads (see ``runtime.trt_cache`` for the key, the file checks and the build lock). The
default profile is the one ``EmotionRecognizer.load(engine="trt", max_batch=N)`` asks for
with ``--max-batch N`` (default 32), so a service started afterwards finds the engine
built; ``--batch/--audio-seconds/--tokens`` build other profiles.

This module is a thin CLI over ``runtime.engines.trt`` (the runtime builds the same engine
on first use); it does not import torch.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from runtime import cli, trt_cache
from runtime.errors import EmotionError
from runtime.spec import load_spec
from runtime.trt_cache import Profile


def profile_from_args(spec, batch: str | None, audio_seconds: str | None, tokens: str | None, max_batch: int | None = None) -> Profile:
    """The kiosk-default profile for ``spec`` (batch 1-``max_batch``) with any of
    ``"min,opt,max"`` overrides."""
    return Profile.for_spec(
        spec,
        batch=trt_cache.parse_triple(batch, int) if batch else None,
        audio_seconds=trt_cache.parse_triple(audio_seconds, float) if audio_seconds else None,
        tokens=trt_cache.parse_triple(tokens, int) if tokens else None,
        max_batch=max_batch,
    )


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m export.trt", __doc__)
    cli.add_model_args(p, engine=False, device=False)
    p.add_argument("--max-batch", type=int, default=32, help="largest batch per engine call: the profile's batch range is 1..N, opt min(8, N), as the runtime's max_batch asks")
    p.add_argument("--batch", default=None, help="min,opt,max items per call instead of --max-batch's range")
    p.add_argument("--audio-seconds", default=None, help="min,opt,max padded audio seconds; none means the front-end's limits with opt 4")
    p.add_argument("--tokens", default=None, help="min,opt,max padded tokens; none means 1,32,max_tokens")
    p.add_argument("--cache-dir", type=Path, default=None, help=f"engine + timing cache folder; none means {trt_cache.default_cache_dir()}")
    p.add_argument("--device", type=cli.device_arg, default="cuda", help="cuda or cuda:N")
    p.add_argument("--workspace-gb", type=float, default=None, help="builder workspace limit in GiB (part of the cache key); none means TensorRT's default")
    p.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    cli.add_logging_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args, default=logging.INFO)
    try:
        from runtime.engines.trt import build_or_load, device_index

        if args.max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
        spec = load_spec(args.model_dir)
        profile = profile_from_args(spec, args.batch, args.audio_seconds, args.tokens, args.max_batch)
        onnx_path = spec.graph_file("fused", args.precision)
        t0 = time.perf_counter()
        workspace = int(args.workspace_gb * (1 << 30)) if args.workspace_gb else None
        _, path, built = build_or_load(onnx_path, args.precision, profile, args.cache_dir, device_index(args.device), args.rebuild, not args.quiet, workspace)
    except (EmotionError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(f"{'built' if built else 'cached'} {args.precision} engine for {onnx_path.name} in {time.perf_counter() - t0:.1f} s: {path}")
    print(f"profile: {profile.to_dict()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
