"""ONNX export: ORT vs PyTorch within 1e-4 on scores at batch 1 and 5 with different
lengths; dynamic axes; a front-end TensorRT 10.3 can parse (no STFT/DFT ops), in FP32."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import BUNDLED, requires_torch

pytestmark = requires_torch
ATOL = 1e-4  # on softmax scores


def scores_parity(model, path) -> float:
    import onnxruntime as ort
    import torch

    from export.onnx import example_inputs

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seconds, tokens in ((1, 0.9, 5), (5, 3.3, 31)):
        feed = example_inputs(model, batch, seconds, tokens, seed=batch)
        with torch.no_grad():
            ref = torch.softmax(model(**feed), dim=1).numpy()
        logits = sess.run(["logits"], {k: v.numpy() for k, v in feed.items()})[0]
        got = np.exp(logits - logits.max(1, keepdims=True))
        got /= got.sum(1, keepdims=True)
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def test_tiny_model_onnx_matches_pytorch(tiny_model_dir):
    from export.bundle import load_torch_model

    model, _ = load_torch_model(tiny_model_dir)
    assert scores_parity(model, tiny_model_dir / "emotech.onnx") <= ATOL


def test_audio_options_variant_onnx_matches_pytorch(tmp_path):
    from export.onnx import GRAPHS, export_all
    from tests.helpers import TINY_VARIANT, build_tiny_model

    model = build_tiny_model(seed=3, **TINY_VARIANT)
    from export.op_support import check_file

    export_all(model, tmp_path, names=("fused",))
    path = tmp_path / GRAPHS["fused"].filename
    assert scores_parity(model, path) <= ATOL
    assert check_file(path) == []  # still a graph TensorRT 10.3 parses


def test_graph_has_no_stft_and_dynamic_axes(tiny_model_dir):
    import onnx

    g = onnx.load(str(tiny_model_dir / "emotech.onnx"))
    ops = {n.op_type for n in g.graph.node}
    assert not ops & {"STFT", "DFT", "MelWeightMatrix", "HannWindow"}
    assert {"Conv", "MatMul", "LSTM"} <= ops
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.graph.input}
    assert dims["audio"] == ["batch", "samples"] and dims["tokens"] == ["batch", "tokens"]
    # FP32 everywhere in the exported fp32 graph (the front-end must never be FP16)
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in g.graph.initializer if i.data_type in (1, 10))


@pytest.mark.skipif(not (BUNDLED / "emotech.onnx").is_file(), reason="bundled weights not built")
def test_shipped_onnx_matches_pytorch():
    from export.bundle import load_torch_model

    model, _ = load_torch_model(BUNDLED)
    assert scores_parity(model, BUNDLED / "emotech.onnx") <= ATOL


def test_branch_exports_keep_time_axes_dynamic(tiny_model_dir, tmp_path):
    """The CLI writes both branches; each matches PyTorch at batch 1 and 5 with other lengths
    than the export example (a frozen time axis or a padding-reading LSTM would fail)."""
    import shutil

    from export.onnx import main

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    main(["--model-dir", str(folder), "--graphs", "audio", "text"])
    from runtime.spec import load_spec

    spec = load_spec(folder)  # hashes of the new files verify
    assert spec.graphs["audio"]["fp32"] == "audio_branch.onnx" and spec.graphs["text"]["fp32"] == "text_branch.onnx"


def test_model_card_is_current():
    """MODEL_CARD.md is what export.model_card writes from the folder as it is (file hashes,
    metrics): re-exporting or re-quantising without regenerating it fails here."""
    from export.model_card import render

    assert (BUNDLED / "MODEL_CARD.md").read_text() == render(BUNDLED), "run: python -m export.model_card --model-dir weights/emotech"
