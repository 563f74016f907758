"""A Triton Inference Server model repository for a model folder, and a launcher for it.

    python -m export.triton --model-dir weights/emotech --out triton_repo          # CPU: Python backend
    python -m export.triton --serve triton_repo --http-port 8000 [--grpc-port 8001 --metrics-port 8002]
    python -m export.triton --out repo --backend onnxruntime --instances 2         # GPU box, Triton's ORT backend
    python -m export.triton --out repo --backend tensorrt                          # on the target: builds model.plan

The repository holds two models:

- ``emotech`` (Python backend, BLS; the one clients call): inputs ``audio`` (FP32 [-1],
  mono at the model's rate, 16 kHz; optional) and ``text`` (BYTES [1]; empty or absent: no
  transcript), both with the batch dimension first; outputs ``scores`` (FP32 [num_classes],
  calibrated, in ``spec.json``'s label order, names in ``labels.txt``) and ``label``
  (BYTES [1]). Its dynamic batcher collects requests of any audio length (ragged) for up
  to ``--max-delay-ms``; it validates, trims and tokenises them with ``runtime`` code, calls
  ``emotech_fused`` once per padded batch, and applies the per-mode calibration.
- ``emotech_fused``: the fused ONNX graph, one padded batch per request. ``--backend
  python`` runs it on ONNX Runtime inside Triton's Python backend (what the
  ``nvidia-pytriton`` wheel's server can run, CPU only); ``onnxruntime`` and ``tensorrt``
  write configs for Triton's own backends on a GPU box (the official tritonserver image).

``--serve`` starts the ``tritonserver`` binary of the ``[triton]`` extra (``export.triton_serve``).
See docs/triton.md for the request format, the batching knobs and measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime import cli
from runtime.engines.base import FUSED_INPUTS, OUTPUT, PRECISIONS
from runtime.errors import EmotionError
from runtime.spec import SPEC_FILE, ModelSpec, load_spec
from runtime.triton_backend import DEFAULT_FUSED_MODEL, MODEL_SUBDIR

logger = logging.getLogger(__name__)

BACKENDS = ("python", "onnxruntime", "tensorrt")
MODEL_NAME = "emotech"
FUSED_MODEL = DEFAULT_FUSED_MODEL
LABELS_FILE = "labels.txt"
# Triton data types of the fused graph's inputs (runtime.engines.base.FUSED_INPUTS)
TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}

# The model.py Triton loads for each Python model: the class comes from the installed
# emotech package. EMOTECH_SOURCE_ROOT (set by ``--serve``) puts the launcher's own source
# tree first, since Triton's Python stub ignores PYTHONPATH.
MODEL_PY = '''"""Triton Python-backend entry point written by `python -m export.triton`: {cls} from the emotech package."""

import os
import sys

_source = os.environ.get("EMOTECH_SOURCE_ROOT")
if _source and _source not in sys.path:
    sys.path.insert(0, _source)

from runtime.triton_backend import {cls} as TritonPythonModel  # noqa: E402,F401
'''


@dataclass(frozen=True)
class RepoOptions:
    """How the repository batches and where its fused graph runs."""

    backend: str = "python"  # emotech_fused's backend: python (ONNX Runtime on CPU), onnxruntime or tensorrt (GPU)
    precision: str = "fp32"  # which ONNX variant of the fused graph (spec.json's graphs)
    instances: int = 1  # model instances of emotech and of emotech_fused each
    max_batch: int = 32  # items per batch (Triton's max_batch_size of both models)
    max_delay_ms: float = 5.0  # how long emotech's dynamic batcher waits for a batch to fill
    max_queue: int = 256  # requests waiting in emotech's queue; beyond it Triton answers UNAVAILABLE
    threads: int = 0  # ONNX Runtime intra-op threads per emotech_fused instance (python backend); 0: one per core
    build_plan: bool = True  # tensorrt: build model.plan here (needs TensorRT and the target GPU)

    def __post_init__(self) -> None:
        validate_options(self)


def validate_options(o: RepoOptions) -> None:
    """Raise ``ValueError`` naming the option that is out of range."""
    if o.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {o.backend!r}")
    if o.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {o.precision!r}")
    if not 1 <= o.instances <= 64:
        raise ValueError(f"instances must be in [1, 64], got {o.instances}")
    if not 1 <= o.max_batch <= 1024:
        raise ValueError(f"max_batch must be in [1, 1024], got {o.max_batch}")
    if not 0 <= o.max_delay_ms <= 10_000:  # NaN fails too
        raise ValueError(f"max_delay_ms must be in [0, 10000], got {o.max_delay_ms}")
    if o.max_queue < 1:
        raise ValueError(f"max_queue must be >= 1, got {o.max_queue}")
    if o.threads < 0:
        raise ValueError(f"threads must be >= 0 (0: one per core), got {o.threads}")


# ----------------------------------------------------------------------------- configs


def _params(values: dict[str, object]) -> list[str]:
    return [f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()]


def emotech_config(spec: ModelSpec, o: RepoOptions) -> str:
    """config.pbtxt of the model clients call."""
    fe = spec.frontend
    on_gpu = o.backend != "python"
    # a TensorRT plan takes no batch shorter than its profile's minimums: emotech pads up to them
    profile = trt_profile(spec, o) if o.backend == "tensorrt" else None
    min_samples, min_tokens = (profile.samples[0], profile.tokens[0]) if profile else (0, 0)
    lines = [
        f'name: "{MODEL_NAME}"',
        'backend: "python"',
        f"max_batch_size: {o.max_batch}",
        "input [",
        '  { name: "audio" data_type: TYPE_FP32 dims: [ -1 ] optional: true allow_ragged_batch: true },',
        '  { name: "text" data_type: TYPE_STRING dims: [ 1 ] optional: true }',
        "]",
        "output [",
        f'  {{ name: "scores" data_type: TYPE_FP32 dims: [ {len(spec.labels)} ] label_filename: "{LABELS_FILE}" }},',
        '  { name: "label" data_type: TYPE_STRING dims: [ 1 ] }',
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {round(o.max_delay_ms * 1000)}",
        f"  default_queue_policy {{ max_queue_size: {o.max_queue} }}",
        "}",
        f"instance_group [ {{ kind: KIND_CPU count: {o.instances} }} ]",
        *_params({
            "fused_model": FUSED_MODEL,
            "fused_device": "cuda" if on_gpu else "cpu",
            "precision": o.precision,
            "min_audio_samples": min_samples,
            "min_tokens": min_tokens,
            "max_audio_seconds": f"{fe.max_audio_seconds:g}",
            "max_text_chars": spec.max_text_chars,
        }),
    ]
    return "\n".join(lines) + "\n"


def fused_config(spec: ModelSpec, o: RepoOptions) -> str:
    """config.pbtxt of ``emotech_fused`` for ``o.backend``. No dynamic batcher: every request
    it gets from ``emotech`` is already a padded batch."""
    head = {
        "python": ['backend: "python"'],
        "onnxruntime": ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"'],
        "tensorrt": ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"'],
    }[o.backend]
    inputs = []
    for name, (dtype, rank) in FUSED_INPUTS.items():
        shape = "dims: [ -1 ]" if rank == 2 else "dims: [ 1 ] reshape: { shape: [ ] }"  # batch dimension excluded
        inputs.append(f'  {{ name: "{name}" data_type: {TRITON_TYPES[dtype.__name__]} {shape} }}')
    kind = "KIND_CPU" if o.backend == "python" else "KIND_GPU"
    lines = [
        f'name: "{FUSED_MODEL}"',
        *head,
        f"max_batch_size: {o.max_batch}",
        "input [",
        ",\n".join(inputs),
        "]",
        f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {len(spec.labels)} ] }} ]',
        f"instance_group [ {{ kind: {kind} count: {o.instances} }} ]",
    ]
    if o.backend == "python":
        lines += _params({"precision": o.precision, "intra_op_threads": o.threads})
    return "\n".join(lines) + "\n"


def trt_profile(spec: ModelSpec, o: RepoOptions):
    """The TensorRT optimisation profile of model.plan: batches up to ``max_batch``, audio
    and tokens over the whole range the front-end and the tokenizer accept."""
    from runtime.trt_cache import Profile

    return Profile.for_spec(spec, batch=(1, min(8, o.max_batch), o.max_batch))


# -------------------------------------------------------------------------- repository


def copy_model_folder(spec: ModelSpec, dest: Path, graphs: tuple[str, ...] = ()) -> None:
    """A pruned copy of the model folder: spec.json, the tokenizer and ``graphs``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (SPEC_FILE, spec.tokenizer_file, *graphs):
        shutil.copy2(spec.root / name, dest / Path(name).name)


def write_repository(model_dir: str | Path | None, out: str | Path, options: RepoOptions | None = None, force: bool = False) -> Path:
    """Write the two models of the Triton repository ``out`` for the model folder
    ``model_dir`` (None: the bundled weights); returns ``out``.

    Raises:
        ModelFolderError: the model folder is incomplete or fails its hash check.
        EngineUnavailableError: ``tensorrt`` with ``build_plan`` where TensorRT cannot run.
        FileExistsError: ``out`` already holds these models and ``force`` is not set.
    """
    o = options or RepoOptions()
    spec = load_spec(model_dir)
    graph = spec.graph_file("fused", o.precision)  # raises when the folder lacks the variant
    out = Path(out)
    models = [out / MODEL_NAME, out / FUSED_MODEL]
    present = [m for m in models if m.exists()]
    if present and not force:
        raise FileExistsError(f"{', '.join(map(str, present))} already exist; pass --force to replace them")
    plan = build_plan(spec, graph, o) if o.backend == "tensorrt" and o.build_plan else None  # before touching out
    for m in present:
        shutil.rmtree(m)

    front = out / MODEL_NAME
    (front / "1").mkdir(parents=True)
    (front / "config.pbtxt").write_text(emotech_config(spec, o))
    (front / LABELS_FILE).write_text("\n".join(spec.labels) + "\n")
    (front / "1" / "model.py").write_text(MODEL_PY.format(cls="EmotechModel"))
    copy_model_folder(spec, front / "1" / MODEL_SUBDIR)

    fused = out / FUSED_MODEL
    (fused / "1").mkdir(parents=True)
    (fused / "config.pbtxt").write_text(fused_config(spec, o))
    if o.backend == "python":
        (fused / "1" / "model.py").write_text(MODEL_PY.format(cls="FusedModel"))
        copy_model_folder(spec, fused / "1" / MODEL_SUBDIR, graphs=(graph.name,))
    elif o.backend == "onnxruntime":
        shutil.copy2(graph, fused / "1" / "model.onnx")
    elif plan is not None:
        (fused / "1" / "model.plan").write_bytes(plan)
    logger.info("wrote %s: %s (python, BLS) -> %s (%s, %s)", out, MODEL_NAME, FUSED_MODEL, o.backend, o.precision)
    if o.backend == "tensorrt" and plan is None:
        logger.warning("%s has no model.plan: build it on the GPU that will serve it, with the TensorRT of its Triton "
                       "release: python -m export.triton --backend tensorrt --out %s --force ...", fused / "1", out)
    return out


def build_plan(spec: ModelSpec, graph: Path, o: RepoOptions) -> bytes:
    """A serialised TensorRT engine of ``graph`` for ``trt_profile``, built (or read from
    the engine cache ``export.trt`` uses) on this machine's GPU."""
    from runtime.engines.trt import build_or_load

    payload, path, built = build_or_load(graph, o.precision, trt_profile(spec, o))
    logger.info("%s TensorRT plan %s", "built" if built else "cached", path)
    return payload


# ----------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m export.triton", __doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, metavar="REPO", help="write the model repository here")
    what.add_argument("--serve", type=Path, metavar="REPO", help="start tritonserver on this model repository")
    cli.add_model_args(p, engine=False, device=False)
    gen = p.add_argument_group("repository (with --out)")
    gen.add_argument("--backend", default="python", choices=BACKENDS,
                     help="where emotech_fused runs: python (ONNX Runtime in Triton's Python backend, CPU), onnxruntime or tensorrt (GPU)")
    gen.add_argument("--instances", type=int, default=1, help="instances of each model")
    gen.add_argument("--max-batch", type=int, default=32, help="items per batch (max_batch_size)")
    gen.add_argument("--max-delay-ms", type=float, default=5.0, help="how long a batch waits to fill (the dynamic batcher's queue delay)")
    gen.add_argument("--max-queue", type=int, default=256, help="queued requests before Triton refuses new ones")
    gen.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per emotech_fused instance (python backend); 0: one per core")
    gen.add_argument("--skip-plan", action="store_true", help="tensorrt: write the configs without building model.plan")
    gen.add_argument("--force", action="store_true", help="replace the models already in REPO")
    srv = p.add_argument_group("server (with --serve)")
    srv.add_argument("--host", default="127.0.0.1", help="address of the HTTP, gRPC and metrics endpoints")
    srv.add_argument("--http-port", type=int, default=8000)
    srv.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: gRPC off)")
    srv.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (default: metrics off)")
    srv.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host (Triton has no authentication)")
    srv.add_argument("--exit-timeout-s", type=int, default=30, help="on SIGTERM, how long in-flight requests and open connections may take")
    srv.add_argument("--log-verbose", type=int, default=0, help="tritonserver's --log-verbose level")
    cli.add_logging_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args, default=logging.INFO)
    if args.serve is not None:
        from export.triton_serve import ServeOptions, TritonUnavailableError, serve

        try:
            options = ServeOptions(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                                   exit_timeout_s=args.exit_timeout_s, log_verbose=args.log_verbose, insecure_no_auth=args.insecure_no_auth)
            return serve(args.serve, options)
        except (TritonUnavailableError, ValueError, FileNotFoundError) as e:
            return cli.fail(str(e))
    try:
        options = RepoOptions(backend=args.backend, precision=args.precision, instances=args.instances, max_batch=args.max_batch,
                              max_delay_ms=args.max_delay_ms, max_queue=args.max_queue, threads=args.threads,
                              build_plan=not args.skip_plan)
        out = write_repository(args.model_dir, args.out, options, force=args.force)
    except (EmotionError, ValueError, FileExistsError) as e:
        return cli.fail(str(e))
    print(f"wrote {out} ({', '.join(f'{k}={v}' for k, v in dataclasses.asdict(options).items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
