"""EmoTech padding invariance and missing-modality behaviour (PyTorch)."""

from __future__ import annotations

import pytest

from tests.helpers import TINY_VARIANT, assert_padding_never_changes_a_result, build_tiny_model, requires_torch

pytestmark = requires_torch


@pytest.fixture(scope="module", params=[{}, TINY_VARIANT], ids=["time-pools-4-2-2", "time-pools-2-2-2"])
def model(request):
    return build_tiny_model(seed=1, **request.param)


def test_reverse_padded_reverses_within_length_only():
    import torch

    from export.model import reverse_index, reverse_padded

    x = torch.arange(10.0).reshape(2, 5, 1)
    out = reverse_padded(x, reverse_index(torch.tensor([3, 5]), 5))[..., 0]
    assert out.tolist() == [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]]


def test_padding_never_changes_a_result(model):
    assert_padding_never_changes_a_result(model, batch=4, seconds=2.5, tokens=19, seed=3)


def test_backward_lstm_does_not_read_padding(model):
    """Garbage in the padded tail (instead of zeros) must not move the valid outputs."""
    import torch

    from export.model import BiLSTM

    torch.manual_seed(0)
    lstm = BiLSTM(4, 3).eval()
    x = torch.randn(2, 7, 4)
    lengths = torch.tensor([4, 7])
    with torch.no_grad():
        clean = lstm(x, lengths)
        x2 = x.clone()
        x2[0, 4:] = 100.0
        dirty = lstm(x2, lengths)
    torch.testing.assert_close(clean[0, :4], dirty[0, :4])


def test_missing_modality_uses_learned_vector(model):
    import torch

    from export.onnx import example_inputs

    feed = example_inputs(model, batch=2, seconds=1.0, tokens=8)
    with torch.no_grad():
        both = model(**feed)
        no_text = model(**{**feed, "has_text": torch.zeros(2)})
        other_tokens = model(**{**feed, "has_text": torch.zeros(2), "tokens": torch.zeros_like(feed["tokens"])})
        no_audio = model(**{**feed, "has_audio": torch.zeros(2)})
        other_audio = model(**{**feed, "has_audio": torch.zeros(2), "audio": torch.zeros_like(feed["audio"])})
    assert not torch.allclose(both, no_text)
    torch.testing.assert_close(no_text, other_tokens)  # an absent text's tokens are ignored
    torch.testing.assert_close(no_audio, other_audio)  # an absent clip's samples are ignored


def test_shortest_accepted_clip_padded_equals_alone(model):
    # The CNN masks only after each pool; that is exact while every pool of t frames sees
    # >= t valid frames, i.e. >= prod(time pools) frames in: the runtime's minimum clip gives more.
    import math

    import torch

    from runtime.frontend import FrontendConfig

    cfg = model.frontend_cfg
    assert cfg == FrontendConfig()
    assert cfg.num_frames(cfg.min_samples) >= math.prod(model.audio.time_pools)
    gen = torch.Generator().manual_seed(5)
    long, short = 0.3 * torch.randn(1, 3 * cfg.sample_rate, generator=gen), 0.3 * torch.randn(1, cfg.min_samples, generator=gen)
    audio = torch.cat([long, torch.nn.functional.pad(short, (0, long.shape[1] - short.shape[1]))])
    lengths = torch.tensor([long.shape[1], short.shape[1]])
    tokens, tl, ones = torch.tensor([[101, 102], [101, 102]]), torch.tensor([2, 2]), torch.ones(2)
    with torch.no_grad():
        batch = model(audio, lengths, tokens, tl, ones, torch.zeros(2))
        alone = model(short, lengths[1:], tokens[:1], tl[:1], ones[:1], torch.zeros(1))
    torch.testing.assert_close(batch[1], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [({"audio_cnn_time_pools": (2, 2)}, "one pool"), ({"audio_cnn_time_pools": (2, 0, 2)}, "one pool")],
)
def test_model_config_rejects_bad_audio_options(bad, match):
    from export.model import ModelConfig

    with pytest.raises(ValueError, match=match):
        ModelConfig(**bad)


def test_a_spec_written_before_the_audio_options_means_the_original_architecture():
    from export.model import ModelConfig

    old_spec = {"architecture": "EmoTech", "num_classes": 7, "audio_cnn_channels": [32, 64, 128]}
    cfg = ModelConfig.from_spec(old_spec)
    assert cfg.audio_cnn_time_pools == (2, 2, 2) != ModelConfig().audio_cnn_time_pools
    new = ModelConfig.from_spec({**old_spec, "audio_cnn_time_pools": [4, 2, 2]})
    assert new.audio_cnn_time_pools == (4, 2, 2)


def test_committed_recipe_configs_are_valid_model_configs():
    import json
    from pathlib import Path

    from export.model import ModelConfig

    files = sorted((Path(__file__).resolve().parents[1] / "export" / "configs").glob("*.json"))
    assert files
    for f in files:
        cfg = ModelConfig.from_dict(json.loads(f.read_text()))
        assert cfg != ModelConfig(), f.name  # each one is a real alternative to the defaults


@pytest.mark.parametrize("pools", [(4, 2, 2), (2, 2, 2)])
def test_stage_masks_match_the_integer_length_rules(pools):
    """The pooled / sliced float masks are exactly the masks of ``n // t`` after each pool
    and ``(m - 1) // 2 + 1`` after each strided conv, for every accepted clip length."""
    import torch

    from export.frontend import frame_mask
    from export.model import AudioBlock, ModelConfig
    from runtime.frontend import FrontendConfig

    fe = FrontendConfig()
    block = AudioBlock(fe, ModelConfig(audio_cnn_time_pools=pools))
    lengths = torch.arange(fe.num_frames(fe.min_samples), 400)
    masks = block.masks(lengths, 400)
    n = lengths
    for t, got in zip(pools, masks.cnn):
        n = n // t
        assert torch.equal(got[:, 0, 0].bool(), frame_mask(n, got.shape[-1]))
    m = lengths
    for got in masks.down:
        m = (m - 1) // 2 + 1
        assert torch.equal(got[:, 0].bool(), frame_mask(m, got.shape[-1]))
    assert torch.equal(masks.lstm_lengths, m)
