"""The model zoo's scikit-learn systems: in-graph features against a plain numpy/librosa
reference, batch padding, the composed ONNX graph against scikit-learn, missing modalities
through the runtime, the training entry point, and the shipped zoo folders.

Tolerances (written down per output):
- frame features vs the numpy reference: 2e-3 relative to each feature's range over the clip,
  except the roll-off (a float32 cumulative sum may put a frame's roll-off one DFT bin away:
  1/256 of Nyquist) and the MFCCs (``TOL_MFCC``, as tests/test_frontend.py vs librosa);
- summary statistics vs scipy / numpy.percentile on the same frames: 1e-4 relative;
- a padded batch vs each item alone: 1e-4 absolute on standardised features;
- text features vs scikit-learn's TF-IDF + SVD: 1e-5 absolute;
- scikit-learn classifier vs its skl2onnx graph on identical features: 1e-4 absolute on
  the per-modality logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.frontend import FrontendConfig, dct_matrix, mel_filterbank
from tests.helpers import requires_data, speechlike

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

TOL_MFCC = 1e-2


# ------------------------------------------------------------------ a plain reference


def reference_frames(y: np.ndarray, fe: FrontendConfig, cfg) -> np.ndarray:
    """The per-frame features of one clip, written the obvious way with numpy's FFT (float64)."""
    n_fft, hop = fe.n_fft, fe.hop_length
    padded = np.pad(y.astype(np.float64), n_fft // 2)
    frames = fe.num_frames(y.size)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    nf = fe.n_freqs
    freqs = np.arange(nf) / (nf - 1)
    width = (nf - 1) // cfg.spectral_bands
    rows, prev_share = [], None
    power = np.empty((frames, nf))
    for t in range(frames):
        x = padded[t * hop : t * hop + n_fft]
        spec = np.abs(np.fft.rfft(x * window)) ** 2
        power[t] = spec
        mag = np.sqrt(spec)
        total = mag.sum() + 1e-10
        sub = (x**2).reshape(cfg.energy_blocks, -1).sum(1)
        p = sub / (sub.sum() + 1e-10)
        bands = np.array([spec[b * width : (b + 1) * width].sum() for b in range(cfg.spectral_bands)])
        bands[-1] += spec[-1]
        q = bands / (bands.sum() + 1e-10)
        share = mag / total
        centroid = (mag * freqs).sum() / total
        cum = np.cumsum(mag)
        rows.append([
            np.sum(x[1:] * x[:-1] < 0) / (n_fft - 1),
            10 * np.log10(np.mean(x**2) + 1e-10),
            -(p * np.log2(p + 1e-10)).sum(),
            centroid,
            np.sqrt(((freqs - centroid) ** 2 * mag).sum() / total),
            -(q * np.log2(q + 1e-10)).sum(),
            0.0 if prev_share is None else ((share - prev_share) ** 2).sum(),
            np.sum(cum < cfg.rolloff * cum[-1]) / (nf - 1),
        ])  # fmt: skip
        prev_share = share
    mel = power @ mel_filterbank(fe).T.astype(np.float64)
    db = 10 * np.log10(np.maximum(mel, fe.amin))
    db = np.maximum(db, db.max() - fe.top_db)
    import dataclasses

    mfcc = db @ dct_matrix(dataclasses.replace(fe, n_mfcc=cfg.n_mfcc)).T.astype(np.float64)
    base = np.concatenate([np.array(rows), mfcc], axis=1)
    nxt = np.minimum(np.arange(frames) + 1, frames - 1)
    prv = np.maximum(np.arange(frames) - 1, 0)
    return np.concatenate([base, (base[nxt] - base[prv]) / 2], axis=1)


def reference_stats(frames: np.ndarray, percentiles=(0.01, 0.99)) -> np.ndarray:
    from scipy import stats

    lo, hi = (100 * p for p in percentiles)
    mn, mx = frames.min(0), frames.max(0)
    return np.concatenate([
        frames.mean(0), frames.std(0), stats.skew(frames, axis=0), stats.kurtosis(frames, axis=0), mn,
        np.percentile(frames, lo, axis=0), np.median(frames, axis=0), np.percentile(frames, hi, axis=0), mx, mx - mn,
    ])  # fmt: skip


def ours(module, clips):
    from runtime.audio import pad_batch

    audio, lengths = pad_batch(clips)
    with torch.no_grad():
        return module(torch.from_numpy(audio), torch.from_numpy(lengths)).numpy().astype(np.float64)


# ------------------------------------------------------------------------- features


@pytest.mark.parametrize("seconds,seed", [(0.3, 0), (1.7, 1)])
def test_frame_features_match_the_numpy_reference(seconds, seed):
    from export.zoo.features import SPECTRAL, AudioFeatureConfig, AudioStatistics

    fe, cfg = FrontendConfig(), AudioFeatureConfig()
    y = speechlike(seconds, seed=seed)
    module = AudioStatistics(fe, cfg).eval()
    with torch.no_grad():
        got, n = module.frame_features(torch.from_numpy(y)[None], torch.tensor([y.size]))
    got = got[0, : int(n[0])].numpy().astype(np.float64)
    ref = reference_frames(y, fe, cfg)
    assert got.shape == ref.shape
    k = len(SPECTRAL)
    mfcc_cols = list(range(k, k + cfg.n_mfcc)) + list(range(2 * k + cfg.n_mfcc, 2 * (k + cfg.n_mfcc)))
    rolloff_cols = [SPECTRAL.index("spectral_rolloff"), k + cfg.n_mfcc + SPECTRAL.index("spectral_rolloff")]
    for j in range(ref.shape[1]):
        diff = np.abs(got[:, j] - ref[:, j]).max()
        if j in mfcc_cols:
            assert diff <= TOL_MFCC, (j, diff)
        elif j in rolloff_cols:
            assert diff <= 1.0 / 256 + 1e-6, (j, diff)
        else:
            scale = max(np.ptp(ref[:, j]), np.abs(ref[:, j]).max(), 1e-6)
            assert diff <= 2e-3 * scale, (j, diff, scale)


def test_statistics_match_scipy_and_numpy_percentile():
    from export.zoo.features import summarise

    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=(3, 57, 5))  # skewed, heavy-ish tails
    lengths = np.array([57, 31, 26])
    got = summarise(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(got[i], reference_stats(x[i, :n]), rtol=1e-4, atol=1e-9)


def test_padded_batch_equals_each_clip_alone_and_has_the_named_columns():
    from export.zoo.features import AudioStatistics, feature_names

    fe = FrontendConfig()
    module = AudioStatistics(fe).eval()
    clips = [speechlike(s, seed=i) * g for i, (s, g) in enumerate([(2.0, 1.0), (0.41, 0.01), (1.37, 0.3)])]
    batch = ours(module, clips)
    assert batch.shape == (3, len(feature_names(module.cfg))) == (3, 420)
    scale = np.abs(batch).max(0) + 1e-3
    for i, clip in enumerate(clips):
        alone = ours(module, [clip])[0]
        np.testing.assert_allclose(batch[i] / scale, alone / scale, atol=1e-4)
    # silence (the placeholder of a text-only item) gives finite features
    assert np.isfinite(ours(module, [np.zeros(fe.min_samples, np.float32)])).all()


def test_text_features_match_scikit_learn_in_both_forms():
    from export.zoo.features import TextBag, fit_text_features, text_features_reference
    from runtime.text import TextEncoder
    from tests.helpers import BUNDLED

    enc = TextEncoder(BUNDLED / "tokenizer.json", 32)
    rng = np.random.default_rng(0)
    words = ["happy", "sad", "angry", "wow", "gross", "scared", "okay", "table", "chair", "the", "a", "of", "i", "you", "so", "very", "not", "really"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(200)] + ["", "zzyzx"]
    ids, lengths = enc.encode(texts)
    docs = [row[:n] for row, n in zip(ids, lengths)]
    for dim in (None, 6):
        tables = fit_text_features(docs[:150], 30522, dim, 2, (0, 101, 102), seed=0)
        bag = TextBag(tables)
        with torch.no_grad():
            got = bag(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
        ref = text_features_reference(docs, tables)
        assert got.shape == (len(texts), tables.dim)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        assert np.all(got[-2:] == 0), "no kept id (empty text, an unseen word): zeros"
        # the same text padded in a longer batch
        with torch.no_grad():
            alone = bag(torch.from_numpy(ids[:1, : lengths[0]]), torch.from_numpy(lengths[:1])).numpy()
        np.testing.assert_allclose(alone[0], got[0], atol=1e-6)


# ------------------------------------------------------- a tiny corpus, a tiny folder

LABEL_WORDS = {
    "neutral": "okay fine table chair",
    "happy": "happy joy great delighted",
    "sad": "sad cry lost lonely",
    "angry": "angry hate furious mad",
    "fearful": "scared afraid fear terrified",
    "disgust": "gross disgusting yuck nasty",
    "surprised": "wow surprised shocked unexpected",
}
RAVDESS_CODES = {"neutral": "01", "happy": "03", "sad": "04", "angry": "05", "fearful": "06", "disgust": "07", "surprised": "08"}
GOEMOTIONS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
TO_GOEMOTIONS = {"neutral": "neutral", "happy": "joy", "sad": "sadness", "angry": "anger", "fearful": "fear", "disgust": "disgust", "surprised": "surprise"}


def tiny_clip(label_index: int, seed: int) -> np.ndarray:
    """A clip whose pitch and loudness give away its class (0.4-0.7 s)."""
    rng = np.random.default_rng(seed)
    return speechlike(0.4 + 0.3 * rng.random(), seed=seed, f0=90 + 45 * label_index) * (0.3 + 0.1 * label_index)


def tiny_text(label: str, rng) -> str:
    words = LABEL_WORDS[label].split() + ["the", "a", "it", "was", "so"]
    return " ".join(rng.choice(words, 5))


@pytest.fixture(scope="module")
def tiny_data_root(tmp_path_factory):
    """RAVDESS-named synthetic clips (24 actors x 7 classes) and GoEmotions-format texts."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("data")
    labels = list(RAVDESS_CODES)
    for actor in range(1, 25):
        folder = root / "ravdess" / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for k, label in enumerate(labels):
            name = f"03-01-{RAVDESS_CODES[label]}-01-01-01-{actor:02d}.wav"
            sf.write(folder / name, tiny_clip(k, seed=100 * actor + k), 16000, subtype="PCM_16")
    text = root / "text" / "goemotions_ekman"
    text.mkdir(parents=True)
    (text / "labels.txt").write_text("\n".join(GOEMOTIONS) + "\n")
    rng = np.random.default_rng(0)
    for name, n in (("train.tsv", 280), ("dev.tsv", 70), ("test.tsv", 70)):
        rows = [f"{tiny_text(labels[i % 7], rng)}\t{GOEMOTIONS.index(TO_GOEMOTIONS[labels[i % 7]])}\tid{i}" for i in range(n)]
        (text / name).write_text("\n".join(rows) + "\n")
    nemo = root / "nemo"
    (nemo / "SP0").mkdir(parents=True)
    lines = ["path,label,text,speaker,gender"]
    for k, label in enumerate(labels[:5]):
        sf.write(nemo / "SP0" / f"clip{k}.wav", tiny_clip(k, seed=7000 + k), 16000, subtype="PCM_16")
        lines.append(f"SP0/clip{k}.wav,{label},zdanie,SP0,f")
    (nemo / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_zoo_dir(tiny_data_root, tmp_path_factory):
    """``python -m export.zoo.train_sklearn --system lr`` on the tiny corpus."""
    from export.zoo import train_sklearn

    out = tmp_path_factory.mktemp("zoo") / "tiny-lr"
    train_sklearn.main(["--system", "lr", "--out", str(out), "--data-root", str(tiny_data_root), "--text-min-df", "1", "-q"])
    return out


def _session_outputs(model_dir, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def test_trained_folder_runs_every_modality_mode_through_the_runtime(tiny_zoo_dir):
    from export.zoo.graph import FusionParams, ScoreKind, fuse_reference
    from runtime import EmotionRecognizer
    from runtime.spec import load_spec

    spec = load_spec(tiny_zoo_dir)
    assert spec.raw["model"]["architecture"] == "SklearnLogisticRegression"
    assert set(spec.raw["outputs"]) == {"audio_logits", "text_logits"}
    assert "weights" not in spec.raw and spec.graphs == {"fused": {"fp32": "model.onnx"}}
    rec = EmotionRecognizer.load(tiny_zoo_dir, engine="ort")
    try:
        labels = list(rec.labels)
        clips = [tiny_clip(k, seed=9000 + k) for k in range(7)]
        texts = [tiny_text(lab, np.random.default_rng(k)) for k, lab in enumerate(labels)]
        both = rec.predict(audio=clips, text=texts, sample_rate=16000)
        audio_only = rec.predict(audio=clips, sample_rate=16000)
        text_only = rec.predict(text=texts)
        for preds, mods in ((both, ("audio", "text")), (audio_only, ("audio",)), (text_only, ("text",))):
            assert [p.modalities for p in preds] == [mods] * 7
            assert all(abs(sum(p.scores.values()) - 1) < 1e-6 for p in preds)
        # the synthetic classes are separable: each mode gets (almost) all of them
        for preds in (both, audio_only, text_only):
            assert sum(p.label == lab for p, lab in zip(preds, labels)) >= 6
        # logits of each mode are what Fusion defines from the per-modality outputs
        items = [rec.prepare(audio=c, text=t, sample_rate=16000) for c, t in zip(clips, texts)]
        feed = rec.build_feed(items)
        out = _session_outputs(tiny_zoo_dir, feed)
        f = spec.raw["model"]["fusion"]
        params = FusionParams(ScoreKind(f["audio_scores"]["output"], f["audio_scores"]["floor"]),
                              ScoreKind(f["text_scores"]["output"], f["text_scores"]["floor"]),
                              f["audio_temperature"], f["text_temperature"], f["text_weight"])  # fmt: skip
        for ha, ht in ((1, 1), (1, 0), (0, 1)):
            feed["has_audio"][:], feed["has_text"][:] = ha, ht
            got = _session_outputs(tiny_zoo_dir, feed)
            ref = fuse_reference(out["audio_logits"], out["text_logits"], feed["has_audio"], feed["has_text"], params)
            np.testing.assert_allclose(got["logits"], ref, atol=1e-4)
        assert spec.temperature["audio"] == f["audio_temperature"] and spec.temperature["text"] == f["text_temperature"]
    finally:
        rec.close()


def test_a_missing_modality_ignores_its_placeholder_input(tiny_zoo_dir):
    from runtime import EmotionRecognizer

    rec = EmotionRecognizer.load(tiny_zoo_dir, engine="ort")
    try:
        clip = tiny_clip(3, seed=5)
        feed = rec.build_feed([rec.prepare(audio=clip, sample_rate=16000)])
        base = _session_outputs(tiny_zoo_dir, feed)["logits"]
        feed["tokens"] = np.array([[101, 2000, 2001, 102]]); feed["token_lengths"] = np.array([4])
        np.testing.assert_array_equal(_session_outputs(tiny_zoo_dir, feed)["logits"], base)
        feed = rec.build_feed([rec.prepare(text="so happy")])
        base = _session_outputs(tiny_zoo_dir, feed)["logits"]
        feed["audio"] = np.stack([np.resize(clip, feed["audio"].shape[1])]).astype(np.float32)
        np.testing.assert_array_equal(_session_outputs(tiny_zoo_dir, feed)["logits"], base)
    finally:
        rec.close()


def test_trained_folder_records_selection_calibration_and_parity(tiny_zoo_dir):
    import json

    spec = json.loads((tiny_zoo_dir / "spec.json").read_text())
    training = spec["training"]
    assert training["command"].startswith("python -m export.zoo.train_sklearn --system lr")
    assert len(training["audio_selection"]["candidates"]) == 4 and training["audio_selection"]["chosen"]
    parity = training["parity"]
    assert max(parity["classifier_max_abs"].values()) <= parity["tolerances"]["classifier_max_abs"]
    assert all(r["label_agreement"] >= 0.99 for r in parity["end_to_end"].values())
    assert all(0 < t < 100 for t in spec["calibration"]["temperature"].values())
    assert spec["model"]["parameters"]["total"] == sum(v for k, v in spec["model"]["parameters"].items() if k != "total")
    card = (tiny_zoo_dir / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and training["command"] in card


def test_torch_engine_refuses_an_onnx_only_folder_and_names_the_alternative(tiny_zoo_dir):
    from runtime import EmotionRecognizer
    from runtime.errors import EngineUnavailableError

    with pytest.raises(EngineUnavailableError, match="only an ONNX graph.*--engine ort"):
        EmotionRecognizer.load(tiny_zoo_dir, engine="torch", device="cpu")


def test_the_graph_is_flagged_by_the_tensorrt_check_for_its_ml_ops(tiny_zoo_dir):
    """skl2onnx classifiers are ai.onnx.ml ops, which TensorRT's parser does not take."""
    from export.op_support import check_file

    issues = check_file(tiny_zoo_dir / "model.onnx")
    assert {i.op for i in issues} >= {"LinearClassifier"}
    assert sum("custom domain 'ai.onnx.ml'" in i.message for i in issues) == 1, "each opset listed once"
    assert all(i.op not in ("Conv", "MatMul", "Gather") for i in issues)


@pytest.mark.parametrize("system", ["rf", "svm"])
def test_classifier_graphs_match_scikit_learn(system):
    from export.zoo.graph import classifier_parity
    from export.zoo.train_sklearn import SYSTEMS

    rng = np.random.default_rng(1)
    y = np.arange(210) % 7
    x = (rng.normal(size=(210, 12)) + y[:, None] * 0.7).astype(np.float32)
    spec = SYSTEMS[system]
    hp = dict(spec.audio_grid[0], **({"n_estimators": 20} if system == "rf" else {}))
    clf = spec.make("audio", hp, 0).fit(x, y)
    assert classifier_parity(clf, spec.score(hp), x) <= 1e-4
    # the fitted-number count goes to spec.json: plain ints, and the documented formula
    import json

    from export.zoo.features import TextTables
    from export.zoo.train_sklearn import parameter_count

    tables = TextTables(np.zeros(10, np.int64), np.zeros(4, np.float32), None, 1)
    count = json.loads(json.dumps(parameter_count(clf, clf, tables)))
    if system == "svm":
        svc = clf[-1]
        want = 2 * 12 + svc.support_vectors_.size + svc.dual_coef_.size + svc.intercept_.size
    else:
        want = sum(int((t.tree_.children_left != -1).sum()) + 7 * int((t.tree_.children_left == -1).sum()) for t in clf.estimators_)
    assert count == {"audio_classifier": want, "text_classifier": want, "text_features": 3, "total": 2 * want + 3}


def test_compare_tabulates_every_metric_and_reuses_unchanged_results(tiny_zoo_dir, tiny_data_root, tmp_path, capsys):
    import json

    from export.zoo import compare

    out = tmp_path / "cmp"
    compare.main(["--model-dirs", str(tiny_zoo_dir), "--data-root", str(tiny_data_root), "--out", str(out), "-q"])
    stored = json.loads((out / "accuracy.json").read_text())[tiny_zoo_dir.name]
    assert stored["n"] == {"audio": 28, "text": 70, "paired": 28, "nemo": 5}
    for key in ("audio_ua", "text_macro_f1", "paired_ua", "nemo_ua"):
        assert 0.8 <= stored[key] <= 1.0, (key, stored[key])  # the synthetic classes are separable
    assert stored["parameters"] > 0 and stored["graph_mb"] > 0
    table = (out / "table.md").read_text()
    assert f"| `{tiny_zoo_dir.name}` | SklearnLogisticRegression |" in table and table.count("not measured") == 5
    # a second run reuses the stored accuracy (the folder's files are unchanged)
    stored["audio_ua"] = 0.123456
    (out / "accuracy.json").write_text(json.dumps({tiny_zoo_dir.name: stored}))
    compare.main(["--model-dirs", str(tiny_zoo_dir), "--data-root", str(tiny_data_root), "--out", str(out), "-q"])
    assert "| 0.123 |" in (out / "table.md").read_text()


def test_latency_benchmark_runs_a_zoo_folder_unchanged(tiny_zoo_dir, tmp_path):
    import json

    from benchmarks.latency import main

    out = tmp_path / "lat"
    argv = ["--model-dir", str(tiny_zoo_dir), "--engine", "ort", "--precision", "fp32", "--batch", "1,2", "--audio-seconds", "1",
            "--text-words", "4", "--quick", "--no-baseline", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "latency.json").read_text())["results"]
    e2e = [r for r in rows if r["stage"] == "end_to_end"]
    assert sorted(r["batch"] for r in e2e) == [1, 2] and all(r["p50_ms"] > 0 for r in e2e)


@pytest.mark.parametrize("module", ["export.zoo.train_sklearn", "export.zoo.compare"])
def test_zoo_help_reads_cleanly_and_writers_need_their_folder(module):
    from tests.test_cli_help import check_help, run

    check_help(module)
    r = run(module)
    assert r.returncode == 2 and "--out" in r.stderr, r.stderr


# -------------------------------------------------------------- the shipped folders

ZOO_TARGETS = {"seed001-lr": 0.35, "seed001-rf": 0.35, "seed004-svm": 0.40, "seed003-cnn1d": 0.50}  # RAVDESS test audio-only UA (issue 20)
ZOO_RESULTS = "benchmarks/results/intel-xeon-2c/zoo/accuracy.json"


@requires_data
@pytest.mark.parametrize("name", sorted(ZOO_TARGETS))
def test_shipped_zoo_folder_loads_and_reproduces_its_committed_audio_ua(name):
    import json

    from export import data
    from runtime import EmotionRecognizer
    from tests.helpers import DATA_ROOT, REPO

    folder = REPO / "weights" / name
    if not (folder / "spec.json").is_file():
        pytest.skip(f"{folder} is not in this checkout")
    committed = json.loads((REPO / ZOO_RESULTS).read_text())[name]
    rec = EmotionRecognizer.load(folder, engine="ort")  # verifies every file's sha256
    try:
        assert committed["files"] == rec.spec.files, "the committed results are of other files"
        items = data.ravdess_split(DATA_ROOT / "ravdess", data.load_labelset("emotech7"), "test")
        preds = rec.predict(audio=[u.path for u in items])
    finally:
        rec.close()
    y = np.array([u.label for u in items])
    pred = np.array([rec.labels.index(p.label) for p in preds])
    ua = float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))
    assert abs(ua - committed["audio_ua"]) <= 0.002 and ua >= ZOO_TARGETS[name], (ua, committed["audio_ua"])
