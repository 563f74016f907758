"""`python -m export.evaluate` on a user's manifest and on named sets, through the public
runtime API: metrics, report, confusion PNGs, ECE before calibration, robustness rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export import data
from tests.helpers import DATA_ROOT, encode, requires_data, requires_torch, speechlike

EMO7 = data.load_labelset("emotech7")


def write_manifest(root, n: int = 6) -> str:
    """Rows with audio and text, audio only and text only; paths relative to the CSV."""
    (root / "clips").mkdir()
    rows = ["path,label,text,speaker"]
    for i in range(n):
        label = ("neutral", "angry", "sad")[i % 3]
        (root / "clips" / f"c{i}.flac").write_bytes(encode(speechlike(0.6 + 0.1 * i, seed=i, f0=120 + 30 * i), 16000, "FLAC"))
        text = {0: "Where is the exit?", 1: "Get out of my way!", 2: ""}[i % 3]
        rows.append(f"clips/c{i}.flac,{label},{text},spk{i % 2}")
    rows += [",happy,What a lovely surprise party,", ",neutral,Two tickets please,"]
    path = root / "data" / "test.csv"
    path.parent.mkdir()
    path.write_text("\n".join(rows).replace("clips/", "../clips/") + "\n")
    return str(path)


def test_manifest_evaluation_writes_metrics_report_and_plots(tiny_model_dir, tmp_path, monkeypatch):
    from export.evaluate import main
    from runtime import EmotionRecognizer

    manifest = write_manifest(tmp_path)
    monkeypatch.chdir(tmp_path / "clips")  # paths resolve against the manifest's folder, not the cwd
    out = tmp_path / "eval"
    metrics = main(["--model-dir", str(tiny_model_dir), "--test-manifest", manifest, "--robustness", "--out", str(out), "-q"])
    res = metrics["results"]
    assert list(res) == ["test/audio", "test/text", "test/audio+text"]
    assert (res["test/audio"]["n"], res["test/text"]["n"], res["test/audio+text"]["n"]) == (6, 6, 4)
    assert [res[k]["mode"] for k in res] == ["audio", "text", "audio+text"]
    assert set(metrics["robustness"]) == {f"test/{m}@{c}" for m in ("audio", "audio+text") for c in ("telephone", "noise20", "noise10")}
    assert sorted(p.name for p in out.glob("confusion_*.png")) == ["confusion_test_audio.png", "confusion_test_audio_text.png", "confusion_test_text.png"]
    report = (out / "report.md").read_text()
    assert "## Robustness" in report and "`test/audio`" in report and metrics["command"].startswith("python -m export.evaluate --model-dir")
    assert json.loads((out / "metrics.json").read_text())["results"]["test/audio"]["confusion"] == res["test/audio"]["confusion"]

    # The same numbers from the engine's raw logits: accuracy, ECE at T = 1 and at the spec's T.
    from export.metrics import classification_report, expected_calibration_error, softmax

    rec = EmotionRecognizer.load(tiny_model_dir)
    items = data.load_manifest(manifest, EMO7)
    audio = [rec.prepare(audio=u.path) for u in items if u.path]
    logits = rec.engine.infer(rec.build_feed(audio))
    y = np.array([u.label for u in items if u.path])
    t = rec.spec.temperature["audio"]
    r = res["test/audio"]
    assert r["accuracy"] == classification_report(y, logits.argmax(1), list(rec.labels))["accuracy"]
    assert r["ece_before"] == pytest.approx(expected_calibration_error(softmax(logits), y), abs=1e-6)
    assert r["ece_after"] == pytest.approx(expected_calibration_error(softmax(logits, t), y), abs=1e-6)
    flags = softmax(logits, t).max(1) < rec.spec.uncertain_below["audio"]
    assert r["uncertain"]["coverage"] == pytest.approx(1 - flags.mean())


def test_robustness_rows_are_seeded(tiny_model_dir, tmp_path):
    from export.evaluate import main

    manifest = write_manifest(tmp_path)
    runs = [main(["--model-dir", str(tiny_model_dir), "--test-manifest", manifest, "--modes", "audio", "--robustness", "--out", str(tmp_path / f"e{i}"), "-q", "--seed", str(s)])
            for i, s in enumerate((0, 0, 1))]  # fmt: skip
    key = "test/audio@noise10"
    a, b = (np.array(r["robustness"][key]["confusion"]) for r in runs[:2])
    np.testing.assert_array_equal(a, b)
    assert list(runs[0]["results"]) == ["test/audio"]
    assert runs[0]["robustness"]["test/audio@telephone"]["confusion"] == runs[2]["robustness"]["test/audio@telephone"]["confusion"]  # no randomness
    assert {r["robustness"][key]["ece_after"] for r in runs[:2]} == {runs[0]["robustness"][key]["ece_after"]}


def test_usage_errors(tiny_model_dir, tmp_path, capsys):
    from export.evaluate import main

    with pytest.raises(SystemExit) as e:
        main(["--model-dir", str(tiny_model_dir)])
    assert e.value.code == 2 and "required: --out" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\n,furious\n")
    with pytest.raises(SystemExit) as e:
        main(["--model-dir", str(tiny_model_dir), "--test-manifest", str(bad), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "label 'furious' is not in" in capsys.readouterr().err
    text_only = tmp_path / "t.csv"
    text_only.write_text("path,label,text\n,neutral,hello\n")
    with pytest.raises(SystemExit):
        main(["--model-dir", str(tiny_model_dir), "--test-manifest", str(text_only), "--modes", "audio", "--out", str(tmp_path / "o")])
    assert "no rows to evaluate in mode(s) audio" in capsys.readouterr().err
    (tmp_path / "quiet.wav").write_bytes(encode(np.zeros(16000, dtype=np.float32), 16000, "WAV"))
    silent = tmp_path / "s.csv"
    silent.write_text("path,label\nquiet.wav,neutral\n")
    with pytest.raises(SystemExit) as e:
        main(["--model-dir", str(tiny_model_dir), "--test-manifest", str(silent), "--out", str(tmp_path / "o")])
    assert e.value.code == 1 and "cannot evaluate: " in (err := capsys.readouterr().err) and "quiet.wav" in err and "silent" in err
    with pytest.raises(SystemExit) as e:
        main(["--model-dir", str(tmp_path / "nowhere"), "--test-manifest", str(silent), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "not a model folder" in capsys.readouterr().err


def test_kiosk_requests_are_plain_requests_with_a_few_emotional_controls():
    from export.evalsets import kiosk_items

    items = kiosk_items(EMO7)
    labels = [EMO7.labels[u.label] for u in items]
    texts = [u.text for u in items]
    assert labels.count("neutral") >= 100 and len(set(texts)) == len(texts) and all(u.path is None for u in items)
    assert set(labels) - {"neutral"} == {"happy", "sad", "angry", "fearful", "disgust", "surprised"}
    assert sum(t.endswith("?") for t, lab in zip(texts, labels) if lab == "neutral") >= 40  # questions: read as surprise before


def test_named_sets_on_fixture_corpora(tmp_path):
    from export.evalsets import named_sets
    from tests.corpus_fixtures import GOEMOTIONS, make_goemotions, make_nemo, make_ravdess

    make_ravdess(tmp_path, actors=(19, 20, 21, 22)), make_nemo(tmp_path, speakers=("KD0", "IC0", "SM0")), make_goemotions(tmp_path)
    sets = {s.name: s for s in named_sets(["audio", "audio+same_label_text", "neutral_audio+emotional_text", "nemo_test", "nemo_all", "ravdess_val+own_text", "kiosk"], tmp_path, EMO7)}
    assert sets["audio"].mode == "audio" and len(sets["audio"]) == 2 * 8  # actors 21-22, 4 emotions x 2 statements
    paired = sets["audio+same_label_text"]
    by_text = dict(GOEMOTIONS)
    goe = {"neutral": "neutral", "joy": "happy", "anger": "angry", "disgust": "disgust"}
    assert all(goe[by_text[t]] == EMO7.labels[y] for t, y in zip(paired.text, paired.labels))
    ne = sets["neutral_audio+emotional_text"]
    assert len(ne) == 4 * 3 and {EMO7.labels[y] for y in ne.labels} == {"happy", "angry", "disgust"}  # 4 neutral clips x 3 emotions
    assert all(goe[by_text[t]] == EMO7.labels[y] for t, y in zip(ne.text, ne.labels))  # labelled with the text's label
    assert len(sets["nemo_test"]) == 2 * 6 and len(sets["nemo_all"]) == 3 * 6 and sets["nemo_all"].text[0] is None
    assert sets["ravdess_val+own_text"].mode == "audio+text" and sets["kiosk"].mode == "text"
    with pytest.raises(ValueError, match="unknown evaluation set"):
        named_sets(["iemocap_test"], tmp_path, EMO7)


def test_coverage_curve():
    from export.metrics import coverage_curve

    conf = np.array([0.2, 0.4, 0.6, 0.8])
    correct = np.array([False, True, True, True])
    rows = coverage_curve(conf, correct, (0.0, 0.5, 0.9))
    assert [(r["coverage"], r["accuracy"], r["accuracy_below"], r["n"]) for r in rows] == [(1.0, 0.75, None, 4), (0.5, 1.0, 0.5, 2), (0.0, None, 0.75, 0)]


@requires_data
@requires_torch
@pytest.mark.slow
def test_shipped_model_on_nemo_and_kiosk_through_the_cli(tmp_path):
    """The before-retraining rows of docs/training.md reproduce (RAVDESS-trained weights on
    nEMO's test speakers, the kiosk requests)."""
    from export.evaluate import main

    m = main(["--data-root", str(DATA_ROOT), "--sets", "nemo_test", "kiosk", "--out", str(tmp_path), "-q"])["results"]
    assert m["nemo_test"]["n"] == 1078 and m["kiosk"]["n"] == 146
    assert m["nemo_test"]["unweighted_accuracy"] == pytest.approx(0.2225, abs=2e-3)
    assert m["kiosk"]["per_class"]["neutral"]["recall"] == pytest.approx(33 / 129, abs=1e-9)


def test_model_card_renders_the_new_evaluation_sections(model_copy, tmp_path):
    """A folder evaluated with --robustness, with a leave-one-corpus-out run in
    eval/cross_corpus/, gets robustness, uncertain, cross-corpus and limitations sections."""
    from export.evaluate import main
    from export.model_card import data_lines, licence_text, render

    manifest = write_manifest(tmp_path)
    main(["--model-dir", str(model_copy), "--test-manifest", manifest, "--robustness", "--out", str(model_copy / "eval"), "-q"])
    main(["--model-dir", str(model_copy), "--test-manifest", manifest, "--modes", "audio", "--out", str(model_copy / "eval" / "cross_corpus" / "a_to_b"), "-q"])
    card = render(model_copy)
    for heading in ("## Robustness", "## Uncertain flag", "## Cross-corpus (leave one corpus out)", "## Intended use and limitations"):
        assert heading in card, heading
    assert "| a_to_b |" in card and "test, audio only" in card
    tr = {"data": {"audio_corpora": ["ravdess", "nemo"], "text_corpora": ["goemotions", "meld"]}, "audio_train_items_per_corpus": {"ravdess": 1080, "nemo": 2324},
          "config": {"audio_balance": "corpus_class", "fusion_targets": "evidence"}, "augment": {}}  # fmt: skip
    lines = "\n".join(data_lines(tr))
    assert "nEMO acted speech (Polish, 9 actors)" in lines and "2324 training clips" in lines and "MELD" in lines
    licence = licence_text(tr)
    assert "CC BY-NC-SA 4.0" in licence and "GPL-3.0" in licence


def test_model_card_states_the_deployment_prior(model_copy, tmp_path):
    """A folder with a prior in spec.json gets a deployment-prior section with its offsets; one without gets none."""
    import json

    from export.evaluate import main
    from export.model_card import render

    manifest = write_manifest(tmp_path)
    main(["--model-dir", str(model_copy), "--test-manifest", manifest, "--out", str(model_copy / "eval"), "-q"])
    assert "## Deployment prior" not in render(model_copy)
    spec_file = model_copy / "spec.json"
    spec = json.loads(spec_file.read_text())
    record = {"sets": ["ravdess_val"], "n": 120, "offset": 1.25, "predicted_neutral_without": 0.1, "predicted_neutral_with": 0.25}
    spec["calibration"]["prior_log_odds"] = {"audio": {"neutral": 1.25}}
    spec["calibration"]["prior"] = {"neutral_share": 0.25, "command": "python -m export.prior --model-dir m", "modes": {"audio": record}}
    spec_file.write_text(json.dumps(spec))
    card = render(model_copy)
    assert "## Deployment prior" in card and "| audio | 1.25 | ravdess_val (120) | 10.0 / 25.0 |" in card
    assert "25.0 % of the utterances are neutral" in card and "`python -m export.prior --model-dir m`" in card
