"""Load generator for the Triton repository of ``python -m export.triton``: the clients of
``benchmarks.loadgen`` (aiohttp, N concurrent clients with one request in flight each, the
same synthetic clips and transcript), speaking KServe v2 to ``emotech`` instead of
``POST /v1/recognize``, so the two servers' numbers compare.

    python -m benchmarks.triton_loadgen --spawn --clients 32 --duration 30 --clip-seconds 3 \
        --out benchmarks/results/MACHINE/triton.json -- --instances 1 --max-delay-ms 5

``--spawn`` writes a repository for the bundled weights (arguments after ``--`` go to
``python -m export.triton --out``) into a temporary folder and serves it with
``python -m export.triton --serve`` on a free loopback port; ``--url`` targets a running
server. Each request is the clip as FP32 [1, N] at 16 kHz, the 16-bit WAV that
``benchmarks.loadgen`` sends decoded back to float (the same samples the other server
scores), in Triton's binary tensor extension, plus the text as BYTES [1, 1] when
``--text`` is given; the answer (``scores``, ``label``) comes back as JSON. Reported as
``benchmarks.loadgen`` reports: throughput, latency percentiles, errors, the batch sizes
Triton formed (from ``/v2/models/<model>/stats``, for ``emotech`` and its fused model) and
the resident memory of the server's process tree (tritonserver and its Python stubs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.loadgen import (
    Stats, add_load_args, check_load_args, cpu_report, free_port, machine, markdown, percentiles, speechlike, tree_cpu_seconds,
    tree_rss_mb, wav_bytes,
)
from runtime import cli
from runtime.spec import package_versions

MODEL = "emotech"
FUSED = "emotech_fused"
TRITON_PACKAGES = ("numpy", "onnxruntime", "nvidia-pytriton", "tritonclient", "aiohttp", "tokenizers")


def kserve_body(audio: np.ndarray, text: str | None) -> tuple[bytes, int]:
    """A KServe v2 infer request with binary tensors: ``(body, JSON header length)``."""
    a = np.ascontiguousarray(audio, dtype="<f4")
    raw = [a.tobytes()]
    inputs = [{"name": "audio", "shape": [1, a.size], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}}]
    if text is not None:
        t = text.encode()
        raw.append(len(t).to_bytes(4, "little") + t)  # a BYTES element: 4-byte length, then the bytes
        inputs.append({"name": "text", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw[-1])}})
    outputs = [{"name": "scores", "parameters": {"binary_data": False}}, {"name": "label", "parameters": {"binary_data": False}}]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    return header + b"".join(raw), len(header)


def same_samples(wav: bytes) -> np.ndarray:
    """The float samples runtime.serve decodes from ``wav`` (16-bit PCM, quantised)."""
    from runtime.audio import decode, to_mono_float

    samples, _ = decode(wav)
    return to_mono_float(samples)


async def client(session, url: str, payloads: list[tuple[bytes, int]], stop_at: float, budget: list[int], stats: Stats,
                 offset: int) -> None:
    import aiohttp

    i = offset
    while time.monotonic() < stop_at and budget[0] > 0:
        budget[0] -= 1
        body, header_len = payloads[i % len(payloads)]
        i += 1
        headers = {"Inference-Header-Content-Length": str(header_len), "Content-Type": "application/octet-stream"}
        start = time.perf_counter()
        try:
            async with session.post(f"{url}/v2/models/{MODEL}/infer", data=body, headers=headers) as r:
                await r.read()
                elapsed = time.perf_counter() - start
                if r.status == 200:
                    stats.latencies.append(elapsed)
                elif r.status == 503:  # the queue is full (max_queue_size): a deliberate refusal
                    stats.rejected_503 += 1
                    await asyncio.sleep(1.0)
                else:
                    stats.error(f"http_{r.status}")
        except asyncio.TimeoutError:
            stats.error("client_timeout")
        except aiohttp.ClientError as e:
            stats.error(type(e).__name__)


async def phase(url: str, clients: int, seconds: float, max_requests: int, payloads, timeout_s: float) -> tuple[Stats, float]:
    import aiohttp

    stats = Stats()
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        start = time.monotonic()
        budget = [max_requests]
        await asyncio.gather(*(client(session, url, payloads, start + seconds, budget, stats, k) for k in range(clients)))
        return stats, time.monotonic() - start


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def batch_counts(url: str, model: str) -> dict[int, int]:
    """Executions per batch size of ``model`` so far (Triton's statistics extension)."""
    stats = get_json(f"{url}/v2/models/{model}/stats")["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def histogram(before: dict[int, int], after: dict[int, int]) -> dict[str, int]:
    """Executions per batch size during the measured phase."""
    return {str(k): after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{MODEL}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout} s")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.triton_loadgen", __doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running Triton on loopback, e.g. http://127.0.0.1:8000")
    where.add_argument("--spawn", action="store_true", help="write a repository and serve it on a free loopback port")
    add_load_args(p)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here and a .md beside it (default: print only)")
    p.add_argument("--no-save", action="store_true", help="print the report only")
    p.add_argument("repo_args", nargs=argparse.REMAINDER, help="after --: arguments for python -m export.triton --out (with --spawn)")
    return p


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark; returns the report (the keys of ``benchmarks.loadgen``'s)."""
    check_load_args(args)
    info = machine()
    payloads = [kserve_body(same_samples(wav_bytes(speechlike(args.clip_seconds, seed=s))), args.text) for s in range(args.clips)]
    repo_args = [a for a in (args.repo_args or []) if a != "--"]
    proc, tmp, log_file = None, None, None
    if args.spawn:
        tmp = tempfile.TemporaryDirectory(prefix="emotech-triton-bench-")
        repo = Path(tmp.name) / "repo"
        subprocess.run([sys.executable, "-m", "export.triton", "--out", str(repo), "-q", *repo_args], check=True)
        port = free_port()
        log_file = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen([sys.executable, "-m", "export.triton", "--serve", str(repo), "--http-port", str(port)],
                                stdout=log_file, stderr=log_file, text=True)
        url = f"http://127.0.0.1:{port}"
    else:  # check_load_args has refused a --url off loopback
        url = args.url.rstrip("/")
    try:
        wait_ready(url, 300, proc)
        if args.warmup:
            asyncio.run(phase(url, args.clients, args.warmup, 1_000_000, payloads, args.timeout))
        rss_warm = tree_rss_mb(proc.pid) if proc else None
        before = {m: batch_counts(url, m) for m in (MODEL, FUSED)}
        cpu_before = tree_cpu_seconds(proc.pid) if proc else None
        stats, elapsed = asyncio.run(phase(url, args.clients, args.duration, args.max_requests, payloads, args.timeout))
        after = {m: batch_counts(url, m) for m in (MODEL, FUSED)}
        cpu_after = tree_cpu_seconds(proc.pid) if proc else None
        rss_after = tree_rss_mb(proc.pid) if proc else None
        config = get_json(f"{url}/v2/models/{MODEL}/config")
        fused_config = get_json(f"{url}/v2/models/{FUSED}/config")
    finally:
        if proc is not None:
            proc.terminate()  # SIGTERM: the launcher stops tritonserver and removes its backend folder
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if tmp is not None:
            tmp.cleanup()
    hist = histogram(before[MODEL], after[MODEL])
    seen = sum(int(k) * v for k, v in hist.items())  # requests, weighted by the batch each rode in
    ok = len(stats.latencies)
    params = {k: v.get("string_value") for k, v in (config.get("parameters") or {}).items()}
    return {
        "command": "python -m benchmarks.triton_loadgen " + " ".join(sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "versions": package_versions(TRITON_PACKAGES),
        "server": {
            "engine": f"triton {fused_config.get('backend') or fused_config.get('platform')} backend",
            "precision": params.get("precision"),
            "device": params.get("fused_device"),
            "instances": {m: sum(g.get("count", 1) for g in c.get("instance_group", [])) for m, c in ((MODEL, config), (FUSED, fused_config))},
            "server": {"max_batch": config.get("max_batch_size"),
                       "max_delay_ms": int(config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)) / 1000.0},
        },
        "duration_s": round(elapsed, 3),
        "requests_ok": ok,
        "throughput_rps": round(ok / elapsed, 3) if elapsed else 0.0,
        "audio_seconds_per_second": round(ok * args.clip_seconds / elapsed, 3) if elapsed else None,
        "latency_ms": {k: round(v, 2) for k, v in percentiles(stats.latencies).items()},
        "rejected_503": stats.rejected_503,
        "errors": stats.errors,
        "batch_size_histogram": hist,
        "fused_batch_size_histogram": histogram(before[FUSED], after[FUSED]),
        "mean_batch_size": round(sum(int(k) ** 2 * v for k, v in hist.items()) / seen, 2) if seen else None,
        "rss_mb": {"after_warmup": rss_warm or 0.0, "after_run": rss_after or 0.0,
                   "change_pct": round(100 * (rss_after - rss_warm) / rss_warm, 2) if rss_warm and rss_after else None,
                   "what": "tritonserver + Python-backend stubs"},
        **cpu_report(cpu_before, cpu_after, ok),
        "server_exit_code": proc.returncode if proc is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if not args.no_save and args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        md = markdown(report).replace("# Server load test", "# Triton load test", 1)
        md += f"\nFused-graph calls per batch size: {report['fused_batch_size_histogram']}.\n"
        args.out.with_suffix(".md").write_text(md)
        print(f"wrote {args.out} and {args.out.with_suffix('.md').name}", file=sys.stderr)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
