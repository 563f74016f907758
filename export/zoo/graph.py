"""The fused ONNX graph of a scikit-learn system, on the runtime's fused contract.

    audio, audio_lengths, tokens, token_lengths, has_audio, has_text      (runtime.engines.base.FUSED_INPUTS)
      -> Featurizer (torch, exported)        audio_features (B, 420), text_features (B, dim)
      -> audio / text classifier (skl2onnx)  per-modality scores (B, K)
      -> Fusion (torch, exported)            logits, audio_logits, text_logits

The three parts are joined with ``onnx.compose.merge_models``. Every modality mode runs the
same graph: ``Fusion`` picks, per item, the audio scores (audio only), the text scores (text
only), or their late fusion (both): ``log_softmax(audio / T_audio) + text_weight *
log_softmax(text / T_text)``, a weighted product of the two calibrated distributions.
``audio_logits`` and ``text_logits`` are extra outputs (declared in ``spec.json`` under
``outputs``), calibrated by the spec's ``audio`` and ``text`` temperatures.

A classifier's scores are ``log(p + floor)`` of its probabilities (logistic regression,
random forest) or its one-vs-rest decision function (SVM; no Platt scaling: the temperature
does the scaling). The floor keeps a zero random-forest vote finite.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import compose
from torch import nn

from export.onnx import FUSED_AXES, FUSED_INPUTS, OPSET
from export.zoo.features import AudioFeatureConfig, AudioStatistics, TextBag, TextTables
from runtime.engines.base import MODALITY_OUTPUTS
from runtime.frontend import FrontendConfig

ML_OPSET = 3  # ai.onnx.ml opset of the skl2onnx classifiers (ONNX Runtime runs 1-5)
EXTRA_OUTPUTS = {
    MODALITY_OUTPUTS["audio"]: "per-modality audio scores (every item; calibrate with the 'audio' temperature)",
    MODALITY_OUTPUTS["text"]: "per-modality text scores (every item; calibrate with the 'text' temperature)",
}
OUTPUTS = ("logits", *EXTRA_OUTPUTS)


@dataclass(frozen=True)
class ScoreKind:
    """How a classifier's ONNX output becomes a modality's scores."""

    output: str  # "proba" (scores = log(p + floor)) or "decision" (scores = the decision function)
    floor: float = 0.0  # added to probabilities before the log

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "floor": self.floor}


@dataclass(frozen=True)
class FusionParams:
    """Late fusion of the two modalities (``Fusion``)."""

    audio: ScoreKind
    text: ScoreKind
    audio_temperature: float = 1.0  # divides the audio scores before the log-softmax
    text_temperature: float = 1.0  # divides the text scores before the log-softmax
    text_weight: float = 1.0  # weight of the text log-probabilities against the audio ones

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "log_softmax(audio_logits / audio_temperature) + text_weight * log_softmax(text_logits / text_temperature)",
            "audio_scores": self.audio.to_dict(),
            "text_scores": self.text.to_dict(),
            "audio_temperature": self.audio_temperature,
            "text_temperature": self.text_temperature,
            "text_weight": self.text_weight,
        }


def scores(clf: Any, x: np.ndarray, kind: ScoreKind) -> np.ndarray:
    """A fitted scikit-learn classifier's scores on features ``x`` (the graph's reference)."""
    if kind.output == "proba":
        return np.log(clf.predict_proba(x) + kind.floor)
    return clf.decision_function(x)


def fuse_reference(za: np.ndarray, zt: np.ndarray, has_audio: np.ndarray, has_text: np.ndarray, p: FusionParams) -> np.ndarray:
    """``Fusion`` in numpy (float64)."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    both = log_softmax(za / p.audio_temperature) + p.text_weight * log_softmax(zt / p.text_temperature)
    a, t = has_audio[:, None] > 0.5, has_text[:, None] > 0.5
    return np.where(a & t, both, np.where(a, za, zt))


class Featurizer(nn.Module):
    """The fused inputs -> audio and text features; the two flags are passed on for ``Fusion``."""

    def __init__(self, frontend: FrontendConfig, audio_cfg: AudioFeatureConfig, tables: TextTables):
        super().__init__()
        self.audio = AudioStatistics(frontend, audio_cfg)
        self.text = TextBag(tables)

    def forward(self, audio, audio_lengths, tokens, token_lengths, has_audio, has_text):
        return self.audio(audio, audio_lengths), self.text(tokens, token_lengths), has_audio + 0.0, has_text + 0.0


class Fusion(nn.Module):
    """Per-modality classifier outputs -> ``logits`` by each item's modality mode (see module doc)."""

    def __init__(self, params: FusionParams):
        super().__init__()
        self.params = params

    def _scores(self, x: torch.Tensor, kind: ScoreKind) -> torch.Tensor:
        return torch.log(x + kind.floor) if kind.output == "proba" else x

    def forward(self, audio_out, text_out, has_audio, has_text):
        p = self.params
        za, zt = self._scores(audio_out, p.audio), self._scores(text_out, p.text)
        both = torch.log_softmax(za / p.audio_temperature, dim=1) + p.text_weight * torch.log_softmax(zt / p.text_temperature, dim=1)
        a, t = has_audio[:, None] > 0.5, has_text[:, None] > 0.5
        return torch.where(a & t, both, torch.where(a, za, zt)), za, zt


def export_module(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], axes: dict[str, dict[int, str]]) -> onnx.ModelProto:
    """A torch module as an ONNX model (legacy exporter, ``export.onnx.OPSET``)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), args, buf, input_names=inputs, output_names=outputs, dynamic_axes=axes,
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def featurizer_graph(featurizer: Featurizer) -> onnx.ModelProto:
    sr = featurizer.audio.frontend_cfg.sample_rate
    args = (torch.zeros(2, sr), torch.tensor([sr, sr // 2]), torch.tensor([[101, 2000, 102], [101, 102, 0]]),
            torch.tensor([3, 2]), torch.ones(2), torch.ones(2))  # fmt: skip
    outputs = ["audio_features", "text_features", "has_audio_flag", "has_text_flag"]
    axes = {k: FUSED_AXES[k] for k in FUSED_INPUTS} | {k: {0: "batch"} for k in outputs}
    return export_module(featurizer, args, list(FUSED_INPUTS), outputs, axes)


def fusion_graph(params: FusionParams, num_classes: int) -> onnx.ModelProto:
    inputs = ["audio_scores", "text_scores", "has_audio_flag", "has_text_flag"]
    args = (torch.full((2, num_classes), 1.0 / num_classes), torch.full((2, num_classes), 1.0 / num_classes), torch.ones(2), torch.ones(2))
    axes = {k: {0: "batch"} for k in (*inputs, *OUTPUTS)}
    return export_module(Fusion(params), args, inputs, list(OUTPUTS), axes)


def classifier_graph(clf: Any, num_features: int, input_name: str) -> onnx.ModelProto:
    """A fitted scikit-learn classifier (or pipeline) as ONNX: ``input_name`` -> ``label``,
    ``probabilities`` (for an SVC without probability estimates: its decision function)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    final = clf.steps[-1][1] if hasattr(clf, "steps") else clf
    return to_onnx(
        clf, initial_types=[(input_name, FloatTensorType([None, num_features]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET}, options={id(final): {"zipmap": False}},
    )  # fmt: skip


def _same_versions(*models: onnx.ModelProto) -> None:
    """Give every model the same IR version and opset imports, as ``merge_models`` requires."""
    ir = max(m.ir_version for m in models)
    opsets: dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    for m in models:
        m.ir_version = ir
        del m.opset_import[:]
        m.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))


def compose_graph(
    featurizer: Featurizer, audio_clf: Any, text_clf: Any, params: FusionParams, num_classes: int, metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """The fused graph (see the module doc), checked with ``onnx.checker``."""
    keep_io = {"rename_inputs": False, "rename_outputs": False}  # internal names only: the io_map names stay
    feat = compose.add_prefix(featurizer_graph(featurizer), "features/", **keep_io)
    audio = compose.add_prefix(classifier_graph(audio_clf, featurizer.audio.num_features, "features"), "audio_clf/")
    text = compose.add_prefix(classifier_graph(text_clf, featurizer.text.dim, "features"), "text_clf/")
    fusion = compose.add_prefix(fusion_graph(params, num_classes), "fusion/", **keep_io)
    _same_versions(feat, audio, text, fusion)
    m = compose.merge_models(feat, audio, io_map=[("audio_features", "audio_clf/features")],
                             outputs=["text_features", "has_audio_flag", "has_text_flag", "audio_clf/probabilities"])  # fmt: skip
    m = compose.merge_models(m, text, io_map=[("text_features", "text_clf/features")],
                             outputs=["has_audio_flag", "has_text_flag", "audio_clf/probabilities", "text_clf/probabilities"])  # fmt: skip
    m = compose.merge_models(
        m, fusion,
        io_map=[("audio_clf/probabilities", "audio_scores"), ("text_clf/probabilities", "text_scores"),
                ("has_audio_flag", "has_audio_flag"), ("has_text_flag", "has_text_flag")],
    )  # fmt: skip
    _same_versions(m)  # merge_models lists each domain once per merged model
    m.graph.name = "zoo_fused"
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m, full_check=True)
    return m


def classifier_parity(clf: Any, kind: ScoreKind, x: np.ndarray) -> float:
    """Max |scores| difference of ``clf``'s skl2onnx graph (through ``Fusion``'s score
    transform) from scikit-learn on the same float32 features ``x``."""
    import onnxruntime as ort

    graph = classifier_graph(clf, x.shape[1], "features")
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(["probabilities"], {"features": x.astype(np.float32)})[0].astype(np.float64)
    got = np.log(out + kind.floor) if kind.output == "proba" else out
    return float(np.abs(got - scores(clf, x.astype(np.float32), kind)).max())


def half_storage(model: onnx.ModelProto, scope: str, min_elements: int = 1024) -> int:
    """Store in FP16 the FP32 initializers of at least ``min_elements`` values that only nodes
    of the node-name scope ``scope`` (e.g. ``"/text_encoder/"``) read, each behind a Cast back
    to FP32 under its old name: the file holds half the bytes, and the graph still computes in
    FP32 (ONNX Runtime folds the casts once, when it loads the graph). Edits ``model`` in
    place; returns the number of values stored in FP16."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    readers: dict[str, list[str]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)
    casts, count = [], 0
    for init in g.initializer:
        users = readers.get(init.name, [])
        size = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type != TensorProto.FLOAT or size < min_elements or not users or not all(u.startswith(scope) for u in users):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}.fp16"))
        casts.append(helper.make_node("Cast", [f"{name}.fp16"], [name], to=TensorProto.FLOAT, name=f"{scope}fp16_storage/{len(casts)}"))
        count += size
    nodes = casts + list(g.node)  # the casts read initializers only: first in topological order
    del g.node[:]
    g.node.extend(nodes)
    return count


def save(model: onnx.ModelProto, path: Path) -> None:
    Path(path).write_bytes(model.SerializeToString())
