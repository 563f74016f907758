"""Corpus loaders on tiny fixture trees that mimic each layout, and label sets as data."""

from __future__ import annotations

import json

import pytest

from export import data
from tests.helpers import DATA_ROOT, encode, requires_data, speechlike

EMO7 = data.load_labelset("emotech7")


def make_iemocap(root):
    """Two sessions in the IEMOCAP release layout with a few utterances each."""
    rows = {
        1: [("Ses01F_impro01_F000", "neu", "Excuse me."), ("Ses01F_impro01_M001", "exc", "Yeah!"),
            ("Ses01F_impro01_F002", "fru", "Ugh, not again."), ("Ses01F_impro01_M003", "xxx", "Hm.")],
        2: [("Ses02M_script01_1_F000", "ang", "Get out!"), ("Ses02M_script01_1_M001", "sad", "I miss her.")],
    }
    for sess, utts in rows.items():
        base = root / f"Session{sess}"
        dialog = utts[0][0].rsplit("_", 1)[0]
        (base / "dialog" / "EmoEvaluation").mkdir(parents=True)
        (base / "dialog" / "transcriptions").mkdir(parents=True)
        (base / "sentences" / "wav" / dialog).mkdir(parents=True)
        evals, trans = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], []
        for i, (utt, emo, text) in enumerate(utts):
            evals += [f"[{i * 3 + 0.5:.4f} - {i * 3 + 2.1:.4f}]\t{utt}\t{emo}\t[2.5000, 3.0000, 3.5000]",
                      f"C-E1:\t{emo};\t()", ""]
            trans.append(f"{utt} [{i * 3 + 0.5:08.4f}-{i * 3 + 2.1:08.4f}]: {text}")
            (base / "sentences" / "wav" / dialog / f"{utt}.wav").write_bytes(encode(speechlike(0.5, seed=i), 16000, "WAV"))
        (base / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(evals))
        (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(trans))


def test_iemocap_layout_four_and_five_class(tmp_path):
    make_iemocap(tmp_path)
    four = data.load_iemocap(tmp_path, data.load_labelset("iemocap4"))
    assert [(u.label, u.text, u.speaker) for u in four] == [
        (0, "Excuse me.", "Ses01F"), (1, "Yeah!", "Ses01M"), (3, "Get out!", "Ses02F"), (2, "I miss her.", "Ses02M"),
    ]
    five = data.load_labelset("iemocap5")
    items = data.load_iemocap(tmp_path, five, sessions=[1])
    assert [five.labels[u.label] for u in items] == ["neutral", "happy", "frustrated"]
    assert all(u.path.endswith(".wav") for u in items)


def test_ravdess_names_and_split(tmp_path):
    for actor in (1, 19, 21):
        d = tmp_path / f"Actor_{actor:02d}"
        d.mkdir()
        for emo in ("01", "02", "05"):
            (d / f"03-01-{emo}-01-02-01-{actor:02d}.flac").write_bytes(b"")
    (tmp_path / "Actor_01" / "03-02-05-01-02-01-01.flac").write_bytes(b"")  # song channel: skipped
    train = data.ravdess_split(tmp_path, EMO7, "train")
    assert [EMO7.labels[u.label] for u in train] == ["neutral", "neutral", "angry"]
    assert train[0].text == "Dogs are sitting by the door" and train[0].speaker == "ravdess_01"
    assert {u.speaker for u in data.ravdess_split(tmp_path, EMO7, "test")} == {"ravdess_21"}
    with pytest.raises(ValueError, match="not a RAVDESS file name"):
        data.parse_ravdess_name("hello.wav")


def test_goemotions_meld_and_normalisation(tmp_path):
    (tmp_path / "labels.txt").write_text("anger\ndisgust\nfear\njoy\nneutral\nsadness\nsurprise\n")
    (tmp_path / "test.tsv").write_text("I’m thrilled\t3\ta\nboth\t3,4\tb\nugh\t1\tc\n")
    items = data.load_goemotions(tmp_path / "test.tsv", EMO7)
    assert [(u.text, EMO7.labels[u.label]) for u in items] == [("I'm thrilled", "happy"), ("ugh", "disgust")]
    assert len(data.load_goemotions(tmp_path / "test.tsv", EMO7, multilabel="first")) == 3
    (tmp_path / "m.csv").write_text('Sr No.,Utterance,Speaker,Emotion\n1,"You\x92re late\x85",Ross,anger\n2,Hi,Joey,neutral\n')
    meld = data.load_meld(tmp_path / "m.csv", EMO7)
    assert meld[0].text == "You're late..." and EMO7.labels[meld[0].label] == "angry"
    assert data.normalize_text("donâ€™t  stop") == "don't stop"


def test_manifest_and_custom_labelset(tmp_path):
    (tmp_path / "a.wav").write_bytes(encode(speechlike(0.5), 16000, "WAV"))
    (tmp_path / "m.csv").write_text("path,label,text,speaker\na.wav,calm,all good,spk1\n")
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"labels": ["calm", "agitated"]}))
    ls = data.load_labelset(str(custom))
    items = data.load_manifest(tmp_path / "m.csv", ls)
    assert items[0].path == str(tmp_path / "a.wav") and items[0].text == "all good" and items[0].label == 0
    (tmp_path / "bad.csv").write_text("path,label\na.wav,furious\n")
    with pytest.raises(ValueError, match="'furious' is not in"):
        data.load_manifest(tmp_path / "bad.csv", ls)
    with pytest.raises(ValueError, match="unknown label set"):
        data.load_labelset("nope")


@requires_data
def test_real_corpora_counts():
    assert len(data.ravdess_split(DATA_ROOT / "ravdess", EMO7, "train")) == 18 * 60
    assert len(data.ravdess_split(DATA_ROOT / "ravdess", EMO7, "test")) == 4 * 60
    test = data.load_goemotions(DATA_ROOT / "text" / "goemotions_ekman" / "test.tsv", EMO7)
    assert 4500 < len(test) < 5427  # single-label rows only
    meld = data.load_meld(DATA_ROOT / "text" / "meld" / "test_sent_emo.csv", EMO7)
    assert len(meld) == 2610


def test_ravdess_splits_never_share_a_speaker_and_test_is_the_same_in_both():
    for scheme, split in data.RAVDESS_SPLITS.items():
        parts = [set(split[s]) for s in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]), scheme
        assert set().union(*parts) == set(range(1, 25)), scheme
    assert data.RAVDESS_SELECTION_SPLIT["test"] == data.RAVDESS_SPLIT["test"]
    assert len(data.RAVDESS_SELECTION_SPLIT["val"]) == 6


def test_nemo_loader_splits_by_speaker_and_leaves_out_the_polish_text(tmp_path):
    from tests.corpus_fixtures import make_nemo

    root = make_nemo(tmp_path)
    every = data.load_nemo(root, EMO7)
    assert len(every) == 4 * 3 * 2 and {u.corpus for u in every} == {"nemo"}
    assert all(u.text is None and u.path.endswith(".wav") and (tmp_path / "nemo").as_posix() in u.path for u in every)
    assert {EMO7.labels[u.label] for u in every} == {"neutral", "happy", "angry"}
    train, val, test = (data.nemo_split(root, EMO7, s) for s in ("train", "val", "test"))
    assert {u.speaker for u in train} == {"nemo_EB0", "nemo_KS0"} and {u.speaker for u in val} == {"nemo_KD0"} and {u.speaker for u in test} == {"nemo_IC0"}
    # a label set without a nEMO map keeps nothing rather than guessing
    four = data.load_labelset("iemocap4")
    assert {four.labels[u.label] for u in data.load_nemo(root, four)} == {"neutral", "happy", "angry"}


def test_nemo_split_is_speaker_independent_and_balanced_by_gender():
    parts = [set(data.NEMO_SPLIT[s]) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(data.NEMO_SPEAKERS) and len(data.NEMO_SPEAKERS) == 9
    female = {"EB0", "IC0", "KD0", "MK0"}  # nEMO's four actresses (manifest gender column)
    for split in ("val", "test"):
        assert len(set(data.NEMO_SPLIT[split]) & female) == 1 and len(data.NEMO_SPLIT[split]) == 2, split


@requires_data
def test_real_nemo_manifest_matches_the_split():
    import csv
    from collections import Counter

    rows = list(csv.DictReader((DATA_ROOT / "nemo" / "manifest.csv").open(encoding="utf-8")))
    genders = {r["speaker"]: r["gender"] for r in rows}
    assert {s for s, g in genders.items() if g == "female"} == {"EB0", "IC0", "KD0", "MK0"}
    items = data.load_nemo(DATA_ROOT / "nemo", EMO7)
    assert len(items) == len(rows) == 4481
    sizes = {s: len(data.nemo_split(DATA_ROOT / "nemo", EMO7, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 2324, "val": 1079, "test": 1078}
    for speaker in (*data.NEMO_SPLIT["val"], *data.NEMO_SPLIT["test"]):  # every emotion, about 90 clips each
        counts = Counter(EMO7.labels[u.label] for u in items if u.speaker == f"nemo_{speaker}")
        assert set(counts) == {"neutral", "happy", "sad", "angry", "fearful", "surprised"} and min(counts.values()) >= 89


def test_load_corpora_keeps_the_corpus_of_every_item(tmp_path):
    from export.config import DataConfig
    from tests.corpus_fixtures import make_goemotions, make_nemo, make_ravdess

    make_ravdess(tmp_path), make_nemo(tmp_path), make_goemotions(tmp_path)
    cfg = DataConfig(data_root=str(tmp_path), audio_corpora=("ravdess", "nemo"), text_corpora=("goemotions",))
    corpora = data.load_corpora(cfg, EMO7)
    for split, want in (("train", {"ravdess_01", "ravdess_02", "nemo_EB0", "nemo_KS0"}), ("val", {"ravdess_19", "nemo_KD0"})):
        items = corpora.audio[split]
        assert {u.speaker for u in items} == want, split
        assert all(u.corpus == u.speaker.split("_")[0] for u in items)
    assert not any("21" in u.speaker or "IC0" in u.speaker for s in corpora.audio.values() for u in s)  # test speakers never load
    assert {u.corpus for u in corpora.text["train"]} == {"goemotions"} and len(corpora.text["val"]) == 12
    with pytest.raises(FileNotFoundError, match="no nEMO manifest at .*empty"):
        data.load_corpora(DataConfig(data_root=str(tmp_path / "empty"), audio_corpora=("nemo",), text_corpora=()), EMO7)
    with pytest.raises(FileNotFoundError, match="no train audio for ravdess under .*empty"):
        data.load_corpora(DataConfig(data_root=str(tmp_path / "empty"), text_corpora=()), EMO7)


def test_manifest_corpus_column_and_text_only_rows(tmp_path):
    (tmp_path / "a.wav").write_bytes(encode(speechlike(0.5), 16000, "WAV"))
    (tmp_path / "m.csv").write_text("path,label,text,corpus\na.wav,angry,,call_centre\n,neutral,Where is gate 4?,\n")
    a, t = data.load_manifest(tmp_path / "m.csv", EMO7)
    assert (a.corpus, a.text, a.path) == ("call_centre", None, str(tmp_path / "a.wav"))
    assert (t.corpus, t.text, t.path, EMO7.labels[t.label]) == ("manifest", "Where is gate 4?", None, "neutral")
    (tmp_path / "bad.csv").write_text("path,label,text\n,neutral,\n")
    with pytest.raises(ValueError, match="bad.csv:2: a row needs a path, a text or both"):
        data.load_manifest(tmp_path / "bad.csv", EMO7)


@requires_data
def test_meld_text_is_normalised_in_every_split():
    """MELD's cp1252 bytes read as Latin-1 (\\x92 for an apostrophe, \\x85 for an ellipsis) and
    typographic punctuation come out as plain ASCII punctuation."""
    bad = set("\u2018\u2019\u201c\u201d\u2013\u2014\u2026") | {chr(c) for c in range(0x80, 0xA0)}
    for split in ("train", "val", "test"):
        items = data.text_split(DATA_ROOT, "meld", EMO7, split)
        assert len(items) > 1000
        hits = [u.text for u in items if set(u.text) & bad]
        assert not hits, hits[:3]


@pytest.mark.parametrize(
    "text, plain",
    [
        ("Where is the bathroom?", True), ("Who exactly are their volunteers? The IRA?", True), ("How do I get to gate 5?", True),
        ("What?", False), ("Really?!", False), ("wow, how did you do that?", False), ("Are you serious?", False),
        ("Wait, what vacation are we talking about?", False), ("I can't believe you did this?", False), ("No question here.", False),
    ],
)  # fmt: skip
def test_plain_questions_are_questions_without_a_mark_of_surprise(text, plain):
    assert data.is_plain_question(text) is plain


def test_goemotions_plain_questions_train_as_neutral_only_when_asked(tmp_path):
    from export.config import DataConfig
    from tests.corpus_fixtures import make_ravdess

    make_ravdess(tmp_path)
    folder = tmp_path / "text" / "goemotions_ekman"
    folder.mkdir(parents=True)
    (folder / "labels.txt").write_text("anger\ndisgust\nfear\njoy\nneutral\nsadness\nsurprise\n")
    rows = ["Where is the gate?\t6\ta", "What?!\t6\tb", "Oh wow, you won?\t6\tc", "Why is the sky blue?\t3\td", "I did not expect that.\t6\te"]
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("\n".join(rows) + "\n")
    neutral, surprised, happy = (EMO7.labels.index(k) for k in ("neutral", "surprised", "happy"))
    for policy, first in (("surprise", surprised), ("neutral", neutral)):
        corpora = data.load_corpora(DataConfig(data_root=str(tmp_path), text_corpora=("goemotions",), goemotions_questions=policy), EMO7)
        # only the plain question labelled surprise moves; a joy question and surprise statements keep their labels
        for split in ("train", "val"):
            assert [u.label for u in corpora.text[split]] == [first, surprised, surprised, happy, surprised], (policy, split)
    with pytest.raises(ValueError, match="goemotions_questions"):
        DataConfig(data_root=str(tmp_path), goemotions_questions="maybe")
    four = data.LabelSet("four", ("happy", "sad", "angry", "calm"), EMO7.maps)
    with pytest.raises(ValueError, match="needs the labels surprised and neutral"):
        data.relabel_plain_questions([], four)
