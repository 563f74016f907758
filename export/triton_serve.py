"""Start the ``tritonserver`` binary that the ``[triton]`` extra installs on a model repository.

    python -m export.triton --serve triton_repo --http-port 8000 --grpc-port 8001 --metrics-port 8002

The ``nvidia-pytriton`` wheel ships Triton Inference Server (``pytriton/tritonserver/bin/
tritonserver``, 2.51 in wheel 0.7.0) with its Python backend, a backend stub per Python
version, and the shared libraries they need (``nvidia_pytriton.libs``). Set-up done here:

- a backend folder in a temporary directory: the wheel's ``backends/python`` with the stub
  for the running Python copied beside ``libtriton_python.so`` (the wheel stays untouched);
- ``LD_LIBRARY_PATH``: the running interpreter's ``libpython`` (the stub links it by soname;
  the same build as the interpreter's extension modules), then the wheel's libraries;
- ``PATH``: the interpreter's folder first. The stub embeds Python in isolated mode (it
  ignores ``PYTHONPATH``) and finds its ``sys.prefix`` from the first ``python3`` on
  ``PATH``, so a virtual environment's site-packages are the stub's;
- ``EMOTECH_SOURCE_ROOT``: the folder holding this ``runtime`` package, which the
  repository's ``model.py`` files put first on ``sys.path`` (a source checkout runs its own code).

SIGTERM and SIGINT are passed on to the server, which stops accepting requests, lets
in-flight ones finish (``--exit-timeout-s``) and exits; then the temporary folder is removed.
Without a GPU the server logs NVML/DCGM warnings ("Failed to initialize NVML"); they are harmless.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class TritonUnavailableError(RuntimeError):
    """The tritonserver binary of the ``[triton]`` extra is not installed, or has no stub for this Python."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server's files."""

    binary: Path  # pytriton/tritonserver/bin/tritonserver
    python_backend: Path  # pytriton/tritonserver/backends/python (libtriton_python.so, triton_python_backend_utils.py)
    stub: Path  # python_backend_stubs/<major.minor>/triton_python_backend_stub of the running Python
    libs: Path  # nvidia_pytriton.libs: the wheel's shared libraries


@dataclass(frozen=True)
class ServeOptions:
    """Addresses and shutdown of the server."""

    host: str = "127.0.0.1"  # HTTP, gRPC and metrics address; loopback unless --insecure-no-auth
    http_port: int = 8000
    grpc_port: int | None = None  # None: gRPC off
    metrics_port: int | None = None  # None: Prometheus metrics off
    exit_timeout_s: int = 30  # on SIGTERM, how long in-flight requests may take
    log_verbose: int = 0  # tritonserver's --log-verbose
    insecure_no_auth: bool = False  # allow a non-loopback host: Triton has no authentication of its own

    def __post_init__(self) -> None:
        validate_serve_options(self)


def validate_serve_options(o: ServeOptions) -> None:
    """Raise ``ValueError`` naming the offending option."""
    from runtime.server.limits import is_loopback

    ports = [p for p in (o.http_port, o.grpc_port, o.metrics_port) if p is not None]
    bad = [p for p in ports if not 1 <= p <= 65535]
    if bad:
        raise ValueError(f"ports must be in [1, 65535], got {bad}")
    if len(set(ports)) != len(ports):
        raise ValueError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
    if o.exit_timeout_s < 0 or o.log_verbose < 0:
        raise ValueError("exit_timeout_s and log_verbose must be >= 0")
    if not is_loopback(o.host) and not o.insecure_no_auth:
        raise ValueError(f"--host {o.host} exposes Triton beyond this machine, and Triton has no authentication: put it behind "
                         "an authenticating proxy or a network policy, then pass --insecure-no-auth")


def find_triton(version: str | None = None) -> TritonInstall:
    """The server files of the installed ``nvidia-pytriton`` wheel, with the stub for Python
    ``version`` ("3.11"; None: the running one)."""
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise TritonUnavailableError("the Triton server is not installed: pip install 'emotech[triton]' (the nvidia-pytriton wheel, Linux only)")
    package = Path(spec.origin).parent
    server = package / "tritonserver"
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=server / "bin" / "tritonserver",
        python_backend=server / "backends" / "python",
        stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
    )
    for what, path in (("tritonserver binary", install.binary), ("Python backend", install.python_backend / "libtriton_python.so"),
                       ("shared libraries", install.libs)):
        if not path.exists():
            raise TritonUnavailableError(f"the nvidia-pytriton wheel at {package} has no {what} ({path}); reinstall it: pip install 'emotech[triton]'")
    if not install.stub.is_file():
        have = sorted(p.name for p in (server / "python_backend_stubs").iterdir() if p.is_dir())
        raise TritonUnavailableError(f"the nvidia-pytriton wheel has no Python-backend stub for Python {version} (it has {', '.join(have)})")
    return install


def prepare_backends(install: TritonInstall, dest: Path) -> Path:
    """A backend folder under ``dest``: the wheel's Python backend with the stub beside
    ``libtriton_python.so``; returns the folder to pass as ``--backend-directory``."""
    backends = dest / "backends"
    shutil.copytree(install.python_backend, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, backends / "python" / "triton_python_backend_stub")
    return backends


def libpython_dir() -> Path | None:
    """The folder of the running interpreter's shared ``libpython``, or None (a static build:
    the stub then loads the system's ``libpython3.X.so.1.0``, if any)."""
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and name and (Path(libdir) / name).is_file():
        return Path(libdir)
    return None


def server_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment (see the module docstring)."""
    import runtime

    env = dict(os.environ if base is None else base)
    libs = [str(p) for p in (libpython_dir(), install.libs) if p is not None]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), *filter(None, [env.get("PATH")])])
    env["EMOTECH_SOURCE_ROOT"] = str(Path(runtime.__file__).resolve().parent.parent)
    return env


def server_command(install: TritonInstall, repo: Path, backends: Path, o: ServeOptions) -> list[str]:
    """The tritonserver command line."""
    cmd = [
        str(install.binary),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        "--model-control-mode=none",
        "--disable-auto-complete-config",  # the written configs are complete; a typo is an error, not a guess
        "--strict-readiness=true",
        f"--exit-timeout-secs={o.exit_timeout_s}",
        f"--log-verbose={o.log_verbose}",
        f"--http-address={o.host}",
        f"--http-port={o.http_port}",
    ]
    cmd += [f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}"] if o.grpc_port is not None else ["--allow-grpc=false"]
    if o.metrics_port is not None:
        cmd += [f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}"]
    else:
        cmd += ["--allow-metrics=false"]
    return cmd


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send the server SIGTERM when the launcher dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(repo: str | Path, options: ServeOptions | None = None) -> int:
    """Run tritonserver on ``repo`` until it exits; returns its exit status (128 + N when
    a signal N ended it). SIGTERM/SIGINT received here are passed on to it."""
    o = options or ServeOptions()
    repo = Path(repo).resolve()
    if not repo.is_dir():
        raise FileNotFoundError(f"no model repository at {repo}: write one with python -m export.triton --out {repo}")
    install = find_triton()
    with tempfile.TemporaryDirectory(prefix="emotech-triton-") as tmp:
        backends = prepare_backends(install, Path(tmp))
        cmd = server_command(install, repo, backends, o)
        logger.info("starting %s", " ".join(cmd))
        # its own session: a terminal's Ctrl-C reaches it once, through the handler below
        proc = subprocess.Popen(cmd, env=server_env(install), start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads yet

        def forward(signum: int, _frame: object) -> None:
            logger.info("signal %d: stopping tritonserver (in-flight requests get up to %d s)", signum, o.exit_timeout_s)
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if proc.poll() is None:  # an exception here (not a signal): do not leave the server behind
                proc.terminate()
                proc.wait()
    logger.info("tritonserver exited with status %d", code)
    return 128 - code if code < 0 else code
