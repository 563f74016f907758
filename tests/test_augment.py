"""Waveform augmentation and the robustness conditions (export.augment): what each one does
to a signal, measured, and that the default recipe draws what it always drew."""

from __future__ import annotations

import numpy as np
import pytest

from export import augment as aug
from tests.helpers import speechlike

SR = aug.SAMPLE_RATE


def band_energy_db(y: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(y.size, 1 / SR)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum() + 1e-20)


def reference_augment(y, cfg, rng):
    """The augmentation before the room and telephone steps existed."""
    if rng.random() < cfg.p_speed:
        y = aug.speed_perturb(y, rng.uniform(*cfg.speed_range))
    if rng.random() < cfg.p_stretch:
        y = aug.time_stretch(y, rng.uniform(*cfg.stretch_range))
    if rng.random() < cfg.p_noise:
        y = aug.add_noise(y, rng.uniform(*cfg.snr_db_range), rng)
    if rng.random() < cfg.p_gain:
        y = y * 10 ** (rng.uniform(*cfg.gain_db_range) / 20)
    peak = float(np.max(np.abs(y)))
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)


def test_default_augmentation_draws_what_it_always_drew():
    cfg = aug.AugmentConfig()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    for i in range(12):
        y = speechlike(0.7, seed=i)
        np.testing.assert_array_equal(aug.augment(y, cfg, a), reference_augment(y, cfg, b))
    assert a.random() == b.random()


def test_telephone_keeps_the_voice_band_only():
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(SR)).astype(np.float32)  # 1 s of white noise: every band equal
    out = aug.telephone(y)
    assert out.shape == y.shape and out.dtype == np.float32
    voice = band_energy_db(out, 500, 3000) - band_energy_db(y, 500, 3000)
    high = band_energy_db(out, 4200, 8000) - band_energy_db(y, 4200, 8000)
    low = band_energy_db(out, 20, 150) - band_energy_db(y, 20, 150)
    assert abs(voice) < 1.5  # the voice band passes (mu-law adds a little noise)
    assert high < -40 and low < -20  # above 4 kHz gone (8 kHz sampling); below 150 Hz attenuated
    np.testing.assert_array_equal(out, aug.telephone(y))  # deterministic


def test_mu_law_has_256_levels_and_small_error_at_speech_levels():
    x = np.linspace(-1, 1, 100001).astype(np.float32)
    q = aug.mu_law(x)
    assert len(np.unique(q)) == 256
    mid = np.abs(x) > 0.01
    assert np.max(np.abs(q[mid] - x[mid]) / np.abs(x[mid])) < 0.04  # about 3 % relative step (8-bit mu-law)
    assert np.all(np.abs(aug.mu_law(np.array([2.0, -3.0]))) <= 1.0)


@pytest.mark.parametrize("snr", [20.0, 10.0, 0.0])
def test_white_noise_is_at_the_asked_snr_and_seeded(snr):
    y = speechlike(1.5, seed=1)
    noisy = aug.white_noise(y, snr, seed=7)
    noise = noisy - y
    measured = 10 * np.log10(np.mean(y.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert measured == pytest.approx(snr, abs=0.01)
    np.testing.assert_array_equal(noisy, aug.white_noise(y, snr, seed=7))
    assert not np.array_equal(noisy, aug.white_noise(y, snr, seed=8))


def test_room_impulse_decays_at_its_rt60_with_its_direct_to_reverberant_ratio():
    rng = np.random.default_rng(0)
    ir = aug.room_impulse(0.5, 6.0, rng)
    assert ir[0] == 1.0 and ir.size == int(0.5 * SR)
    tail = ir[1:].astype(np.float64)
    assert 10 * np.log10(1.0 / np.sum(tail**2)) == pytest.approx(6.0, abs=1e-3)
    first, last = np.sum(tail[: SR // 20] ** 2), np.sum(tail[-SR // 20 :] ** 2)  # first and last 50 ms
    assert 10 * np.log10(first / last) > 40  # 60 dB over 0.5 s: about 54 dB between these windows
    y = speechlike(1.0, seed=2)
    wet = aug.reverberate(y, ir)
    assert wet.shape == y.shape and np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(y**2)), rel=1e-3)
    assert not np.allclose(wet, y)


def test_room_and_telephone_steps_apply_when_asked():
    y = speechlike(1.0, seed=3)
    only_phone = aug.AugmentConfig(p_speed=0, p_stretch=0, p_noise=0, p_gain=0, p_telephone=1.0)
    out = aug.augment(y, only_phone, np.random.default_rng(0))
    np.testing.assert_allclose(out, aug.within_range(aug.telephone(y)), atol=1e-7)
    only_room = aug.AugmentConfig(p_speed=0, p_stretch=0, p_noise=0, p_gain=0, p_reverb=1.0)
    out = aug.augment(y, only_room, np.random.default_rng(0))
    assert out.shape == y.shape and np.max(np.abs(out)) <= 0.99 + 1e-6 and not np.allclose(out, y)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"p_telephone": 1.5}, "p_telephone must be a probability"), ({"rt60_range": (0.0, 0.5)}, "rt60_range must be .* low > 0"), ({"snr_db_range": (30.0, 10.0)}, "low <= high")],
)
def test_augment_config_refuses_what_it_cannot_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        aug.AugmentConfig(**kwargs)
