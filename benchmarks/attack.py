"""Hostile clients against ``python -m runtime.serve`` on loopback, each while an ordinary
client measures the latency it usually gets.

    python -m benchmarks.attack --spawn --seconds 10 --out benchmarks/results/MACHINE/attack.json

``--spawn`` starts the server (arguments after ``--`` go to it) on a free loopback port;
``--url`` targets one already running on loopback (``--pid`` then names its process, for
memory and descriptor readings). Phases, each ``--seconds`` long, in this order:

* ``baseline``: no attack.
* ``slowloris``: ``--slow`` connections, each sending a request head one header line per
  second, never finishing it; a connection the server closes is opened again.
* ``silent``: ``--slow`` connections that send nothing, reopened when closed.
* ``slow_body``: ``--slow // 4`` connections announcing a 10-MB body and sending 1 byte/s.
* ``junk_wav``: 4 clients posting a valid 9.6-MB WAV of 1.2 million empty JUNK chunks.
* ``nested_json``: 4 clients posting 9 MB of ``[[],[],...]``.
* ``malformed``: 2 clients cycling through malformed multipart part headers, bad
  ``Content-Encoding`` and 1001-field forms.
* ``stream_flood``: 30 WebSocket clients, each sending one 10.5-MB frame of speech-like
  audio (10,485,000 bytes, 328 s: just under the 10-MiB message limit the server had
  before frames were capped) then ``end`` (an unprotected server is still working on it
  long after).
* ``stream_load``: 30 WebSocket clients each sending 256-kB frames (8.2 s of speech-like
  audio) as fast as the server takes them: the most a stream may send.

The ordinary client runs in its own process (so the attackers' Python work does not
delay it): one ``POST /v1/recognize`` at a time, a 1-s clip with a transcript, each on a
new connection. Reported per phase: its latency percentiles and failures; the attack's
outcomes; the server's resident memory (sampled every 100 ms from ``/proc``: the peak in
the phase, and after 3 s of rest) and open file descriptors; and the server's 5xx answers
from ``/metrics``. Everything is bounded by ``--seconds`` per phase and the client counts.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from benchmarks.loadgen import SERVER_PACKAGES, free_port, machine, percentiles, scrape, server_tail, speechlike, wav_bytes
from benchmarks.loadgen import wait_ready as wait_until_ready
from runtime.spec import package_versions

PHASES = ("baseline", "slowloris", "silent", "slow_body", "junk_wav", "nested_json", "malformed", "stream_flood", "stream_load")
SETTLE_S = 3.0  # rest after each phase before memory is read again


# ------------------------------------------------------------------ the ordinary client


def _ordinary(host: str, port: int, seconds: float, out) -> None:
    """One request at a time for ``seconds``, each on a new connection; sends
    ``(latencies_s, errors)`` through the pipe ``out``."""
    clip = wav_bytes(speechlike(1.0, seed=11))
    boundary = "ordinaryclient"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
            ).encode() + clip + (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nwhat a day\r\n"
                                 f"--{boundary}--\r\n").encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Host": f"127.0.0.1:{port}"}
    latencies, errors = [], {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("POST", "/v1/recognize", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                latencies.append(time.monotonic() - start)
            else:
                errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
        except (OSError, http.client.HTTPException) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            time.sleep(0.05)
        time.sleep(0.02)
    out.send((latencies, errors))
    out.close()


# ------------------------------------------------------------------ attacks


class Outcomes(dict):
    def add(self, kind: str) -> None:
        self[kind] = self.get(kind, 0) + 1


def junk_wav() -> bytes:
    wav = wav_bytes(speechlike(1.0, seed=1))
    data = wav.index(b"data")
    body = wav[12:data] + b"JUNK\0\0\0\0" * 1_200_000 + wav[data:]
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body


def _multipart(part_headers: bytes, payload: bytes = b"x", extra: bytes = b"") -> tuple[bytes, str]:
    body = b"--XX\r\n" + part_headers + b"\r\n" + payload + b"\r\n" + extra + b"--XX--\r\n"
    return body, "multipart/form-data; boundary=XX"


def malformed_bodies() -> list[tuple[bytes, str, str]]:
    """(body, content type, extra header lines) of requests a careless client sends."""
    text = b'Content-Disposition: form-data; name="text"\r\n'
    forms = [_multipart(text + b"X-Long: " + b"a" * 9000 + b"\r\n"), _multipart(text + b"X-A: a\x00b\r\n"),
             _multipart(text + b"nocolon\r\n"), _multipart(text + b"".join(b"X-%d: a\r\n" % i for i in range(200))),
             _multipart(text, b"hi", b"".join(b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i
                                              for i in range(1000)))]
    out = [(b, t, "") for b, t in forms]
    out += [(b'{"text": "hello"}', "application/json", "Content-Encoding: gzip\r\n"),
            (b'{"text": "hello"}', "application/json", "Content-Encoding: deflate\r\n")]
    return out


async def _request(host: str, port: int, body: bytes, ctype: str, extra: str = "") -> str:
    """Send one POST and return its status (or why there was none)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        return type(e).__name__
    try:
        writer.write(f"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n{extra}"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
        return line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"
    except (OSError, asyncio.TimeoutError, IndexError) as e:
        return type(e).__name__
    finally:
        writer.close()


async def repeat_posts(host: str, port: int, bodies: list[tuple[bytes, str, str]], clients: int, until: float, out: Outcomes) -> None:
    async def one(i: int) -> None:
        k = i
        while time.monotonic() < until:
            body, ctype, extra = bodies[k % len(bodies)]
            out.add(await _request(host, port, body, ctype, extra))
            k += clients

    await asyncio.gather(*(one(i) for i in range(clients)))


async def slow_connections(host: str, port: int, n: int, until: float, out: Outcomes, mode: str) -> None:
    """``n`` connections held open the slow way (``mode``: slowloris, silent, slow_body),
    each reopened when the server closes it."""
    async def one(i: int) -> None:
        await asyncio.sleep(random.random())  # spread the connects over the first second
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as e:
                out.add(f"connect:{type(e).__name__}")
                await asyncio.sleep(0.5)
                continue
            out.add("opened")
            try:
                if mode == "slowloris":
                    writer.write(f"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
                elif mode == "slow_body":
                    writer.write(f"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                                 f"Content-Length: 10000000\r\n\r\n".encode())
                while time.monotonic() < until:
                    if mode != "silent":
                        writer.write(b"X-Slow: 1\r\n" if mode == "slowloris" else b" ")
                        await writer.drain()
                    try:
                        if await asyncio.wait_for(reader.read(65536), 1.0) == b"":
                            out.add("closed_by_server")
                            break
                        out.add("answered")
                        break
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                out.add("reset_by_server")
            finally:
                writer.close()

    await asyncio.gather(*(one(i) for i in range(n)))


async def stream_flood(url: str, clients: int, until: float, out: Outcomes, frame_bytes: int = 10_485_000,
                       repeat: bool = False) -> None:
    """``clients`` streams, each sending one frame of ``frame_bytes`` of speech-like audio and
    ``end`` (or, with ``repeat``, such frames as fast as the server takes them)."""
    import aiohttp

    audio = np.concatenate([np.concatenate([speechlike(1.5, seed=s), np.zeros(8000, np.float32)]) for s in range(8)])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    frame = (pcm * (frame_bytes // len(pcm) + 1))[:frame_bytes]

    async def one() -> None:
        try:
            async with aiohttp.ClientSession() as s, s.ws_connect(url + "/v1/stream", max_msg_size=0, heartbeat=None) as ws:
                await ws.receive_json()
                out.add("opened")
                await ws.send_bytes(frame)
                while repeat and time.monotonic() < until:
                    await asyncio.wait_for(ws.send_bytes(frame), max(until - time.monotonic(), 0.01))
                    out.add("frame_sent")
                await ws.send_str(json.dumps({"type": "end"}))
                while time.monotonic() < until:
                    msg = await asyncio.wait_for(ws.receive(), max(until - time.monotonic(), 0.01))
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        out.add(f"closed:{ws.close_code}")
                        return
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        out.add(json.loads(msg.data).get("type", "?"))
                out.add("still_open_at_phase_end")
        except aiohttp.WSServerHandshakeError as e:
            out.add(f"refused:{e.status}")
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            out.add(type(e).__name__)

    async def bounded() -> None:
        try:
            await asyncio.wait_for(one(), max(until - time.monotonic(), 0.01) + 2.0)
        except asyncio.TimeoutError:
            out.add("still_sending_at_phase_end")

    await asyncio.gather(*(bounded() for _ in range(clients)))


# ------------------------------------------------------------------ the server's process


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(re.search(r"VmRSS:\s+(\d+) kB", fh.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Sampler:
    """Peak RSS and descriptors of ``pid`` every 100 ms, on a thread."""

    def __init__(self, pid: int | None):
        self.pid, self.peak_rss, self.peak_fds = pid, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pid:
                self.peak_rss = max(self.peak_rss, rss_mb(self.pid))
                self.peak_fds = max(self.peak_fds, open_fds(self.pid))
            time.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def server_errors(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Requests the server answered 5xx during the phase, by endpoint and status."""
    out = {}
    for k, v in after.items():
        m = re.match(r'emotech_requests_total\{endpoint="([^"]+)",status="(5\d\d)"\}', k)
        if m and v - before.get(k, 0.0) > 0:
            out[f"{m.group(1)} {m.group(2)}"] = int(v - before.get(k, 0.0))
    return out


async def attack(name: str, url: str, seconds: float, slow: int, until: float, out: Outcomes) -> None:
    """Run the phase ``name``'s attack until ``until`` (``time.monotonic()``)."""
    host, port = urlparse(url).hostname, urlparse(url).port
    if name == "baseline":
        await asyncio.sleep(seconds)
    elif name in ("slowloris", "silent"):
        await slow_connections(host, port, slow, until, out, name)
    elif name == "slow_body":
        await slow_connections(host, port, max(slow // 4, 1), until, out, name)
    elif name == "junk_wav":
        body, ctype = _multipart(b'Content-Disposition: form-data; name="audio"; filename="a.wav"\r\nContent-Type: audio/wav\r\n',
                                 junk_wav())
        await repeat_posts(host, port, [(body, ctype, "")], 4, until, out)
    elif name == "nested_json":
        await repeat_posts(host, port, [(b"[" + b"[]," * 3_000_000 + b"[]]", "application/json", "")], 4, until, out)
    elif name == "malformed":
        await repeat_posts(host, port, malformed_bodies(), 2, until, out)
    elif name == "stream_load":
        await stream_flood(url, 30, until, out, frame_bytes=256 * 1024, repeat=True)
    elif name == "stream_flood":
        await stream_flood(url, 30, until, out)


def run_phase(name: str, url: str, pid: int | None, seconds: float, slow: int) -> dict:
    host, port = urlparse(url).hostname, urlparse(url).port
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    client = ctx.Process(target=_ordinary, args=(host, port, seconds, send), daemon=True)
    outcomes = Outcomes()
    try:
        before = scrape(url, {})
    except OSError:
        before = {}
    cpu_before = cpu_s(pid) if pid else float("nan")
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    with Sampler(pid) as sampler:
        client.start()
        until = time.monotonic() + seconds
        try:
            asyncio.run(asyncio.wait_for(attack(name, url, seconds, slow, until, outcomes), seconds + 30))
        except asyncio.TimeoutError:
            outcomes.add("attack_cut_30_s_after_the_phase")
        latencies, errors = recv.recv() if recv.poll(seconds + 60) else ([], {"no_report": 1})
        client.join(10)
        peak_in_phase = sampler.peak_rss
        server_cpu = cpu_s(pid) - cpu_before if pid else float("nan")
        own = resource.getrusage(resource.RUSAGE_SELF)
        attacker_cpu = own.ru_utime + own.ru_stime - own_before.ru_utime - own_before.ru_stime
        time.sleep(SETTLE_S)
    try:
        after = scrape(url, {})
    except OSError as e:
        after = {"scrape_failed": str(e)}
    return {
        "phase": name,
        "ordinary": {"ok": len(latencies), "errors": errors, "latency_ms": {k: round(v, 1) for k, v in percentiles(latencies).items()}},
        "attack": dict(sorted(outcomes.items())),
        "attacker_cpu_s": round(attacker_cpu, 2),
        "server": {"cpu_s": round(server_cpu, 2), "rss_peak_mb": round(peak_in_phase, 1), "rss_after_rest_mb": round(rss_mb(pid), 1) if pid else None,
                   "fds_peak": sampler.peak_fds if pid else None,
                   "answers_5xx": server_errors(before, after) if "scrape_failed" not in after else after},
    }


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attack", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server on loopback")
    where.add_argument("--spawn", action="store_true", help="start `python -m runtime.serve` on a free loopback port")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's process id, for memory readings")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--slow", type=int, default=1100, help="connections of the slowloris and silent phases (max 5000)")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases to run, in the given order")
    p.add_argument("--server-nofile", type=int, default=None,
                   help="with --spawn: the server's open-file limit (soft and hard; 1024 is a common default)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here and a .md beside it")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="after --: arguments for runtime.serve (with --spawn)")
    return p


def markdown(report: dict) -> str:
    lines = [f"# Attacks vs ordinary latency: {report['machine'].get('cpu', {}).get('model', '?')}", "",
             f"`{report['command']}` ({report['date']}); the server: `{report['server_command']}`.", "",
             "| phase | ordinary ok | p50 ms | p90 ms | max ms | ordinary failures | server CPU s | attacker CPU s "
             "| server RSS peak / after MB | fds peak | server 5xx | attack outcomes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["phases"]:
        o, s = r["ordinary"], r["server"]
        lat = o["latency_ms"]
        lines.append(f"| {r['phase']} | {o['ok']} | {lat.get('p50', '-')} | {lat.get('p90', '-')} | {lat.get('max', '-')} | "
                     f"{o['errors'] or '-'} | {s['cpu_s']} | {r['attacker_cpu_s']} | {s['rss_peak_mb']} / {s['rss_after_rest_mb']} | {s['fds_peak']} | "
                     f"{s['answers_5xx'] or '-'} | {', '.join(f'{k} {v}' for k, v in r['attack'].items()) or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown or not 0 < args.seconds <= 120 or not 1 <= args.slow <= 5000:
        print(f"error: phases must be among {', '.join(PHASES)}; --seconds in (0, 120]; --slow in [1, 5000]", file=sys.stderr)
        return 2
    raise_fd_limit(args.slow + 256)
    proc = None
    log_file = tempfile.TemporaryFile(mode="w+")
    if args.spawn:
        port = free_port()
        cmd = [sys.executable, "-m", "runtime.serve", "--host", "127.0.0.1", "--port", str(port),
               *[a for a in args.server_args if a != "--"]]
        nofile = args.server_nofile

        def limit_files() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen(cmd, stderr=log_file, stdout=log_file, text=True, preexec_fn=limit_files)
        url, pid = f"http://127.0.0.1:{port}", proc.pid
    else:
        from runtime.server.limits import is_loopback

        if not is_loopback(urlparse(args.url).hostname or ""):
            print("error: --url must be a loopback address", file=sys.stderr)
            return 2
        url, pid = args.url.rstrip("/"), args.pid
        cmd = ["(already running)"]
    info = machine()
    results = []
    try:
        wait_until_ready(url, {}, 300, proc)
        rss_start = rss_mb(pid) if pid else None
        for name in phases:
            print(f"phase {name} ({args.seconds:g} s)...", file=sys.stderr, flush=True)
            results.append(run_phase(name, url, pid, args.seconds, args.slow))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    report = {
        "command": "python -m benchmarks.attack " + " ".join(sys.argv[1:] if argv is None else argv),
        "server_command": " ".join(cmd[1:] if args.spawn else cmd),
        "date": time.strftime("%Y-%m-%d"),
        "machine": info,
        "versions": package_versions(SERVER_PACKAGES),
        "seconds_per_phase": args.seconds,
        "slow_connections": args.slow,
        "server_nofile": args.server_nofile,
        "rss_start_mb": round(rss_start, 1) if rss_start else None,
        "phases": results,
        "server_exit_code": proc.returncode if proc is not None else None,
        "server_log_tail": server_tail(log_file, 8).splitlines() if proc is not None else None,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
