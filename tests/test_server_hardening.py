"""The server under hostile or careless clients: slow and silent connections, oversized
and malformed bodies, chained and degenerate audio, floods of streams and frames,
cross-origin pages, pipelined requests at shutdown. Each test drives a real server on
127.0.0.1 with real sockets, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import logging
import re
import socket
import threading
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")

from benchmarks.loadgen import speechlike, wav_bytes
from runtime.server.app import STATE, create_app
from runtime.server.limits import ServeConfig
from runtime.server.runner import BackgroundServer
from tests.helpers import encode
from tests.test_serve import Wrapped, call, metrics, model_dir, quiet, recognizer, vad, wait_ready  # noqa: F401 - fixtures

SR = 16000


def serve(recognizer, vad=None, **config):
    """A started ``BackgroundServer`` with ``ServeConfig(**config)``, no warm-up."""
    return BackgroundServer(create_app(recognizer, ServeConfig(**config), vad=vad, warm_up=False)).start()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server closes ``sock`` within ``wait`` seconds (EOF or reset)."""
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP response from ``sock``: status, lower-cased headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def post_json(url: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# ------------------------------------------------------------------ 1. slow clients


def test_silent_slow_and_idle_connections_are_closed_at_their_deadlines(recognizer):
    """Finding 1: a connection that sends nothing, or a request head a line every 0.3 s,
    or nothing after its response, is closed at header_timeout_s / keepalive_s."""
    srv = serve(recognizer, header_timeout_s=1.0, keepalive_s=0.5)
    try:
        silent = [connect(srv.url) for _ in range(10)]
        slow = [connect(srv.url) for _ in range(10)]
        idle = connect(srv.url)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(idle)[0] == 200
        start = time.monotonic()
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
        while time.monotonic() - start < 2.0:  # a header line every 0.3 s never completes the head
            time.sleep(0.3)
            for s in slow:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass
        assert closed_by_server(idle, 0.1), "an idle keep-alive connection outlived keepalive_s"
        assert all(closed_by_server(s, 0.5) for s in silent), "a silent connection outlived header_timeout_s"
        assert all(closed_by_server(s, 0.5) for s in slow), "a trickled request head outlived header_timeout_s"
        m = metrics(srv.url)
        assert m['emotech_connections_closed_total{reason="header_timeout"}'] >= 20
        assert m['emotech_connections_closed_total{reason="idle"}'] >= 1
        assert m["emotech_open_connections"] <= 2  # the /metrics call itself, and perhaps the one before it
    finally:
        srv.stop()


def test_ordinary_requests_get_through_a_connection_flood(recognizer):
    """Finding 1: 150 connections holding part of a head against a cap of 40: the oldest
    waiting ones make room, so ordinary requests are answered at once and the server
    never holds more than 40 sockets (and makes no aiohttp handler for a head that never
    completes)."""
    srv = serve(recognizer, max_connections=40, header_timeout_s=30.0)
    flood: list[socket.socket] = []
    try:
        for _ in range(150):
            s = connect(srv.url)
            s.sendall(b"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            flood.append(s)
        time.sleep(0.3)  # past EVICT_GRACE_S: the flood's connections may be displaced
        for _ in range(5):
            start = time.monotonic()
            status, _, body = call("POST", srv.url + "/v1/recognize", text="what a day")
            assert status == 200, body
            assert time.monotonic() - start < 2.0
        m = metrics(srv.url)
        assert m["emotech_open_connections"] <= 40
        closed = m.get('emotech_connections_closed_total{reason="evicted"}', 0) + m.get('emotech_connections_closed_total{reason="refused"}', 0)
        assert closed >= 110  # displaced, or refused while every open one was younger than EVICT_GRACE_S
    finally:
        for s in flood:
            s.close()
        srv.stop()


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(recognizer):
    """When no connection waits for its client, a new one is refused with a JSON 503."""
    slow = Wrapped(recognizer, delay=1.0)
    srv = serve(slow, max_connections=2, max_streams=1)
    try:
        busy = [connect(srv.url) for _ in range(2)]
        for s in busy:
            body = b'{"text": "what a day"}'
            s.sendall(post_json(srv.url, body))
        time.sleep(0.3)  # both are being answered (the engine takes 1 s)
        extra = connect(srv.url)
        status, headers, body = read_response(extra)
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["limit"] == "max_connections"
        assert [read_response(s)[0] for s in busy] == [200, 200]
    finally:
        srv.stop()


def test_an_idle_stream_is_closed_after_stream_idle_s(recognizer, vad):
    srv = serve(recognizer, vad=vad, stream_idle_s=0.5)

    async def main():
        async with aiohttp.ClientSession() as s, s.ws_connect(srv.url + "/v1/stream", heartbeat=None) as ws:
            out = [await ws.receive_json()]
            async for msg in ws:
                out.append(json.loads(msg.data))
            return out, ws.close_code

    try:
        start = time.monotonic()
        messages, code = asyncio.run(asyncio.wait_for(main(), 10))
        assert time.monotonic() - start < 5
    finally:
        srv.stop()
    assert [m["type"] for m in messages] == ["ready", "error", "done"]
    assert messages[1]["error"]["code"] == "idle_timeout" and code == 1008


# ------------------------------------------------------------------ 2, 3. bodies that cost CPU


def junk_wav(chunks: int) -> bytes:
    """A valid 16-bit WAV with ``chunks`` empty JUNK chunks before its audio."""
    wav = wav_bytes(speechlike(1.0, seed=1))
    data = wav.index(b"data")
    body = wav[12:data] + b"JUNK\0\0\0\0" * chunks + wav[data:]
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body


def test_a_wav_of_a_million_empty_chunks_is_refused_at_once(recognizer):
    """Finding 2: the chunk walk was Python, twice per request: ~1 s of GIL per 1.2 M chunks."""
    srv = serve(recognizer)
    try:
        start = time.monotonic()
        status, _, body = call("POST", srv.url + "/v1/recognize", audio=junk_wav(1_200_000))
        assert status == 415 and "chunks" in body["error"]["message"], body
        assert time.monotonic() - start < 1.0
        assert call("POST", srv.url + "/v1/recognize", audio=junk_wav(10))[0] == 200  # a few are fine
    finally:
        srv.stop()


def test_a_request_parses_its_wav_header_once(recognizer, monkeypatch):
    from runtime.audio import decoder

    calls = []
    real = decoder.parse_pcm16_wav
    monkeypatch.setattr(decoder, "parse_pcm16_wav", lambda *a, **k: calls.append(1) or real(*a, **k))
    srv = serve(recognizer)
    try:
        assert call("POST", srv.url + "/v1/recognize", audio=wav_bytes(speechlike(1.0, seed=2)))[0] == 200
    finally:
        srv.stop()
    assert len(calls) == 1


def loop_lag_during(url: str, attack) -> tuple[float, object]:
    """The longest gap (s) between consecutive /healthz answers, asked every 10 ms, while
    ``attack()`` runs; and its result. The server shares this process's GIL, so a gap
    shows any stall: the event loop's or the interpreter's."""
    worst = [0.0]
    done = threading.Event()

    def ping():
        with connect(url) as s:
            last = time.monotonic()
            while not done.is_set():
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                read_response(s)
                now = time.monotonic()
                worst[0] = max(worst[0], now - last)
                last = now
                time.sleep(0.01)

    t = threading.Thread(target=ping)
    t.start()
    try:
        time.sleep(0.1)
        result = attack()
        time.sleep(0.05)
    finally:
        done.set()
        t.join(10)
    return worst[0], result


def test_a_json_body_of_millions_of_values_does_not_stall_the_server(recognizer):
    """Finding 3: 9 MB of ``[[],[],...]`` held the event loop for the second json.loads took."""
    srv = serve(recognizer)
    body = b"[" + b"[]," * 3_000_000 + b"[]]"
    try:
        def attack():
            with connect(srv.url) as s:
                s.sendall(post_json(srv.url, body))
                return read_response(s)

        lag, (status, _, reply) = loop_lag_during(srv.url, attack)
        assert lag < 0.25, f"/healthz waited {lag:.3f} s"
        assert status == 400 and json.loads(reply)["error"]["code"] == "invalid_json"
        assert "arrays, objects and commas" in json.loads(reply)["error"]["message"]
    finally:
        srv.stop()


def stream_messages(url: str, frames: list, timeout: float = 30.0, **ws_kw) -> tuple[list[dict], int | None]:
    """Send ``frames`` (bytes: binary; str: text) on /v1/stream, then ``end``; every
    message until the socket closes, and the close code."""
    async def main():
        async with aiohttp.ClientSession() as s, s.ws_connect(url + "/v1/stream", **ws_kw) as ws:
            out = [await ws.receive_json()]
            try:
                for f in frames:
                    await (ws.send_bytes(f) if isinstance(f, bytes) else ws.send_str(f))
                await ws.send_str(json.dumps({"type": "end"}))
            except ConnectionError:
                pass
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    out.append(json.loads(msg.data))
            return out, ws.close_code

    return asyncio.run(asyncio.wait_for(main(), timeout))


def test_stream_text_frames_are_bounded_before_parsing(recognizer, vad):
    srv = serve(recognizer, vad=vad)
    try:
        nested = "[" + "[]," * 30_000 + "[]]"
        messages, code = stream_messages(srv.url, [nested, json.dumps({"type": "transcript", "text": "what a day"})])
    finally:
        srv.stop()
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1 and "at most" in errors[0]["error"]["message"]
    assert messages[-1]["type"] == "done" and code == 1000


# ------------------------------------------------------------------ 4. stream floods


def test_streams_are_capped_and_a_frame_over_the_limit_closes_the_stream(recognizer, vad):
    """Finding 4: any number of streams, each sending any frame size, were accepted."""
    srv = serve(recognizer, vad=vad, max_streams=2, max_frame_bytes=64 * 1024)

    async def main():
        async with aiohttp.ClientSession() as s:
            a = await s.ws_connect(srv.url + "/v1/stream")
            b = await s.ws_connect(srv.url + "/v1/stream")
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await s.ws_connect(srv.url + "/v1/stream")
            await a.receive_json()
            await a.send_bytes(b"\0" * (64 * 1024))  # exactly the limit: accepted
            await a.send_bytes(b"\0" * (64 * 1024 + 2))
            async for _ in a:
                pass
            await b.close()
            return e.value.status, a.close_code

    try:
        status, code = asyncio.run(asyncio.wait_for(main(), 20))
        assert (status, code) == (503, 1009)
        assert metrics(srv.url)['emotech_requests_total{endpoint="/v1/stream",status="503"}'] == 1
        with aiohttp_ws_ok(srv.url):
            pass  # a slot is free again
    finally:
        srv.stop()


class aiohttp_ws_ok:
    """Context manager: a stream opens and says ready."""

    def __init__(self, url):
        self.url = url

    def __enter__(self):
        async def main():
            async with aiohttp.ClientSession() as s, s.ws_connect(self.url + "/v1/stream") as ws:
                return (await ws.receive_json())["type"]

        assert asyncio.run(asyncio.wait_for(main(), 10)) == "ready"

    def __exit__(self, *exc):
        return False


def test_one_stream_never_has_more_than_max_stream_pending_utterances_queued(recognizer, vad):
    """Finding 4: one frame of many utterances queued them all at once (hundreds for a
    10-MB frame), crowding every other client out of the batch queue."""
    slow = Wrapped(recognizer, delay=0.15)
    srv = serve(slow, vad=vad, max_batch=1, max_delay_ms=0, max_stream_pending=2, max_frame_bytes=1024 * 1024)
    state = srv.app[STATE]
    depth, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            depth[0] = max(depth[0], state.batcher.pending)
            time.sleep(0.002)

    audio = np.concatenate([np.concatenate([speechlike(0.6, seed=i), quiet(0.6, i)]) for i in range(8)])
    frame = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        messages, _ = stream_messages(srv.url, [frame], timeout=60)
    finally:
        stop.set()
        watcher.join()
        srv.stop()
    assert sum(m["type"] == "result" for m in messages) == 8, messages
    assert depth[0] <= 2, f"{depth[0]} utterances of one stream were queued at once"


# ------------------------------------------------------------------ 5, 13, 16. malformed requests


def multipart_request(part_headers: bytes, payload: bytes = b"x", extra_parts: bytes = b"") -> bytes:
    body = b"--XX\r\n" + part_headers + b"\r\n" + payload + b"\r\n" + extra_parts + b"--XX--\r\n"
    return (b"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


TEXT_PART = b'Content-Disposition: form-data; name="text"\r\n'
MALFORMED = {
    "part header line over 8190 bytes": multipart_request(TEXT_PART + b"X-Long: " + b"a" * 9000 + b"\r\n"),
    "NUL in a part header": multipart_request(TEXT_PART + b"X-A: a\x00b\r\n"),
    "part header without colon": multipart_request(TEXT_PART + b"nocolonhere\r\n"),
    "200 part header lines": multipart_request(TEXT_PART + b"".join(b"X-%d: a\r\n" % i for i in range(200))),
    "gzip on a plain body": post_json("", b'{"text": "hello"}', "Connection: close\r\nContent-Encoding: gzip\r\n"),
    "deflate on a plain body": post_json("", b'{"text": "hello"}', "Connection: close\r\nContent-Encoding: deflate\r\n"),
    "1001 form fields": multipart_request(TEXT_PART, b"what a day", b"".join(
        b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i for i in range(1000))),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_400_without_a_logged_traceback(recognizer, case, caplog):
    """Findings 5 and 13: each of these was a 500 with a traceback in the log (or, for
    1001 fields, a 413 that named the body-size limit, which the body was far below)."""
    with caplog.at_level(logging.INFO):
        srv = serve(recognizer)
        try:
            with connect(srv.url) as s:
                s.sendall(MALFORMED[case])
                status, _, body = read_response(s)
            time.sleep(0.1)  # aiohttp reads what is left of the body after the answer
            m = metrics(srv.url)
        finally:
            srv.stop()
    error = json.loads(body)["error"]
    assert status == 400, error
    assert error["code"] in ("invalid_form", "invalid_body") and "10485760" not in error["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in caplog.records]
    assert not any('status="500"' in k for k in m)


def test_client_disconnects_mid_body_are_not_server_errors(recognizer, caplog):
    """Finding 5: each was logged as a traceback and counted as a 500."""
    with caplog.at_level(logging.INFO):
        srv = serve(recognizer)
        try:
            for head in (post_json("", b"", "").replace(b"Content-Length: 0", b"Content-Length: 1000") + b'{"text": ',
                         multipart_request(b'Content-Disposition: form-data; name="audio"; filename="a.wav"\r\n')[:-30]):
                with connect(srv.url) as s:
                    s.sendall(head)
                    time.sleep(0.2)
            time.sleep(0.3)
            m = metrics(srv.url)
        finally:
            srv.stop()
    assert m['emotech_requests_total{endpoint="/v1/recognize",status="499"}'] == 2
    assert not any('status="500"' in k for k in m)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in caplog.records]


def test_expect_100_continue_is_not_sent_before_a_refusal(recognizer):
    """Finding 16: a body over the limit got "100 Continue", then the 413."""
    srv = serve(recognizer)
    try:
        with connect(srv.url) as s:
            s.sendall(b"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nContent-Length: 99999999\r\n\r\n")
            status, _, body = read_response(s)
        assert status == 413 and json.loads(body)["error"]["limit"] == "max_body_bytes"
        body = b'{"text": "what a day"}'
        with connect(srv.url) as s:  # within the limit: 100 Continue, then the answer
            s.sendall(b"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            assert read_response(s)[0] == 100
            s.sendall(body)
            assert read_response(s)[0] == 200
    finally:
        srv.stop()


def test_each_request_gets_one_access_line(recognizer, caplog):
    with caplog.at_level(logging.INFO, logger="runtime.server.runner.access"):
        srv = serve(recognizer)
        try:
            call("POST", srv.url + "/v1/recognize", text="what a day")
            call("GET", srv.url + "/nope")
        finally:
            srv.stop()  # the line may be written just after the client has its answer
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime.server.runner.access"]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"POST /v1/recognize 200 \d+ B [\d.]+ ms 127\.0\.0\.1", lines[0]), lines[0]
    assert re.fullmatch(r"GET /nope 404 \d+ B [\d.]+ ms 127\.0\.0\.1", lines[1]), lines[1]


# ------------------------------------------------------------------ 9, 10. audio that is not what it says


def test_chained_ogg_is_refused_not_answered_about_its_first_second(recognizer):
    """Finding 9: 1 s of noise chained with 40 s of speech answered 200 about the 1 s."""
    noise = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    chained = encode(noise, SR, "OGG") + encode(speechlike(40.0, seed=3), SR, "OGG")
    srv = serve(recognizer)
    try:
        status, _, body = call("POST", srv.url + "/v1/recognize", audio=chained)
    finally:
        srv.stop()
    assert status == 415 and "chained" in body["error"]["message"], body


def test_a_one_sample_wav_at_1_hz_is_refused(recognizer):
    """Finding 10: 46 bytes of WAV (one sample at 1 Hz) answered 200 'surprised'."""
    tiny = b"RIFF" + (38).to_bytes(4, "little") + b"WAVE" + b"fmt " + (16).to_bytes(4, "little") + \
        (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + \
        (2).to_bytes(2, "little") + (16).to_bytes(2, "little") + b"data" + (2).to_bytes(4, "little") + b"\x00\x40"
    assert len(tiny) == 46
    srv = serve(recognizer)
    try:
        status, _, body = call("POST", srv.url + "/v1/recognize", audio=tiny)
    finally:
        srv.stop()
    assert status == 422 and "4000" in body["error"]["message"], body


# ------------------------------------------------------------------ 12. shutdown


def test_shutdown_answers_requests_pipelined_behind_one_in_flight(recognizer):
    """Finding 12: the second of two pipelined requests was dropped on SIGTERM."""
    srv = serve(Wrapped(recognizer, delay=0.5))
    body = b'{"text": "what a day"}'
    one = post_json(srv.url, body)
    with connect(srv.url) as s:
        s.sendall(one + one.replace(b"Content-Type", b"Connection: close\r\nContent-Type"))
        time.sleep(0.2)  # the first is in the engine, the second parsed and queued behind it
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        statuses = [read_response(s)[0], read_response(s)[0]]
        stopper.join(30)
    assert statuses == [200, 200]


# ------------------------------------------------------------------ 14, 15. who may call


def test_pages_from_other_origins_and_rebound_host_names_are_refused(recognizer, vad):
    """Finding 14: any web page (Origin) and any DNS name resolving to 127.0.0.1 (Host)
    could use a key-less loopback server; /v1/model showed the model's absolute path."""
    srv = serve(recognizer, vad=vad, allow_origins=("http://kiosk.example",))
    own = srv.url

    async def ws_status(headers):
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(own + "/v1/stream", headers=headers) as ws:
                    return (await ws.receive_json())["type"]
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    try:
        assert asyncio.run(ws_status({"Origin": "http://evil.example"})) == 403
        assert asyncio.run(ws_status({"Origin": own})) == "ready"  # the server's own page
        assert asyncio.run(ws_status({"Origin": "http://kiosk.example"})) == "ready"  # --allow-origin
        status, _, body = call("GET", own + "/v1/model", headers={"Host": "rebound.evil.example:8080"})
        assert status == 403 and body["error"]["code"] == "host_not_allowed"
        assert call("GET", own + "/v1/model", headers={"Host": "localhost:8080"})[0] == 200
        status, _, body = call("POST", own + "/v1/recognize", text="what a day", headers={"Origin": "http://evil.example"})
        assert status == 403 and body["error"]["code"] == "origin_not_allowed"
        status, headers, _ = call("POST", own + "/v1/recognize", text="what a day", headers={"Origin": "http://kiosk.example"})
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://kiosk.example"
        status, headers, _ = call("OPTIONS", own + "/v1/recognize", headers={
            "Origin": "http://kiosk.example", "Access-Control-Request-Method": "POST"})
        assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]
        status, _, model = call("GET", own + "/v1/model")
        assert status == 200 and "/" not in model["model_dir"]
        assert not re.search(r'"/[^"]*/', json.dumps(model)), "an absolute path in /v1/model"
    finally:
        srv.stop()


def test_a_public_bind_checks_host_only_when_told(recognizer):
    from runtime.server.access import check_host

    class Req:
        def __init__(self, host):
            self.headers = {"Host": host}

    public = ServeConfig(host="0.0.0.0", api_key="k" * 16)
    check_host(Req("anything.example"), public)
    with pytest.raises(Exception, match="does not answer"):
        check_host(Req("other.example"), ServeConfig(host="0.0.0.0", api_key="k" * 16, allow_hosts=("kiosk.example",)))
    check_host(Req("KIOSK.example:443"), ServeConfig(host="0.0.0.0", api_key="k" * 16, allow_hosts=("kiosk.example",)))
    for name in ("127.0.0.1:80", "[::1]:8080", "localhost", "app.localhost:9", "127.1.2.3"):
        check_host(Req(name), ServeConfig())


@pytest.mark.parametrize("key", ["caf\udce9-secret", "has space in it", "tab\tinside!", "short", "é" * 10])
def test_an_api_key_a_header_cannot_carry_is_refused_at_start(key):
    """Finding 15: an undecodable key was accepted, then every request got 500."""
    with pytest.raises(ValueError, match="api_key"):
        ServeConfig(api_key=key)


def test_the_cli_takes_its_key_from_a_file_or_the_environment_and_refuses_bad_ones(model_dir, tmp_path):
    """Finding 15: a key the shell passed as undecodable bytes started a server that then
    answered every request with 500; and a key on the command line shows in ``ps``."""
    import subprocess
    import sys

    from tests.test_serve import ROOT, start_cli

    base = [sys.executable, "-m", "runtime.serve", "--model-dir", str(model_dir), "--port", "0", "--no-stream", "--no-warmup"]
    bad = subprocess.run([*map(os.fsencode, base), b"--api-key", b"caf\xe9-secret-key"], cwd=ROOT, capture_output=True, timeout=120)
    assert bad.returncode == 2 and b"error: api_key must be printable ASCII" in bad.stderr, bad.stderr
    key_file = tmp_path / "key"
    key_file.write_text("file-secret-key\n")
    key_file.chmod(0o600)
    both = subprocess.run([*base, "--api-key", "x" * 10, "--api-key-file", str(key_file)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert both.returncode == 2 and "not both" in both.stderr
    proc, url, _ = start_cli(model_dir, "--no-stream", "--no-warmup", "--api-key-file", str(key_file))
    try:
        assert call("GET", url + "/v1/model")[0] == 401
        assert call("GET", url + "/v1/model", headers={"Authorization": "Bearer file-secret-key"})[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)
    from runtime.server.limits import resolve_api_key

    assert resolve_api_key(None, None, {"EMOTECH_API_KEY": "env-secret-key"}) == "env-secret-key"
    assert resolve_api_key("arg-secret-key", None, {"EMOTECH_API_KEY": "env-secret-key"}) == "arg-secret-key"
    assert resolve_api_key(None, None, {}) is None


def test_request_bodies_held_at_once_are_bounded(recognizer):
    """256 connections each uploading 10 MB would hold gigabytes: bodies take room in one
    budget as they arrive, and a request that finds none within 2 s gets 503."""
    srv = serve(recognizer, max_body_bytes=1 << 20, max_pending_body_bytes=1 << 20)
    try:
        with connect(srv.url) as holder, connect(srv.url) as late:
            holder.sendall(post_json(srv.url, b"").replace(b"Content-Length: 0", b"Content-Length: 1000000") + b" " * 900_000)
            time.sleep(0.3)  # 900 kB of the budget's 1 MiB are held by a body still arriving
            body = json.dumps({"text": "what a day", "pad": "x" * 200_000}).encode()
            start = time.monotonic()
            late.sendall(post_json(srv.url, body))
            status, headers, reply = read_response(late)
            assert status == 503 and json.loads(reply)["error"]["limit"] == "max_pending_body_bytes"
            assert 1.5 < time.monotonic() - start < 5 and headers["retry-after"] == "1"
            holder.sendall(b" " * 100_000)  # the first completes (not JSON: 400) and gives its room back
            assert read_response(holder)[0] == 400
        assert srv.app[STATE].bodies.used == 0
        status, _, _ = call("POST", srv.url + "/v1/recognize", json_body={"text": "what a day", "pad": "x" * 200_000})
        assert status == 200
    finally:
        srv.stop()


def test_a_head_over_64_kib_gets_431_and_a_bare_lf_head_is_answered_at_once(recognizer):
    srv = serve(recognizer)
    try:
        with connect(srv.url) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: aaaaaaaa\r\n" * 5000)
            status, _, body = read_response(s)
        assert status == 431 and json.loads(body)["error"]["code"] == "head_too_large"
        with connect(srv.url) as s:  # bare LF line ends: handed to aiohttp, which refuses them, not held
            s.sendall(b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n")
            assert read_response(s)[0] == 400
        with connect(srv.url) as s:  # a head split in many small writes
            for piece in (b"GET /hea", b"lthz HTTP/1.1\r", b"\nHost: 127.0.0.1\r\n\r", b"\n"):
                s.sendall(piece)
                time.sleep(0.05)
            assert read_response(s)[0] == 200
    finally:
        srv.stop()


def test_the_attack_benchmark_runs_and_reports(recognizer, tmp_path):
    """A smoke test of ``benchmarks/attack.py`` (two short phases against an in-process server)."""
    from benchmarks import attack

    srv = serve(recognizer)
    out = tmp_path / "attack.json"
    try:
        code = attack.main(["--url", srv.url, "--pid", str(os.getpid()), "--seconds", "1", "--slow", "20",
                            "--phases", "baseline,malformed", "--out", str(out)])
    finally:
        srv.stop()
    report = json.loads(out.read_text())
    assert code == 0 and [p["phase"] for p in report["phases"]] == ["baseline", "malformed"]
    base, bad = report["phases"]
    assert base["ordinary"]["ok"] > 0 and base["server"]["rss_peak_mb"] > 0
    assert set(bad["attack"]) == {"400"} and not bad["server"]["answers_5xx"]
    assert "| malformed |" in out.with_suffix(".md").read_text()
    assert attack.main(["--url", "http://10.0.0.5:8080", "--seconds", "1"]) == 2  # loopback only


def test_a_stream_faster_than_stream_speed_is_slowed_after_its_burst(recognizer, vad):
    """Finding 4: one stream could make the server process audio as fast as it sent it
    (328 s in one frame); now at most BURST_SECONDS at once, then stream_speed x real time."""
    from runtime.server.stream import BURST_SECONDS

    frames = [(quiet(5.0, i) * 32767).astype("<i2").tobytes() for i in range(10)]  # 50 s of near-silence
    timings = {}
    for speed in (0.0, 10.0):
        srv = serve(recognizer, vad=vad, stream_speed=speed)
        try:
            start = time.monotonic()
            messages, _ = stream_messages(srv.url, frames)
            timings[speed] = time.monotonic() - start
        finally:
            srv.stop()
        assert messages[-1] == {"type": "done", "segments": 0}
    paced = (50.0 - BURST_SECONDS) / 10.0  # seconds the last 20 s of audio take at 10x real time
    assert timings[10.0] >= paced and timings[10.0] > timings[0.0] + 0.5 * paced, timings


def test_a_refused_body_is_freed_at_once(recognizer):
    """A refused 9-MB body stayed referenced by a failed task's exception (a reference
    cycle through asyncio.wait_for), alive until the next cyclic collection: four such
    requests at a time held 40 MB more after every round."""
    import gc
    import tracemalloc

    srv = serve(recognizer)
    body = b"[" + b"[]," * 3_000_000 + b"[]]"
    gc.disable()  # what a cyclic collection would free must not count as freed
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            with connect(srv.url) as s:
                s.sendall(post_json(srv.url, body))
                assert read_response(s)[0] == 400
        time.sleep(0.2)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
        srv.stop()
    assert held < 2e6, f"{held / 1e6:.1f} MB still held after three refused 9-MB bodies"


def test_a_stream_always_ahead_of_stream_speed_is_closed(recognizer, vad, monkeypatch):
    """A sender that bursts minutes of audio and hangs up leaves it in the socket buffers,
    which the server would pace through for minutes holding a stream slot: a stream held
    back without a break for MAX_THROTTLED_S is closed instead."""
    from runtime.server import stream as stream_mod

    monkeypatch.setattr(stream_mod, "MAX_THROTTLED_S", 1.0)
    srv = serve(recognizer, vad=vad, stream_speed=2.0, max_frame_bytes=64 * 1024)
    frames = [(quiet(2.0, i) * 32767).astype("<i2").tobytes() for i in range(40)]  # 80 s sent as fast as possible
    try:
        start = time.monotonic()
        messages, code = stream_messages(srv.url, frames)
        took = time.monotonic() - start
        while srv.app[STATE].stream_slots and time.monotonic() - start < took + 3:
            time.sleep(0.05)
        assert srv.app[STATE].stream_slots == 0  # the slot is free again
    finally:
        srv.stop()
    errors = [m["error"]["code"] for m in messages if m["type"] == "error"]
    assert errors == ["too_fast"] and messages[-1]["type"] == "done" and code == 1008, messages
    assert took < 10  # 10 s burst + 1 s held back at 2x real time: ~6 s, not the 35 s pacing 80 s would take


def test_a_connection_flood_is_a_few_log_lines_not_one_per_connection(recognizer, caplog):
    with caplog.at_level(logging.DEBUG, logger="runtime.server"):
        srv = serve(recognizer, max_connections=20)
        socks = []
        try:
            for _ in range(120):
                s = connect(srv.url)
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
                socks.append(s)
                time.sleep(0.002)
            time.sleep(0.2)
        finally:
            for s in socks:
                s.close()
            srv.stop()
    above_debug = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG and r.name.startswith("runtime.server.conn")]
    assert len(above_debug) == 1 and "reached the connection cap (20)" in above_debug[0], above_debug
