"""export.merged: an ensemble's merged inference form computes the ensemble's function,
keeps padding invariance, and is what the ONNX export and the torch engine run."""

from __future__ import annotations

import pytest

from tests.helpers import TINY_VARIANT, assert_padding_never_changes_a_result, build_tiny_model, requires_torch

pytestmark = requires_torch


def tiny_ensemble(n: int, **overrides):
    from export.model import EmoTechEnsemble

    models = [build_tiny_model(seed=20 + i, **overrides) for i in range(n)]
    for m in models[1:]:
        m.text.load_state_dict(models[0].text.state_dict())
    return EmoTechEnsemble.from_members(models).eval()


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("overrides", [{}, TINY_VARIANT], ids=["default-pools", "pools-2-2-2"])
def test_merged_equals_the_ensemble_in_every_mode(members, overrides):
    import torch

    from export.merged import merge_ensemble
    from export.onnx import example_inputs

    ens = tiny_ensemble(members, **overrides)
    merged = merge_ensemble(ens)
    feed = example_inputs(ens, batch=6, seconds=2.1, tokens=13, seed=3)
    feed["has_audio"][::3] = 0  # items 0 and 3: text only
    feed["has_text"][1::3] = 0  # items 1 and 4: audio only
    with torch.no_grad():
        want = ens(**feed)
        got = merged(**feed)
        torch.testing.assert_close(merged.audio(*ens.mfcc(feed["audio"], feed["audio_lengths"])),
                                   ens.audio(*ens.mfcc(feed["audio"], feed["audio_lengths"])), atol=1e-5, rtol=1e-5)  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(want[0], want[1])  # the modes really differ


def test_merged_padding_never_changes_a_result():
    from export.merged import merge_ensemble

    assert_padding_never_changes_a_result(merge_ensemble(tiny_ensemble(3)), batch=4, seconds=2.4, tokens=14, seed=5)


def test_ensemble_exports_merged_and_matches_the_trained_ensemble(tmp_path):
    import onnx

    from export.onnx import export_all

    ens = tiny_ensemble(3)
    diffs = export_all(ens, tmp_path)  # check_graph compares ONNX Runtime with `ens` itself
    assert diffs["fused"] < 1e-4
    graph = onnx.load(str(tmp_path / "emotech.onnx")).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    groups = sorted(next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs)
    # group 1: each member's first 2-D conv, the stacked first strided conv, the text conv;
    # grouped by member: the two later 2-D convs and the second strided conv
    assert groups == [1, 1, 1, 1, 1, 3, 3, 3], groups
    assert sum(n.op_type == "LSTM" for n in graph.node) == 2 * 3 + 2  # audio per member, text


def test_inference_form_merges_only_ensembles():
    from export.merged import MergedEnsemble, inference_form

    ens = tiny_ensemble(2)
    assert isinstance(inference_form(ens), MergedEnsemble)
    single = build_tiny_model(seed=1)
    assert inference_form(single) is single
