"""Load generator for ``python -m runtime.serve``: N concurrent clients for T seconds.

    python -m benchmarks.loadgen --spawn --clients 32 --duration 60 --clip-seconds 3 \
        --out benchmarks/results/MACHINE/serve.json -- --engine ort

``--spawn`` starts the server itself (arguments after ``--`` go to it) on a free
loopback port; ``--url`` targets one already running (loopback only). Each client
sends one ``POST /v1/recognize`` at a time (a WAV clip, optionally with text) and
sends the next as soon as the answer arrives. A warm-up phase runs first and is not
counted. Reported: throughput, latency p50/p90/p99/min/max, errors by kind, the
server's batch sizes and resident memory after warm-up and after the run (from its
``/metrics``), plus the machine and versions. Runs are bounded by ``--duration`` and
``--max-requests``; a 503 from the server counts as a deliberate refusal, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from runtime import cli
from runtime.spec import package_versions

# ------------------------------------------------------------------ test signals

VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480))  # F1-F3 of /a i u e/, Hz
FORMANT_BW = (80.0, 90.0, 120.0)  # Hz


def _resonance(f: np.ndarray, formant: np.ndarray, bw: float, sr: int) -> np.ndarray:
    """Frequency response of a two-pole resonator at ``f`` (complex)."""
    r = np.exp(-np.pi * bw / sr)
    z = np.exp(-2j * np.pi * f / sr)
    return (1 - r) / (1 - 2 * r * np.cos(2 * np.pi * formant / sr) * z + r * r * z * z)


def speechlike(seconds: float, seed: int = 0, sr: int = 16000, level: float = 0.3) -> np.ndarray:
    """A synthetic voiced utterance: a harmonic source with a gliding pitch through
    vowel formants that change every 200 ms, with a 4 Hz syllable envelope.

    Silero VAD scores it as speech (>= 0.5) in most 32-ms windows, unlike tones or
    noise, so it stands in for speech in tests and load runs without shipping
    recordings. Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f0 = float(rng.uniform(110, 200))
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1.0, 2.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    seg = int(0.2 * sr)
    hop = 16  # the filter response changes slowly: evaluate it every 1 ms and hold it
    grid = np.arange(0, n, hop)
    formants = np.array(VOWELS, dtype=np.float64)[(grid // seg) % len(VOWELS)]
    y = np.zeros(n)
    for k in range(1, 40):
        if k * f0 * 1.3 >= sr / 2:
            break
        h = sum(_resonance(k * pitch[grid], formants[:, j], FORMANT_BW[j], sr) for j in range(3))
        gain, shift = np.repeat(np.abs(h) / k, hop)[:n], np.repeat(np.angle(h), hop)[:n]
        y += gain * np.sin(k * phase + shift)
    env = np.clip(0.75 * (1 - np.cos(2 * np.pi * 4 * t)), 0, 1)
    y = y * env
    y += 0.003 * np.abs(y).max() * rng.standard_normal(n)
    return (level * y / max(np.abs(y).max(), 1e-9)).astype(np.float32)


def wav_bytes(audio: np.ndarray, sr: int = 16000) -> bytes:
    """16-bit PCM WAV encoding of float audio."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ------------------------------------------------------------------ the run


@dataclass
class Stats:
    """What the clients saw in one phase."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    rejected_503: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def client(session, url: str, payloads: list[tuple[bytes, str | None]], stop_at: float, budget: list[int],
                 stats: Stats, offset: int) -> None:
    import aiohttp

    i = offset
    while time.monotonic() < stop_at and budget[0] > 0:
        budget[0] -= 1
        audio, text = payloads[i % len(payloads)]
        i += 1
        form = aiohttp.FormData()
        form.add_field("audio", audio, filename="clip.wav", content_type="audio/wav")
        if text is not None:
            form.add_field("text", text)
        start = time.perf_counter()
        try:
            async with session.post(url + "/v1/recognize", data=form) as r:
                body = await r.read()
                elapsed = time.perf_counter() - start
                if r.status == 200:
                    stats.latencies.append(elapsed)
                    stats.batch_sizes.append(int(json.loads(body).get("batch_size", 0)))
                elif r.status == 503:
                    stats.rejected_503 += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                else:
                    stats.error(f"http_{r.status}")
        except asyncio.TimeoutError:
            stats.error("client_timeout")
        except aiohttp.ClientError as e:
            stats.error(type(e).__name__)


async def phase(url: str, clients: int, seconds: float, max_requests: int, payloads, timeout_s: float,
                headers: dict[str, str]) -> tuple[Stats, float]:
    import aiohttp

    stats = Stats()
    conn = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as session:
        start = time.monotonic()
        budget = [max_requests]
        await asyncio.gather(*(client(session, url, payloads, start + seconds, budget, stats, k) for k in range(clients)))
        return stats, time.monotonic() - start


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000.0
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean())}


def scrape(url: str, headers: dict[str, str]) -> dict[str, float]:
    """Unlabelled and labelled samples of the server's /metrics, by full name."""
    import urllib.request

    req = urllib.request.Request(url + "/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def batch_histogram(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Engine calls per batch-size bucket during the measured phase (non-cumulative)."""
    out, prev = {}, 0.0
    keys = [k for k in after if k.startswith("emotech_batch_size_bucket")]
    for k in sorted(keys, key=lambda k: float(re.search(r'le="([^"]+)"', k).group(1).replace("+Inf", "inf"))):
        cum = after[k] - before.get(k, 0.0)
        out[re.search(r'le="([^"]+)"', k).group(1)] = int(cum - prev)
        prev = cum
    return out


def wait_ready(url: str, headers: dict[str, str], timeout: float, proc: subprocess.Popen | None) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/readyz", headers=headers), timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout} s")


SERVER_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "aiohttp", "soundfile", "soxr", "tokenizers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    """The machine record shared with the other benchmarks (``benchmarks.machine``)."""
    try:
        from benchmarks.machine import machine_info
    except ImportError:  # psutil (the [dev] extra) missing: the essentials only
        return {"platform": platform.platform(), "cpu": {"model": platform.processor(), "logical_cores": os.cpu_count()}}
    return machine_info()


def default_out(info: dict) -> Path:
    from benchmarks.machine import machine_slug

    return Path(__file__).resolve().parent / "results" / machine_slug(info) / "serve.json"


def add_load_args(p: argparse.ArgumentParser) -> None:
    """The load's shape, shared with ``benchmarks.triton_loadgen``: clients, phases, clips."""
    p.add_argument("--clients", type=int, default=32, help="concurrent clients, one request in flight each")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the measured phase")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of unmeasured load first")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="stop the measured phase after this many requests")
    p.add_argument("--clip-seconds", type=float, default=3.0, help="length of each synthetic clip")
    p.add_argument("--clips", type=int, default=16, help="distinct synthetic clips to cycle through")
    p.add_argument("--text", default=None, help="transcript sent with every clip")
    p.add_argument("--timeout", type=float, default=60.0, help="client-side timeout per request, seconds")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.loadgen", __doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8080")
    where.add_argument("--spawn", action="store_true", help="start `python -m runtime.serve` on a free loopback port")
    add_load_args(p)
    p.add_argument("--audio", nargs="*", default=None, help="audio files to send instead of synthetic clips")
    p.add_argument("--api-key", default=None, help="bearer key of the server; none: $EMOTECH_API_KEY if set")
    p.add_argument("--out", type=Path, default=None,
                   help="write the JSON report here and a .md beside it (default: benchmarks/results/<machine>/serve.json)")
    p.add_argument("--no-save", action="store_true", help="print the report only")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="after --: arguments for runtime.serve (with --spawn)")
    return p


def check_load_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for a load ``add_load_args`` cannot run, or a ``--url`` off loopback
    (the load generators only ever target this machine); shared with ``benchmarks.triton_loadgen``."""
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.max_requests < 1:
        raise ValueError("need --clients >= 1, --duration > 0, --warmup >= 0, --max-requests >= 1")
    if args.url:
        host = urlparse(args.url).hostname or ""
        from runtime.server.limits import is_loopback

        if not is_loopback(host):
            raise ValueError(f"--url must be a loopback address (127.0.0.1, ::1, localhost), got {host!r}")


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark; returns the report."""
    check_load_args(args)
    info = machine()  # before the load: its loadavg_start shows whether the machine was idle
    key = args.api_key or os.environ.get("EMOTECH_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if args.audio:
        payloads = [(Path(f).read_bytes(), args.text) for f in args.audio]
    else:
        payloads = [(wav_bytes(speechlike(args.clip_seconds, seed=s)), args.text) for s in range(args.clips)]
    proc = None
    server_args = [a for a in (args.server_args or []) if a != "--"]
    if args.spawn:
        port = free_port()
        cmd = [sys.executable, "-m", "runtime.serve", "--host", "127.0.0.1", "--port", str(port), *server_args]
        log_file = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server must never block on it
        proc = subprocess.Popen(cmd, stderr=log_file, stdout=log_file, text=True)
        url = f"http://127.0.0.1:{port}"
    else:
        url = args.url.rstrip("/")
    try:
        try:
            wait_ready(url, headers, 300, proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {server_tail(log_file)}") from e
        if args.warmup:
            asyncio.run(phase(url, args.clients, args.warmup, 1_000_000, payloads, args.timeout, headers))
        before = scrape(url, headers)
        cpu_before = tree_cpu_seconds(proc.pid) if proc is not None else None
        stats, elapsed = asyncio.run(phase(url, args.clients, args.duration, args.max_requests, payloads, args.timeout, headers))
        after = scrape(url, headers)
        cpu_after = tree_cpu_seconds(proc.pid) if proc is not None else None
        import urllib.request

        with urllib.request.urlopen(urllib.request.Request(url + "/v1/model", headers=headers), timeout=10) as r:
            model = json.loads(r.read())
    finally:
        if proc is not None:
            proc.terminate()  # SIGTERM: the server drains and exits 0
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rss_warm = before.get("process_resident_memory_bytes", 0.0)
    rss_after = after.get("process_resident_memory_bytes", 0.0)
    ok = len(stats.latencies)
    report = {
        "command": "python -m benchmarks.loadgen " + " ".join(sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"},
        "machine": info,
        "versions": package_versions(SERVER_PACKAGES),
        "server": {k: model.get(k) for k in ("engine", "precision", "device", "providers", "onnxruntime", "model_dir", "server")},
        "duration_s": round(elapsed, 3),
        "requests_ok": ok,
        "throughput_rps": round(ok / elapsed, 3) if elapsed else 0.0,
        "audio_seconds_per_second": round(ok * args.clip_seconds / elapsed, 3) if elapsed and not args.audio else None,
        "latency_ms": {k: round(v, 2) for k, v in percentiles(stats.latencies).items()},
        "rejected_503": stats.rejected_503,
        "errors": stats.errors,
        "batch_size_histogram": batch_histogram(before, after),
        "mean_batch_size": round(float(np.mean(stats.batch_sizes)), 2) if stats.batch_sizes else None,
        "rss_mb": {"after_warmup": round(rss_warm / 2**20, 1), "after_run": round(rss_after / 2**20, 1),
                   "change_pct": round(100 * (rss_after - rss_warm) / rss_warm, 2) if rss_warm else None},
        **cpu_report(cpu_before, cpu_after, ok),
        "server_exit_code": proc.returncode if proc is not None else None,
    }
    if proc is not None:
        report["server_log_tail"] = server_tail(log_file).splitlines()
    return report


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, s) used so far by ``pid`` and its live descendants (None
    without psutil). Per request, it depends far less on what else the machine runs than
    throughput or latency do."""
    try:
        import psutil
    except ImportError:
        return None
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def tree_rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants, MB (None without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return round(total / 2**20, 1)


def cpu_report(before: float | None, after: float | None, requests: int) -> dict:
    """The server's CPU time during the measured phase, in all and per answered request."""
    if before is None or after is None:
        return {}
    used = after - before
    return {"server_cpu_s": round(used, 3), "cpu_ms_per_request": round(1000 * used / requests, 2) if requests else None}


def server_tail(log_file, lines: int = 5) -> str:
    log_file.flush()
    log_file.seek(0)
    return "\n".join(log_file.read().strip().splitlines()[-lines:])


def markdown(report: dict) -> str:
    lat, rss = report["latency_ms"], report["rss_mb"]
    cfg, srv = report["config"], report["server"]
    lines = [
        "# Server load test", "",
        f"`{report['command']}`", "",
        f"Machine: {report['machine']['cpu']['model']} ({report['machine']['cpu']['logical_cores']} CPUs), "
        f"{report['machine']['platform']}. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        f"Server: engine {srv.get('engine')} ({srv.get('device')}, {srv.get('precision')}), "
        f"max_batch {(srv.get('server') or {}).get('max_batch')}, max_delay_ms {(srv.get('server') or {}).get('max_delay_ms')}.", "",
        "| clients | clip | duration | requests | throughput | p50 | p90 | p99 | min | max | 503s | errors | RSS warm → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {cfg['clients']} | {cfg['clip_seconds']} s | {report['duration_s']:.1f} s | {report['requests_ok']} | "
        f"{report['throughput_rps']:.1f} req/s | {lat.get('p50', 0):.0f} ms | {lat.get('p90', 0):.0f} ms | {lat.get('p99', 0):.0f} ms | "
        f"{lat.get('min', 0):.0f} ms | {lat.get('max', 0):.0f} ms | {report['rejected_503']} | {sum(report['errors'].values())} | "
        f"{rss['after_warmup']} → {rss['after_run']} MB ({rss['change_pct']:+.1f} %) |", "",
        *([f"Server CPU time: {report['server_cpu_s']} s, {report['cpu_ms_per_request']} ms per request.", ""]
          if report.get("server_cpu_s") is not None else []),
        f"Batch sizes (engine calls per bucket upper bound): {report['batch_size_histogram']}; mean batch seen by a request "
        f"{report['mean_batch_size']}.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, RuntimeError, TimeoutError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if not args.no_save:
        out = args.out or default_out(report["machine"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".md").write_text(markdown(report))
        print(f"wrote {out} and {out.with_suffix('.md').name}", file=sys.stderr)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
