"""deploy/: what can be checked without a Docker engine, a GPU or a cluster.

- Dockerfiles: a structural lint of our own (hadolint is not packaged for Debian): pinned base
  tags, a non-root ``USER`` and a ``HEALTHCHECK`` in the final stage, exec-form ``ENTRYPOINT``/
  ``CMD`` (so SIGTERM reaches the server, not a shell), no ``ADD`` of URLs, every ``COPY``
  source present in the repository and not excluded by ``.dockerignore``, apt without
  recommends and with its lists removed. The lint is shown to catch each problem.
- The systemd unit: ``systemd-analyze verify`` without warnings and ``systemd-analyze
  security`` below 2.0 (skipped where systemd-analyze is absent), and the settings the
  README promises.
- The Kubernetes manifests: parsed with PyYAML; selectors, ports and probes agree with each
  other and with the images.
- ``deploy/healthcheck.py`` against a real ``runtime.serve`` with an API key.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import BUNDLED, REPO

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

DEPLOY = REPO / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("*/Dockerfile"))
SERVE_IMAGES = ("cpu", "gpu", "jetson")  # the images that run python -m runtime.serve
HEALTHCHECK = "/opt/emotech/bin/emotech-healthcheck"  # where the serve images install deploy/healthcheck.py


# ------------------------------------------------------------------ Dockerfiles


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` (simple patterns, no negation) excludes ``path``."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat.rstrip("/")) for pat in patterns for p in prefixes)


def _exec_form(args: str) -> bool:
    try:
        return isinstance(json.loads(args), list)
    except ValueError:
        return False


def lint(text: str, root: Path = REPO) -> list[str]:
    """Problems of a Dockerfile built with ``root`` as its context (empty: none)."""
    ins = instructions(text)
    ignore_file = root / ".dockerignore"
    ignore = [x.strip() for x in ignore_file.read_text().splitlines() if x.strip() and not x.startswith("#")] if ignore_file.is_file() else []
    problems: list[str] = []
    stages: list[str] = []
    final_start = max((i for i, (k, _) in enumerate(ins) if k == "FROM"), default=None)
    if final_start is None:
        return ["no FROM"]
    for i, (key, args) in enumerate(ins):
        if key == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            image = words[0]
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.append(words[2])
            if image not in stages[:-1] and image != "scratch":
                name = image.split("@")[0]
                tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else None
                if "@sha256:" not in image and (tag is None or tag == "latest"):
                    problems.append(f"FROM {image}: pin a tag (not latest) or a digest")
        elif key == "ADD":
            if any(a.startswith(("http://", "https://", "git@")) for a in args.split()):
                problems.append(f"ADD {args}: fetches a URL at build time; download and check it, then COPY")
        elif key == "COPY" and "--from=" not in args:
            for src in [a for a in args.split() if not a.startswith("--")][:-1]:
                if not (root / src).exists():
                    problems.append(f"COPY {src}: not in the build context")
                elif dockerignored(src, ignore):
                    problems.append(f"COPY {src}: excluded by .dockerignore")
        elif key == "RUN" and "apt-get install" in args:
            if "--no-install-recommends" not in args or "rm -rf /var/lib/apt/lists" not in args:
                problems.append("RUN apt-get install: use --no-install-recommends and remove /var/lib/apt/lists in the same layer")
    final = ins[final_start:]
    users = [a for k, a in final if k == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage runs as root: add USER with an unprivileged user")
    checks = [a for k, a in final if k == "HEALTHCHECK"]
    if not checks or checks[-1].upper().startswith("NONE"):
        problems.append("no HEALTHCHECK in the final stage")
    elif not _exec_form(checks[-1].split("CMD", 1)[-1].strip()):
        problems.append("HEALTHCHECK CMD in shell form")
    starts = [(k, a) for k, a in final if k in ("ENTRYPOINT", "CMD")]
    if not starts:
        problems.append("no ENTRYPOINT or CMD")
    for key, args in starts:
        if not _exec_form(args):
            problems.append(f"{key} in shell form: a shell becomes PID 1 and SIGTERM never reaches the server")
    return problems


def test_every_recipe_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} == {"cpu", "gpu", "jetson", "triton"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_lint(path):
    assert lint(path.read_text()) == []


@pytest.mark.parametrize("image", SERVE_IMAGES)
def test_serve_images_check_readiness_and_install_the_probe(image):
    ins = instructions((DEPLOY / image / "Dockerfile").read_text())
    check = [a for k, a in ins if k == "HEALTHCHECK"][-1]
    assert HEALTHCHECK in check and "/readyz" in check
    assert ("COPY", f"deploy/healthcheck.py {HEALTHCHECK}") in ins
    entry = json.loads([a for k, a in ins if k == "ENTRYPOINT"][-1])
    assert entry[:3] == ["python", "-m", "runtime.serve"] and "0.0.0.0" in entry
    assert not any("API_KEY" in a for k, a in ins if k in ("ENV", "ARG")), "no key may be baked into an image"


def test_gpu_images_cache_engines_in_a_volume():
    for image in ("gpu", "jetson"):
        ins = instructions((DEPLOY / image / "Dockerfile").read_text())
        assert ("VOLUME", '["/var/cache/emotech"]') in ins
        assert any(k == "ENV" and "EMOTECH_CACHE=/var/cache/emotech" in a for k, a in ins)
    jetson = (DEPLOY / "jetson" / "Dockerfile").read_text()
    assert "l4t-jetpack:r36.4" in jetson and "startswith('10.3')" in jetson


def test_the_lint_catches_each_problem(tmp_path):
    bad = (
        "FROM python:latest\n"
        "FROM ubuntu\n"
        "ADD https://example.com/model.onnx /m.onnx\n"
        "COPY no_such_dir /x\n"
        "RUN apt-get update && apt-get install -y curl\n"
        "USER root\n"
        "HEALTHCHECK CMD curl -f http://localhost/readyz\n"
        "CMD python -m runtime.serve\n"
    )
    problems = " | ".join(lint(bad, tmp_path))
    for expected in ("FROM python:latest", "FROM ubuntu", "ADD https://", "COPY no_such_dir", "apt-get install",
                     "runs as root", "HEALTHCHECK CMD in shell form", "CMD in shell form"):
        assert expected in problems, problems
    (tmp_path / "tests").mkdir()
    (tmp_path / ".dockerignore").write_text("tests\n")
    assert lint("FROM a:1\nCOPY tests /t\nUSER 1000\nHEALTHCHECK NONE\nCMD [\"x\"]\n", tmp_path) == [
        "COPY tests: excluded by .dockerignore", "no HEALTHCHECK in the final stage"]


# ------------------------------------------------------------------ systemd

UNIT = DEPLOY / "systemd" / "emotech.service"


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_settings():
    s = unit_settings(UNIT.read_text())
    assert s["DynamicUser"] == ["yes"]
    assert s["EnvironmentFile"] == ["/etc/emotech/emotech.env"]
    exec_start = s["ExecStart"][0]
    assert "runtime.serve" in exec_start and "--api-key" not in exec_start
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("KillSignal", "SIGTERM"), ("CapabilityBoundingSet", "")):
        assert s[key] == [value], key
    assert int(s["TimeoutStopSec"][0]) > 30  # the server's default drain timeout
    example = unit_settings((DEPLOY / "systemd" / "emotech.env.example").read_text())
    assert list(example) == ["EMOTECH_API_KEY"]


def _runnable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart's interpreter pointed at this test's Python (verify checks it exists)."""
    path = tmp_path / "emotech.service"
    path.write_text((text or UNIT.read_text()).replace("/opt/emotech/.venv/bin/python", sys.executable))
    return path


needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


@needs_systemd
def test_systemd_analyze_verify(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", str(_runnable_unit(tmp_path))], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stdout + r.stderr
    # the same check reports a misspelt setting (verify exits 0 on those, so stderr is what counts)
    typo = _runnable_unit(tmp_path, UNIT.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(typo)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in r.stderr


@needs_systemd
def test_systemd_analyze_security(tmp_path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(_runnable_unit(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {r.stderr.strip()}")
    score = [line for line in (r.stdout + r.stderr).splitlines() if "Overall exposure level" in line]
    assert score, r.stdout + r.stderr
    assert float(score[0].split(":")[1].split()[0]) <= 2.0, score[0]


# ------------------------------------------------------------------ Kubernetes


def manifests(name: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]
    return {d["kind"]: d for d in docs}


def _container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("name", ["emotech-serve.yaml", "triton.yaml"])
def test_kubernetes_selectors_ports_and_safety(name):
    m = manifests(name)
    dep, svc = m["Deployment"], m["Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] >= 2
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    c = _container(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["terminationGracePeriodSeconds"] > 30 + 5  # drain / exit timeout plus the preStop pause
    assert c["resources"]["limits"]["memory"]


def test_serve_manifest_probes_match_the_image():
    m = manifests("emotech-serve.yaml")
    c = _container(m["Deployment"])
    ready = c["readinessProbe"]["exec"]["command"]
    assert ready[:2] == ["python", HEALTHCHECK] and ready[-1].endswith(":8080/readyz")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["EMOTECH_API_KEY"]["valueFrom"]  # the key from a secret, never a literal
    args = c["args"]
    assert args[args.index("--threads") + 1] == c["resources"]["limits"]["cpu"]
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] < m["Deployment"]["spec"]["replicas"]


def test_triton_manifest_probes_and_shm():
    m = manifests("triton.yaml")
    c = _container(m["Deployment"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["containerPort"] for p in c["ports"]} == {8000, 8001, 8002}
    mounts = {v["mountPath"]: v["name"] for v in c["volumeMounts"]}
    volumes = {v["name"]: v for v in m["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


# ------------------------------------------------------------------ the readiness probe


@pytest.mark.skipif(not (BUNDLED / "emotech.onnx").is_file(), reason="weights/emotech is incomplete")
def test_healthcheck_script_against_a_real_server():
    pytest.importorskip("aiohttp")
    from runtime.recognizer import EmotionRecognizer
    from runtime.server.app import STATE, create_app
    from runtime.server.limits import ServeConfig
    from runtime.server.runner import BackgroundServer

    key = "k" * 32

    def probe(url: str, api_key: str | None) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", **({"EMOTECH_API_KEY": api_key} if api_key else {})}
        return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), url], env=env, capture_output=True, text=True, timeout=30)

    rec = EmotionRecognizer.load(BUNDLED, engine="ort", device="cpu")
    try:
        app = create_app(rec, ServeConfig(api_key=key), warm_up=False)
        with BackgroundServer(app) as srv:
            url = srv.url + "/readyz"
            assert probe(url, key).returncode == 0
            r = probe(url, "wrong" * 8)
            assert r.returncode == 1 and "401" in r.stderr
            assert probe(url, None).returncode == 1
            app[STATE].ready = False  # as while warming up or draining
            r = probe(url, key)
            assert r.returncode == 1 and "503" in r.stderr
        r = probe(url, key)  # stopped: connection refused
        assert r.returncode == 1
    finally:
        rec.close()
