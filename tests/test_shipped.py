"""The shipped weights on the real test splits: the acceptance bounds, and the metrics
committed in weights/emotech/eval/metrics.json reproduce from a fresh run."""

from __future__ import annotations

import json

import pytest

from tests.helpers import BUNDLED, DATA_ROOT, requires_data

pytestmark = [requires_data, pytest.mark.slow, pytest.mark.skipif(not (BUNDLED / "spec.json").is_file(), reason="no bundled weights")]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    from export.evaluate import main

    out = tmp_path_factory.mktemp("eval")
    main(["--data-root", str(DATA_ROOT), "--out", str(out)])
    return json.loads((out / "metrics.json").read_text())["results"]


def test_audio_target(fresh):
    assert fresh["audio"]["unweighted_accuracy"] >= 0.60  # RAVDESS actors 21-24, 7 classes


def test_text_target_and_paired_modes(fresh):
    assert fresh["text"]["macro_f1"] >= 0.50  # GoEmotions Ekman test
    for mode in ("audio+own_text", "audio+same_label_text"):
        assert fresh[mode]["n"] == 240


def test_committed_metrics_reproduce(fresh):
    committed = json.loads((BUNDLED / "eval" / "metrics.json").read_text())["results"]
    for mode, r in committed.items():
        for key in ("unweighted_accuracy", "macro_f1", "ece_before", "ece_after"):
            assert fresh[mode][key] == pytest.approx(r[key], abs=2e-3), (mode, key)

