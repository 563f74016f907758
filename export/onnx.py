"""ONNX export of EmoTech: the fused graph (front-end included) and each branch.

    python -m export.onnx --model-dir weights/emotech [--graphs fused audio text]

writes ``emotech.onnx`` (fused), ``audio_branch.onnx`` and ``text_branch.onnx`` beside
the weights, checks each against PyTorch at two batch sizes and two sets of lengths
(batch padding included), and records the files and their hashes in ``spec.json``.
Training writes only the fused graph, the one every engine runs.
All axes that vary per request (batch, samples, tokens) are dynamic.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.merged import inference_form
from export.model import FusedModel
from runtime import cli

OPSET = 17  # TensorRT 10.3 parses opsets 9-20; 17 is the newest the legacy exporter tests well

FUSED_INPUTS = ["audio", "audio_lengths", "tokens", "token_lengths", "has_audio", "has_text"]
FUSED_AXES = {
    "audio": {0: "batch", 1: "samples"},
    "audio_lengths": {0: "batch"},
    "tokens": {0: "batch", 1: "tokens"},
    "token_lengths": {0: "batch"},
    "has_audio": {0: "batch"},
    "has_text": {0: "batch"},
    "logits": {0: "batch"},
}


class AudioBranch(nn.Module):
    """Front-end + audio block: (audio, audio_lengths) -> audio embedding."""

    def __init__(self, model: FusedModel):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> torch.Tensor:
        mfcc, frames = self.model.mfcc(audio, audio_lengths)
        return self.model.audio(mfcc, frames)


class TextBranch(nn.Module):
    """Text block: (tokens, token_lengths) -> text embedding."""

    def __init__(self, model: FusedModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
        return self.model.text(tokens, token_lengths)


@dataclass(frozen=True)
class GraphDef:
    """One exportable graph: its module, input names, output name and dynamic axes."""

    filename: str
    inputs: tuple[str, ...]
    output: str


GRAPHS = {
    "fused": GraphDef("emotech.onnx", tuple(FUSED_INPUTS), "logits"),
    "audio": GraphDef("audio_branch.onnx", ("audio", "audio_lengths"), "audio_embedding"),
    "text": GraphDef("text_branch.onnx", ("tokens", "token_lengths"), "text_embedding"),
}


def graph_module(model: FusedModel, name: str) -> nn.Module:
    return {"fused": lambda: model, "audio": lambda: AudioBranch(model), "text": lambda: TextBranch(model)}[name]()


def example_inputs(model: FusedModel, batch: int, seconds: float, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded random inputs with distinct lengths per item (real-valued audio, valid ids)."""
    gen = torch.Generator().manual_seed(seed)
    sr = model.frontend_cfg.sample_rate
    n = int(seconds * sr)
    lo = model.frontend_cfg.min_samples
    audio_lengths = torch.linspace(n, max(lo, n // 3), batch).long()
    audio = 0.1 * torch.randn(batch, n, generator=gen)
    audio = audio * (torch.arange(n)[None] < audio_lengths[:, None])
    token_lengths = torch.linspace(tokens, max(2, tokens // 3), batch).long()
    ids = torch.randint(1000, model.cfg.vocab_size, (batch, tokens), generator=gen)
    ids = ids * (torch.arange(tokens)[None] < token_lengths[:, None])
    return {
        "audio": audio,
        "audio_lengths": audio_lengths,
        "tokens": ids,
        "token_lengths": token_lengths,
        "has_audio": torch.ones(batch),
        "has_text": torch.ones(batch),
    }


def export_graph(model: FusedModel, name: str, path: Path) -> None:
    """Export one graph with dynamic batch, sample and token axes (legacy exporter: it
    maps ``nn.LSTM`` to the ONNX LSTM op, which TensorRT parses). An ensemble is exported
    in its merged inference form (``export.merged``), the same function in fewer ops."""
    gdef = GRAPHS[name]
    module = graph_module(inference_form(model), name).eval()
    feed = example_inputs(model, batch=2, seconds=2.0, tokens=12)
    args = tuple(feed[k] for k in gdef.inputs)
    axes = {k: FUSED_AXES[k] for k in gdef.inputs}
    axes[gdef.output] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buf,
            input_names=list(gdef.inputs),
            output_names=[gdef.output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    path.write_bytes(buf.getvalue())


def check_graph(model: FusedModel, name: str, path: Path, atol: float = 1e-4) -> float:
    """Max abs difference ONNX Runtime vs PyTorch (``model`` as trained, not its merged
    export form) over two batch sizes and two lengths.

    Raises ``AssertionError`` when it exceeds ``atol``.
    """
    import onnxruntime as ort

    gdef = GRAPHS[name]
    module = graph_module(model, name).eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seconds, tokens in ((1, 1.3, 7), (5, 3.1, 23)):
        feed = example_inputs(model, batch, seconds, tokens, seed=batch)
        with torch.no_grad():
            ref = module(*(feed[k] for k in gdef.inputs)).numpy()
        got = sess.run([gdef.output], {k: feed[k].numpy() for k in gdef.inputs})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > atol:
        raise AssertionError(f"{path.name}: ONNX Runtime differs from PyTorch by {worst:.2e} > {atol:.0e}")
    return worst


def export_all(model: FusedModel, out_dir: Path, names: tuple[str, ...] = ("fused",)) -> dict[str, float]:
    """Export and check the named graphs into ``out_dir``; returns the max diff per graph."""
    out_dir.mkdir(parents=True, exist_ok=True)
    diffs = {}
    for name in names:
        path = out_dir / GRAPHS[name].filename
        export_graph(model, name, path)
        diffs[name] = check_graph(model, name, path)
    return diffs


def main(argv: list[str] | None = None) -> None:
    from export import bundle

    parser = cli.parser("python -m export.onnx", "Export a model folder's PyTorch weights to ONNX graphs, written into the folder.")
    parser.add_argument("--model-dir", type=Path, required=True, help="model folder with model.safetensors and spec.json (written to)")
    parser.add_argument(
        "--graphs",
        nargs="+",
        choices=sorted(GRAPHS),
        default=["fused", "audio", "text"],
        help="graphs to write; the shipped folder keeps only 'fused' (what every engine runs) to stay small",
    )
    args = parser.parse_args(argv)
    model, spec = bundle.load_torch_model(args.model_dir)
    diffs = export_all(model, args.model_dir, tuple(args.graphs))
    for name, diff in diffs.items():
        print(f"{GRAPHS[name].filename}: max |ORT - PyTorch| = {diff:.2e}")
    bundle.register_graphs(spec, {name: GRAPHS[name].filename for name in diffs})
    bundle.update_files(args.model_dir, spec)


if __name__ == "__main__":
    main()
