"""Command line: the emotion server for robots and kiosks.

    python -m runtime.serve                       # bundled weights, best engine, 127.0.0.1:8080
    python -m runtime.serve --engine ort --port 9000 --max-batch 16 --max-delay-ms 10
    EMOTECH_API_KEY=... python -m runtime.serve --host 0.0.0.0   # or --api-key-file /etc/emotech/key
    python -m runtime.serve --asr pocketsphinx --vad-min-silence-ms 500   # then open http://127.0.0.1:8080/

Endpoints: POST /v1/recognize, WS /v1/stream, GET /v1/model, /healthz, /readyz,
/metrics, /openapi.json (see runtime/server/openapi.json), and the live demo page at /
(docs/demo.md). SIGTERM or Ctrl-C stops
accepting connections, finishes the requests already received and exits 0.
Exit codes: 0 after a clean shutdown, 2 for a usage, model or engine error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from runtime import cli
from runtime.asr import add_asr_argument
from runtime.errors import EmotionError
from runtime.recognizer import EmotionRecognizer

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m runtime.serve", "Dynamic-batching HTTP + WebSocket emotion server.")
    cli.add_model_args(p)
    cli.add_fusion_args(p)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; a non-loopback address needs --api-key")
    p.add_argument("--port", type=int, default=8080, help="0: any free port")
    # Read from the environment in main(), never as a default: --help would print it.
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /healthz; none: $EMOTECH_API_KEY if set "
                        "(other users can read a key given here in ps: prefer $EMOTECH_API_KEY or --api-key-file)")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--max-batch", type=int, default=32, help="items per engine call")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-queue", type=int, default=256, help="queued items before answering 503")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout (504 after it)")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="request body limit (413 above it)")
    p.add_argument("--max-audio-seconds", type=float, default=None, help="none: the model's maximum")
    p.add_argument("--max-text-chars", type=int, default=None, help="none: the model's maximum")
    p.add_argument("--decode-threads", type=int, default=2, help="threads decoding request audio (the streams' VAD has its own)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0, help="on SIGTERM, how long in-flight requests may take")
    p.add_argument("--no-stream", action="store_true", help="disable /v1/stream (no VAD model loaded)")
    add_stream_arguments(p)
    add_asr_argument(p)
    p.add_argument("--no-warmup", action="store_true", help="ready at once, without the warm-up batches")
    cli.add_logging_args(p)
    from runtime.server.limits import add_limit_args  # the server's connection, stream and access options

    add_limit_args(p)
    return p


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    """/v1/stream's segmentation and smoothing options (runtime.server.vad, .smoothing)."""
    from runtime.server.smoothing import DEFAULT_HALF_LIFE_S
    from runtime.server.vad import VadConfig

    vad = VadConfig()
    p.add_argument("--vad-threshold", type=float, default=vad.threshold,
                   help="speech probability that starts an utterance, in (0, 1); raise it in a noisy room")
    p.add_argument("--vad-min-silence-ms", type=int, default=vad.min_silence_ms,
                   help="silence that ends an utterance, 0-10000 ms; raise it if pauses split sentences")
    p.add_argument("--vad-pad-ms", type=int, default=vad.pad_ms, help="audio kept before and after each utterance, 0-1000 ms")
    p.add_argument("--smoothing-half-life-s", type=float, default=DEFAULT_HALF_LIFE_S,
                   help="half-life of the streamed scores' decaying mean over recent utterances, 0-3600 s (0: off)")
    p.add_argument("--no-demo", action="store_true", help="do not serve the live demo page at /")


def vad_config(args: argparse.Namespace):
    """The ``VadConfig`` of the --vad-* options; ``ValueError`` names the option."""
    from runtime.server.vad import VadConfig

    try:
        return VadConfig(threshold=args.vad_threshold, min_silence_ms=args.vad_min_silence_ms, pad_ms=args.vad_pad_ms)
    except ValueError as e:
        raise ValueError(f"--vad-threshold / --vad-min-silence-ms / --vad-pad-ms: {e}") from e


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args, default=logging.INFO)
    try:
        from runtime.server.app import create_app
        from runtime.server.limits import ServeConfig, is_loopback, limit_config, resolve_api_key
        from runtime.server.runner import serve
        from runtime.server.vad import SileroVad
    except ImportError as e:
        print(f"error: the server needs the [serve] extra: pip install 'emotech[serve]' ({e})", file=sys.stderr)
        return 2
    try:
        if not 0 < args.max_body_mb < 1024 * 1024:  # NaN fails too
            raise ValueError(f"--max-body-mb must be > 0 and below 1048576, got {args.max_body_mb}")
        if args.threads is not None and args.threads < 0:
            raise ValueError(f"--threads must be >= 1 (0: one per core), got {args.threads}")
        config = ServeConfig(
            host=args.host, port=args.port, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
            timeout_s=args.timeout_s, max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_audio_seconds=args.max_audio_seconds,
            max_text_chars=args.max_text_chars, api_key=resolve_api_key(args.api_key, args.api_key_file), decode_threads=args.decode_threads,
            drain_timeout_s=args.drain_timeout_s, smoothing_half_life_s=args.smoothing_half_life_s, **limit_config(args))
        if not is_loopback(config.host) and not config.api_key and not args.insecure_no_auth:
            raise ValueError(f"--host {config.host} exposes the server beyond this machine: give --api-key (or --insecure-no-auth)")
        vad_options = vad_config(args)
        rec = EmotionRecognizer.load(args.model_dir, engine=args.engine, precision=args.precision, device=args.device,
                                     max_batch=args.max_batch, asr=args.asr, audio_weight=args.audio_weight,
                                     **({"threads": args.threads} if args.threads and args.engine in ("auto", "ort") else {}))
    except (EmotionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        vad = None if args.no_stream else SileroVad()
        app = create_app(rec, config, vad=vad, vad_config=vad_options, warm_up=not args.no_warmup, demo_page=not args.no_demo)
    except (EmotionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        rec.close()
        return 2
    info = rec.engine.describe()
    logger.info("model %s (%s): engine %s, precision %s, device %s", rec.spec.raw.get("name", "?"), rec.spec.root,
             info.get("engine"), info.get("precision"), info.get("device"))
    try:
        asyncio.run(serve(app, config.host, config.port, config.drain_timeout_s))
    except OSError as e:  # e.g. the port is taken
        print(f"error: cannot listen on {config.host}:{config.port}: {e}", file=sys.stderr)
        return 2
    finally:
        rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
