"""``python -m export.triton``: a generated model repository served by the real Triton server
(the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel) on 127.0.0.1, called with
``tritonclient``, against ``EmotionRecognizer.predict`` on the same clips.

One server runs for the module (it is ready in a few seconds); the SIGTERM/SIGKILL tests
start their own. The configs of the GPU backends (onnxruntime, tensorrt_plan), which
cannot run here, are parsed with Triton's own protobuf schema. Skipped only when the
wheel or the client is not installed (the ``[triton]`` extra).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from export.triton import RepoOptions, write_repository
from export.triton import main as triton_main
from export.triton_serve import ServeOptions, TritonUnavailableError, find_triton, server_command, server_env
from runtime.audio import read_audio, to_model_rate
from runtime.recognizer import EmotionRecognizer
from runtime.spec import load_spec
from tests.helpers import BUNDLED, DATA_ROOT, speechlike

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'emotech[triton]'")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

try:
    TRITON = find_triton()
except TritonUnavailableError as e:  # the only reason to skip: the wheel is absent
    TRITON = None
    WHY = str(e)
needs_triton = pytest.mark.skipif(TRITON is None, reason=WHY if TRITON is None else "")
needs_bundled = pytest.mark.skipif(not (BUNDLED / "emotech.onnx").is_file(), reason="weights/emotech is incomplete")

ROOT = Path(__file__).resolve().parents[1]
ESPEAK = ROOT / "examples" / "espeak_angry_words.wav"
ESPEAK_TEXT = "I can't believe you did this to me. This is the worst day ever!"  # examples/README.md
SR = 16000
RAVDESS = Path(os.environ.get("EMOTECH_DATA", DATA_ROOT)) / "ravdess"
TOL = 1e-4  # |Triton score - EmotionRecognizer.predict score|, the acceptance bound


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m export.triton --serve`` in a subprocess, its log in a file."""

    def __init__(self, repo: Path, log: Path, grpc: bool = False):
        self.http_port = free_port()
        self.log = log
        cmd = [sys.executable, "-m", "export.triton", "--serve", str(repo), "--http-port", str(self.http_port)]
        if grpc:
            cmd += ["--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.url = f"127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        # closed after use: Triton's shutdown waits (up to --exit-timeout-s) for open HTTP connections
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            client = httpclient.InferenceServerClient(self.url)
            try:
                if client.is_server_ready():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            finally:
                client.close()
            time.sleep(0.2)
        raise TimeoutError(f"Triton not ready within {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    if TRITON is None or not (BUNDLED / "emotech.onnx").is_file():
        pytest.skip(WHY if TRITON is None else "weights/emotech is incomplete")
    out = tmp_path_factory.mktemp("triton") / "repo"
    return write_repository(BUNDLED, out, RepoOptions(max_delay_ms=20.0))


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = Server(repo, tmp_path_factory.mktemp("triton_log") / "server.log", grpc=True)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.url, concurrency=16, network_timeout=120.0, connection_timeout=120.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def api() -> EmotionRecognizer:
    rec = EmotionRecognizer.load(BUNDLED, engine="ort", device="cpu")
    yield rec
    rec.close()


def clip_16k(path: Path) -> np.ndarray:
    """A file as the mono 16 kHz float32 array a Triton client sends (the runtime's decoding)."""
    samples, rate, label = read_audio(path)
    return to_model_rate(samples, rate, load_spec(BUNDLED).frontend, label)


def request_inputs(audio: np.ndarray | None, texts: list | None) -> list:
    """``audio`` as FP32 [B, N] (a 1-D clip becomes [1, N]) and ``texts`` as BYTES [B, 1]."""
    inputs = []
    if audio is not None:
        a = audio[None, :] if audio.ndim == 1 else audio
        inp = httpclient.InferInput("audio", list(a.shape), np_to_triton_dtype(a.dtype))
        inp.set_data_from_numpy(a, binary_data=True)
        inputs.append(inp)
    if texts is not None:
        t = np.array([[x.encode() if isinstance(x, str) else x] for x in texts], dtype=np.object_)
        inp = httpclient.InferInput("text", list(t.shape), "BYTES")
        inp.set_data_from_numpy(t, binary_data=True)
        inputs.append(inp)
    return inputs


def infer(client, audio: np.ndarray | None, texts: list | None):
    result = client.infer("emotech", request_inputs(audio, texts))
    return result.as_numpy("scores"), [x.decode() for x in result.as_numpy("label").reshape(-1)]


def expected(api: EmotionRecognizer, audio: np.ndarray | None, text: str | None) -> tuple[np.ndarray, str]:
    p = api.predict(audio=audio, text=text, sample_rate=SR if audio is not None else None)
    return np.array([p.scores[name] for name in api.labels]), p.label


# ------------------------------------------------------------------ parity with the API


CLIPS = {"espeak": lambda: clip_16k(ESPEAK), "generated": lambda: speechlike(2.7, seed=3)}
MODES = ("audio+text", "audio", "text")


@needs_triton
@needs_bundled
@pytest.mark.parametrize("clip", sorted(CLIPS))
@pytest.mark.parametrize("mode", MODES)
def test_scores_equal_the_api(client, api, clip, mode):
    audio = CLIPS[clip]() if "audio" in mode else None
    text = ESPEAK_TEXT if "text" in mode else None
    scores, labels = infer(client, audio, None if text is None else [text])
    want, label = expected(api, audio, text)
    assert scores.shape == (1, len(api.labels)) and scores.dtype == np.float32
    np.testing.assert_allclose(scores[0], want, atol=TOL, rtol=0)
    assert labels == [label]
    assert abs(float(scores.sum()) - 1.0) < 1e-5


@needs_triton
@needs_bundled
def test_empty_text_is_no_transcript(client, api):
    audio = CLIPS["generated"]()
    with_empty, _ = infer(client, audio, [""])
    without, _ = infer(client, audio, None)
    np.testing.assert_allclose(with_empty, without, atol=1e-6)
    np.testing.assert_allclose(with_empty[0], expected(api, audio, None)[0], atol=TOL, rtol=0)


@needs_triton
@needs_bundled
def test_rows_of_one_request_are_items(client, api):
    """A request's batch dimension: [2, N] audio with [2, 1] texts gives two answers, each the
    API's for its own row (one row audio+text, the other audio with an empty text)."""
    a, b = speechlike(2.0, seed=5), speechlike(2.0, seed=6, f0=210.0)
    scores, labels = infer(client, np.stack([a, b]), ["what a lovely surprise", ""])
    for row, (audio, text) in enumerate([(a, "what a lovely surprise"), (b, None)]):
        want, label = expected(api, audio, text)
        np.testing.assert_allclose(scores[row], want, atol=TOL, rtol=0)
        assert labels[row] == label


@needs_triton
@needs_bundled
def test_label_names_come_from_the_config(client, api):
    """``label_filename``: Triton's classification extension names the classes in spec order."""
    out = httpclient.InferRequestedOutput("scores", binary_data=False, class_count=len(api.labels))
    result = client.infer("emotech", request_inputs(None, ["what a lovely surprise"]), outputs=[out])
    entries = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("scores").reshape(-1)]
    want, _ = expected(api, None, "what a lovely surprise")
    for entry in entries:
        score, index, name = entry.split(":")
        assert api.labels[int(index)] == name
        assert abs(float(score) - want[int(index)]) < 1e-5  # the extension prints 6 decimals
    assert [e.split(":")[2] for e in entries] == [api.labels[i] for i in np.argsort(-want, kind="stable")]


@needs_triton
@needs_bundled
def test_concurrent_requests_are_batched(client, api):
    """16 requests of different lengths at once: Triton's statistics show fewer executions of
    ``emotech`` than inferences (the dynamic batcher grouped ragged audio), and every answer
    is still the API's for its own clip."""
    clips = [speechlike(1.0 + 0.25 * i, seed=100 + i) for i in range(16)]
    texts = [None if i % 3 == 0 else f"sentence number {i} is rather upsetting" for i in range(16)]

    def stats():
        s = client.get_inference_statistics("emotech")["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    before = stats()
    jobs = [client.async_infer("emotech", request_inputs(c, None if t is None else [t])) for c, t in zip(clips, texts)]
    results = [j.get_result() for j in jobs]
    # Triton updates its statistics after it has sent a response, so the last request's
    # count can lag its answer by a few milliseconds: poll for up to 10 s.
    deadline = time.monotonic() + 10.0
    after = stats()
    while after[0] - before[0] < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
        after = stats()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions < inferences, f"{inferences} inferences in {executions} executions: nothing was batched"
    for clip, text, result in zip(clips, texts, results):
        np.testing.assert_allclose(result.as_numpy("scores")[0], expected(api, clip, text)[0], atol=TOL, rtol=0)


# ------------------------------------------------------------------ bad input

TOO_LONG = 30.0 + 0.1  # s; the model's (and runtime.serve's) maximum is 30 s


def _bad_cases() -> dict:
    nan_clip = speechlike(1.0, seed=7)
    nan_clip[100] = np.nan
    inf_clip = speechlike(1.0, seed=7)
    inf_clip[5] = np.inf
    return {
        "wrong dtype": (lambda: request_inputs(speechlike(1.0, seed=7).astype(np.float64), None), "FP64"),
        "int audio": (lambda: request_inputs((speechlike(1.0) * 30000).astype(np.int16), None), "INT16"),
        "too long audio": (lambda: request_inputs(speechlike(TOO_LONG, seed=8), None), "the maximum is 30 s"),
        "too long text": (lambda: request_inputs(None, ["a" * 2001]), "the maximum is 2000"),
        "empty audio": (lambda: request_inputs(np.zeros((1, 0), np.float32), None), "empty"),
        "nan audio": (lambda: request_inputs(nan_clip, None), "NaN or infinite"),
        "inf audio": (lambda: request_inputs(inf_clip, ["some words"]), "NaN or infinite"),
        "short audio": (lambda: request_inputs(speechlike(0.1, seed=9), None), "minimum is 0.25 s"),
        "silent audio": (lambda: request_inputs(np.zeros(SR, np.float32), None), "silent"),
        "empty text alone": (lambda: request_inputs(None, [""]), "no words"),
        "text not utf-8": (lambda: request_inputs(None, [b"\xff\xfe caf\xe9"]), "UTF-8"),
        "rows differ": (lambda: request_inputs(np.stack([speechlike(1.0, seed=1)] * 2), ["one text"]), "batch size does not match"),
        "no input": (list, "input"),
    }


@needs_triton
@needs_bundled
@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_bad_input_is_a_triton_error_and_the_server_keeps_answering(client, server, case):
    make, message = _bad_cases()[case]
    with pytest.raises(InferenceServerException) as err:
        client.infer("emotech", make())
    assert message in str(err.value)
    assert err.value.status() == "400", str(err.value)
    assert server.proc.poll() is None
    scores, _ = infer(client, None, ["still answering"])
    assert scores.shape == (1, 7)


@needs_triton
@needs_bundled
def test_a_bad_request_in_a_batch_fails_alone(client, api):
    """A NaN clip sent together with good ones gets its error; the others their scores."""
    good = [speechlike(1.5, seed=20 + i) for i in range(5)]
    bad = speechlike(1.5, seed=30)
    bad[10] = np.nan
    jobs = [client.async_infer("emotech", request_inputs(c, None)) for c in [*good[:2], bad, *good[2:]]]
    outcomes = []
    for j in jobs:
        try:
            outcomes.append(j.get_result().as_numpy("scores")[0])
        except InferenceServerException as e:
            outcomes.append(e)
    assert isinstance(outcomes[2], InferenceServerException) and "NaN" in str(outcomes[2])
    for clip, got in zip(good, [*outcomes[:2], *outcomes[3:]]):
        np.testing.assert_allclose(got, expected(api, clip, None)[0], atol=TOL, rtol=0)


# ------------------------------------------------------------------ real data


@needs_triton
@needs_bundled
@pytest.mark.requires_data
@pytest.mark.skipif(not RAVDESS.is_dir(), reason=f"RAVDESS not found at {RAVDESS} (../shared/data, or $EMOTECH_DATA)")
def test_a_ravdess_clip_with_its_sentence(client, api):
    """An angry RAVDESS test-actor clip (statement 01) with its sentence, as the acceptance check."""
    path = RAVDESS / "Actor_21" / "03-01-05-02-01-01-21.flac"
    sentence = "Kids are talking by the door"
    scores, labels = infer(client, clip_16k(path), [sentence])
    p = api.predict(audio=str(path), text=sentence)
    np.testing.assert_allclose(scores[0], [p.scores[n] for n in api.labels], atol=TOL, rtol=0)
    assert labels == [p.label]


# ------------------------------------------------------------------ the launcher


@needs_triton
@needs_bundled
def test_grpc_and_metrics_endpoints(server, api):
    """gRPC answers the same scores; the metrics port serves Triton's Prometheus text."""
    import urllib.request

    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    cmdline = server.log.read_text()
    grpc_port = int(re.search(r"--grpc-port=(\d+)", cmdline).group(1))
    metrics_port = int(re.search(r"--metrics-port=(\d+)", cmdline).group(1))
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    t = grpcclient.InferInput("text", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[b"what a lovely surprise"]], dtype=np.object_))
    long_text = grpcclient.InferInput("text", [1, 1], "BYTES")
    long_text.set_data_from_numpy(np.array([[b"a" * 2001]], dtype=np.object_))
    try:
        scores = c.infer("emotech", [t]).as_numpy("scores")
        with pytest.raises(InferenceServerException) as err:
            c.infer("emotech", [long_text])
    finally:
        c.close()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "maximum is 2000" in str(err.value)
    np.testing.assert_allclose(scores[0], expected(api, None, "what a lovely surprise")[0], atol=TOL, rtol=0)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        assert 'nv_inference_request_success{model="emotech",version="1"}' in r.read().decode()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie (exited, not yet reaped by its parent) counts as gone
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


@needs_triton
@needs_bundled
def test_sigterm_stops_the_server_cleanly(repo, tmp_path):
    srv = Server(repo, tmp_path / "server.log")
    srv.wait_ready()
    children = _children(srv.proc.pid)
    backends = Path(re.search(r"--backend-directory=(\S+)", srv.log.read_text()).group(1))
    assert children and backends.is_dir()
    assert srv.stop(signal.SIGTERM) == 0
    assert all(_gone(pid) for pid in children)
    assert not backends.parent.exists(), "the temporary backend folder was left behind"
    assert "exited with status 0" in srv.log.read_text()


@needs_triton
@needs_bundled
def test_the_server_dies_with_a_killed_launcher(repo, tmp_path):
    srv = Server(repo, tmp_path / "server.log")
    srv.wait_ready()
    children = _children(srv.proc.pid)
    backends = Path(re.search(r"--backend-directory=(\S+)", srv.log.read_text()).group(1))
    srv.stop(signal.SIGKILL)
    assert children and all(_gone(pid) for pid in children), "tritonserver outlived its launcher"
    shutil.rmtree(backends.parent)  # a killed launcher cannot remove its temporary folder


@needs_triton
def test_server_environment_and_command(tmp_path):
    """The set-up the launcher does: the stub beside the backend, the interpreter first on
    PATH (the isolated stub finds its site-packages from it), the wheel's libraries on
    LD_LIBRARY_PATH, this source tree for model.py, gRPC and metrics off unless asked."""
    from export.triton_serve import prepare_backends

    backends = prepare_backends(TRITON, tmp_path)
    assert (backends / "python" / "triton_python_backend_stub").is_file()
    assert (backends / "python" / "libtriton_python.so").is_file()
    env = server_env(TRITON, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert str(TRITON.libs) in env["LD_LIBRARY_PATH"].split(os.pathsep) and env["LD_LIBRARY_PATH"].endswith("/opt/x")
    assert Path(env["EMOTECH_SOURCE_ROOT"]) == ROOT
    cmd = server_command(TRITON, tmp_path, backends, ServeOptions(http_port=9000))
    assert "--allow-grpc=false" in cmd and "--allow-metrics=false" in cmd and "--http-address=127.0.0.1" in cmd
    cmd = server_command(TRITON, tmp_path, backends, ServeOptions(http_port=9000, grpc_port=9001, metrics_port=9002))
    assert "--grpc-port=9001" in cmd and "--metrics-port=9002" in cmd and "--allow-grpc=false" not in cmd


def test_serve_options_are_checked():
    with pytest.raises(ValueError, match="no authentication"):
        ServeOptions(host="0.0.0.0")
    ServeOptions(host="0.0.0.0", insecure_no_auth=True)
    with pytest.raises(ValueError, match="must differ"):
        ServeOptions(http_port=8000, grpc_port=8000)
    with pytest.raises(ValueError, match="ports"):
        ServeOptions(http_port=70000)
    with pytest.raises(ValueError, match="exit_timeout_s"):
        ServeOptions(exit_timeout_s=-1)


@needs_triton
def test_a_python_without_a_stub_is_named():
    with pytest.raises(TritonUnavailableError, match=r"no Python-backend stub for Python 2\.7 \(it has .*3\.11"):
        find_triton("2.7")


def test_serve_cli_refuses_a_missing_repository(tmp_path, capsys):
    assert triton_main(["--serve", str(tmp_path / "nothing"), "--http-port", "9000"]) == 2
    assert "no model repository" in capsys.readouterr().err


# ------------------------------------------------------------------ the generated configs


def config_schema():
    """Triton's model-config protobuf module (shipped with tritonclient[grpc])."""
    return pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")


def parse_config(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), config_schema().ModelConfig())


@needs_bundled
@pytest.mark.parametrize("backend", ["python", "onnxruntime", "tensorrt"])
def test_generated_configs_parse_with_the_right_fields(tmp_path, backend):
    """The onnxruntime and tensorrt_plan configs are for GPU boxes (the wheel's server has
    only the Python backend): they are checked here against Triton's config schema."""
    options = RepoOptions(backend=backend, instances=3, max_batch=16, max_delay_ms=7.5, max_queue=99, build_plan=False)
    out = write_repository(BUNDLED, tmp_path / "repo", options)
    spec = load_spec(BUNDLED)
    front = parse_config(out / "emotech" / "config.pbtxt")
    fused = parse_config(out / "emotech_fused" / "config.pbtxt")
    dt = config_schema().DataType.Value

    assert front.name == "emotech" and front.backend == "python" and front.max_batch_size == 16
    audio, text = front.input
    assert (audio.name, audio.data_type, list(audio.dims), audio.optional, audio.allow_ragged_batch) == ("audio", dt("TYPE_FP32"), [-1], True, True)
    assert (text.name, text.data_type, list(text.dims), text.optional) == ("text", dt("TYPE_STRING"), [1], True)
    scores, label = front.output
    assert (scores.name, scores.data_type, list(scores.dims), scores.label_filename) == ("scores", dt("TYPE_FP32"), [7], "labels.txt")
    assert (label.name, label.data_type, list(label.dims)) == ("label", dt("TYPE_STRING"), [1])
    assert (out / "emotech" / "labels.txt").read_text().split() == list(spec.labels)
    assert front.dynamic_batching.max_queue_delay_microseconds == 7500
    assert front.dynamic_batching.default_queue_policy.max_queue_size == 99
    assert [(g.kind, g.count) for g in front.instance_group] == [(front.instance_group[0].KIND_CPU, 3)]
    params = {k: v.string_value for k, v in front.parameters.items()}
    assert params["fused_model"] == "emotech_fused" and params["max_audio_seconds"] == "30" and params["max_text_chars"] == "2000"
    assert params["fused_device"] == ("cpu" if backend == "python" else "cuda")

    assert fused.name == "emotech_fused" and fused.max_batch_size == 16
    assert not fused.HasField("dynamic_batching")  # emotech sends it whole batches
    names = {i.name: i for i in fused.input}
    assert list(names) == ["audio", "audio_lengths", "tokens", "token_lengths", "has_audio", "has_text"]
    assert names["tokens"].data_type == dt("TYPE_INT64") and list(names["tokens"].dims) == [-1]
    assert list(names["audio_lengths"].dims) == [1] and list(names["audio_lengths"].reshape.shape) == []
    assert [(o.name, list(o.dims)) for o in fused.output] == [("logits", [7])]
    kind = fused.instance_group[0]
    assert kind.count == 3 and kind.kind == (kind.KIND_CPU if backend == "python" else kind.KIND_GPU)
    files = sorted(p.relative_to(out / "emotech_fused" / "1").as_posix() for p in (out / "emotech_fused" / "1").rglob("*") if p.is_file())
    if backend == "python":
        assert fused.backend == "python" and files == ["model.py", "model/emotech.onnx", "model/spec.json", "model/tokenizer.json"]
    elif backend == "onnxruntime":
        assert fused.backend == "onnxruntime" and fused.default_model_filename == "model.onnx" and files == ["model.onnx"]
        digest = hashlib.sha256((out / "emotech_fused" / "1" / "model.onnx").read_bytes()).hexdigest()
        assert digest == spec.files["emotech.onnx"]
    else:
        assert fused.platform == "tensorrt_plan" and fused.default_model_filename == "model.plan" and files == []
        # the plan's profile minimums, which emotech pads short batches up to
        assert (params["min_audio_samples"], params["min_tokens"]) == ("4000", "1")


@needs_bundled
def test_generation_refuses_to_overwrite_and_checks_options(tmp_path, capsys):
    out = tmp_path / "repo"
    assert triton_main(["--out", str(out), "--model-dir", str(BUNDLED)]) == 0
    assert triton_main(["--out", str(out), "--model-dir", str(BUNDLED)]) == 2
    assert "--force" in capsys.readouterr().err
    assert triton_main(["--out", str(out), "--model-dir", str(BUNDLED), "--force", "--max-batch", "8"]) == 0
    assert "max_batch_size: 8" in (out / "emotech" / "config.pbtxt").read_text()
    for bad in (["--instances", "0"], ["--max-delay-ms", "nan"], ["--max-batch", "0"], ["--threads", "-1"]):
        assert triton_main(["--out", str(tmp_path / "other"), "--model-dir", str(BUNDLED), *bad]) == 2
    assert not (tmp_path / "other").exists()



@needs_triton
@needs_bundled
def test_triton_loadgen_smoke():
    """``benchmarks.triton_loadgen --spawn``: writes a repository, serves it, answers, counts
    the batches Triton formed, stops the server cleanly."""
    from benchmarks import triton_loadgen

    args = triton_loadgen.build_parser().parse_args(
        ["--spawn", "--clients", "4", "--duration", "1.5", "--warmup", "0", "--clips", "2", "--clip-seconds", "1.5",
         "--text", "hello there", "--", "--max-delay-ms", "10"])
    report = triton_loadgen.run(args)
    assert report["requests_ok"] > 0 and report["errors"] == {}
    executions = report["batch_size_histogram"]
    assert sum(int(k) * v for k, v in executions.items()) == report["requests_ok"]
    assert report["server"]["server"] == {"max_batch": 32, "max_delay_ms": 10.0}
    assert report["server_exit_code"] == 0
    assert report["cpu_ms_per_request"] > 0 and report["rss_mb"]["after_run"] > 100  # tritonserver + two Python stubs


@needs_bundled
def test_padding_to_a_plan_minimum_keeps_the_scores(api):
    """``emotech`` pads short batches up to a TensorRT plan's profile minimums
    (``pad_to_minimum``); the model is length-aware, so the logits do not move."""
    from runtime.triton_backend import pad_to_minimum

    items = [api.prepare(speechlike(0.3, seed=11), "hi", SR), api.prepare(None, "what a day", None)]
    feed = api.build_feed(items)
    padded = pad_to_minimum(feed, min_samples=feed["audio"].shape[1] + 4000, min_tokens=feed["tokens"].shape[1] + 9)
    assert padded["audio"].shape[1] == feed["audio"].shape[1] + 4000 and padded["tokens"].shape[1] == feed["tokens"].shape[1] + 9
    assert not padded["audio"][:, feed["audio"].shape[1]:].any() and not padded["tokens"][:, feed["tokens"].shape[1]:].any()
    np.testing.assert_allclose(api.engine.infer(padded), api.engine.infer(feed), atol=1e-5, rtol=0)
    assert pad_to_minimum(feed, 1, 1)["audio"] is feed["audio"]  # already long enough: untouched


@needs_triton
@needs_bundled
def test_example_client(server, api):
    """examples/triton_client.py, as its docstring runs it."""
    r = subprocess.run([sys.executable, "examples/triton_client.py", str(ESPEAK), "--text", ESPEAK_TEXT, "--url", server.url],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    p = api.predict(audio=str(ESPEAK), text=ESPEAK_TEXT)
    assert lines[0] == p.label
    printed = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert printed.keys() == set(api.labels)
    for name, score in printed.items():
        assert abs(score - p.scores[name]) < 1e-4
