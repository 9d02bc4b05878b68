"""Unit tests of hftl.data.augment and the AudioCollator's training randomness, on generated signals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate.data_loader import skip_first_batches
from torch.utils.data import DataLoader

from hftl.data import (
    AudioAugment,
    AudioAugmentConfig,
    audio_lengths,
    decode_audio,
    with_example_keys,
)
from hftl.data.augment import colored_noise, speed_perturb, time_shift
from hftl.data.samplers import EpochSampler
from hftl.encoders import AudioCollator, AudioEncoder
from hftl.errors import ConfigError, DataError

RATE = 16_000


def tone(seconds: float = 1.0, freq: float = 440.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean
    return 10 * math.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise**2))


def write_clips(folder: Path, n: int, rate: int = 8000) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        path = folder / f"clip{i}.wav"
        seconds = 0.3 + 0.05 * i
        sf.write(
            path, tone(seconds, 300 + 100 * i, rate) + 0.01 * rng.standard_normal(int(rate * seconds)), rate
        )
        rows.append({"audio": str(path), "label": i % 2})
    return rows


def wav2vec2_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=True)


WAVE_AUG = {"noise_prob": 0.7, "shift_prob": 0.5, "gain_prob": 0.5, "speed_prob": 0.5}


# --- waveform transforms ---------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["white", "pink", "brown"])
def test_noise_snr_within_half_a_db_of_the_drawn_target(noise: str):
    augment = AudioAugment({"noise_prob": 1.0, "noise_types": [noise], "snr_min": 5, "snr_max": 20})
    clean, drawn = tone(), []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        draw = augment.draw(RATE, rng)
        noisy = augment.apply(clean, RATE, draw, rng)
        assert draw.noise == noise and 5 <= draw.snr_db <= 20
        assert abs(snr_db(clean, noisy) - draw.snr_db) < 0.5
        drawn.append(draw.snr_db)
    assert max(drawn) - min(drawn) > 3  # the SNR really is drawn from the range


@pytest.mark.parametrize(("noise", "slope"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_colored_noise_has_unit_rms_and_its_spectral_slope(noise: str, slope: float):
    x = colored_noise(noise, 2**16, np.random.default_rng(0))
    assert x.dtype == np.float32 and abs(np.sqrt(np.mean(x.astype(np.float64) ** 2)) - 1) < 1e-4
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size)
    band = (freqs > 1e-3) & (freqs < 0.4)
    fitted = np.polyfit(np.log(freqs[band]), np.log(power[band]), 1)[0]
    assert abs(fitted - slope) < 0.1


def test_noise_from_a_folder_of_recordings(tmp_path: Path):
    sf.write(tmp_path / "hum.wav", tone(0.3, 50.0, 8000), 8000)  # shorter than the clip: tiled
    augment = AudioAugment(
        AudioAugmentConfig(noise_prob=1.0, noise_dir=str(tmp_path), snr_min=10, snr_max=10)
    )
    clean = tone(1.0, 1000.0)
    rng = np.random.default_rng(0)
    draw = augment.draw(RATE, rng)
    noisy = augment.apply(clean, RATE, draw, rng)
    assert draw.noise == str(tmp_path / "hum.wav") and abs(snr_db(clean, noisy) - 10) < 0.5
    spectrum = np.abs(np.fft.rfft(noisy - clean))
    assert abs(np.argmax(spectrum) * RATE / clean.size - 50) <= 1  # the hum, resampled 8 -> 16 kHz
    (tmp_path / "hum.wav").unlink()
    with pytest.raises(DataError, match="noise_dir.*holds no audio file"):
        AudioAugment({"noise_prob": 1.0, "noise_dir": str(tmp_path)})


@pytest.mark.parametrize(("factor", "rate"), [(0.9, 16000), (1.1, 16000), (1.1, 8000), (1.0, 8000)])
def test_speed_perturbation_length_and_pitch(factor: float, rate: int):
    wave = tone(1.0, 1000.0, rate)
    out = speed_perturb(torch.from_numpy(wave), rate, factor).numpy()
    assert out.size == math.ceil(wave.size * rate / round(rate * factor))
    peak = np.argmax(np.abs(np.fft.rfft(out))) * rate / out.size
    assert abs(peak - 1000 * factor) < 2  # playing faster raises the pitch by the same factor
    augment = AudioAugment({"speed_prob": 1.0, "speeds": [factor]})
    assert augment(wave, rate, generator=np.random.default_rng(0)).size == out.size


def test_time_shift_and_gain_are_exact():
    wave = np.arange(1, 11, dtype=np.float32)
    assert time_shift(torch.from_numpy(wave), 3).tolist() == [0, 0, 0, *range(1, 8)]
    assert time_shift(torch.from_numpy(wave), -2).tolist() == [*range(3, 11), 0, 0]
    augment = AudioAugment({"gain_prob": 1.0, "gain_min_db": -6, "gain_max_db": 6})
    rng = np.random.default_rng(3)
    draw = augment.draw(RATE, rng)
    out = augment.apply(wave, RATE, draw, rng)
    np.testing.assert_allclose(out, wave * 10 ** (draw.gain_db / 20), rtol=1e-6)
    shifter = AudioAugment({"shift_prob": 1.0, "shift_max": 0.001})  # at most 16 samples
    draws = [shifter.draw(RATE, np.random.default_rng(s)).shift for s in range(50)]
    assert min(draws) >= -16 and max(draws) <= 16 and len(set(draws)) > 10


def test_augmentation_is_deterministic_under_a_seed():
    augment, clean = AudioAugment(WAVE_AUG), tone(0.5)
    first = augment(clean, RATE, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(first, augment(clean, RATE, generator=np.random.default_rng(7)))
    others = [augment(clean, RATE, generator=np.random.default_rng(s)) for s in range(8, 12)]
    assert any(o.shape != first.shape or not np.array_equal(o, first) for o in others)
    assert augment(clean, RATE, generator=np.random.default_rng(0)).dtype == np.float32
    assert AudioAugment({})(clean, RATE, generator=np.random.default_rng(0)) is clean  # all off: unchanged


# --- SpecAugment masks -----------------------------------------------------------------------------
def masked_spans(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


@pytest.mark.parametrize("freq_axis", [0, 1])
def test_masks_stay_inside_bounds(freq_axis: int):
    cfg = {"time_mask_prob": 1.0, "time_masks": 2, "time_mask_param": 10, "freq_mask_prob": 1.0,
           "freq_masks": 2, "freq_mask_param": 5, "mask_value": "zero"}  # fmt: skip
    augment = AudioAugment(cfg)
    bins, frames, real = 16, 100, 60
    seen_time = seen_freq = 0
    for seed in range(30):
        spec = torch.ones(bins, frames) if freq_axis == 0 else torch.ones(frames, bins)
        out = augment.mask(spec, freq_axis=freq_axis, generator=np.random.default_rng(seed), num_frames=real)
        zeros = (out == 0).numpy() if freq_axis == 0 else (out == 0).numpy().T  # (bins, frames)
        assert out.shape == spec.shape
        assert not zeros[:, real:].any()  # padding frames are never touched
        time_cols = zeros[:, :real].all(axis=0)  # frames masked in every bin
        freq_rows = zeros[:, :real].all(axis=1)
        for start, end in masked_spans(time_cols):
            assert 0 <= start < end <= real and end - start < 2 * 10  # two masks of < 10 frames may touch
        for start, end in masked_spans(freq_rows):
            assert 0 <= start < end <= bins and end - start < 2 * 5
        # every zero cell lies in a masked frame or a masked bin
        assert np.array_equal(zeros[:, :real], time_cols[None, :] | freq_rows[:, None])
        assert time_cols.sum() <= 18 and freq_rows.sum() <= 8
        seen_time, seen_freq = seen_time + time_cols.any(), seen_freq + freq_rows.any()
    assert seen_time > 20 and seen_freq > 20
    again = augment.mask(spec, freq_axis=freq_axis, generator=np.random.default_rng(29), num_frames=real)
    assert torch.equal(again, out)


def test_mean_mask_value():
    augment = AudioAugment({"freq_mask_prob": 1.0, "freq_masks": 1, "freq_mask_param": 8})
    spec = torch.arange(16.0)[:, None].expand(16, 10).clone()
    for seed in range(20):
        out = augment.mask(spec, freq_axis=0, generator=np.random.default_rng(seed))
        changed = out != spec
        assert torch.all(out[changed] == spec.mean())


# --- the collator --------------------------------------------------------------------------------
def test_augmentation_applies_to_the_training_collator_only(tmp_path: Path):
    rows = write_clips(tmp_path, 4)
    fe = wav2vec2_extractor()
    plain = AudioCollator(fe, max_duration=0.5)(rows)
    evaluation = AudioCollator(fe, max_duration=0.5, augment=WAVE_AUG)(rows)
    torch.testing.assert_close(evaluation, plain, rtol=0, atol=0)
    loud = {"noise_prob": 1.0, "snr_min": 0, "snr_max": 0}
    train = AudioCollator(fe, max_duration=0.5, train=True, augment=loud)(rows)
    clean = AudioCollator(fe, max_duration=0.5, train=True)(rows)
    assert train["input_values"].shape == clean["input_values"].shape
    assert not torch.equal(train["input_values"], clean["input_values"])


def test_collator_spectrogram_masks_whisper_and_ast_layouts(tmp_path: Path):
    from transformers import ASTFeatureExtractor, WhisperFeatureExtractor

    rows = write_clips(tmp_path, 3)
    masks = {"time_mask_prob": 1.0, "time_mask_param": 10, "freq_mask_prob": 1.0, "freq_mask_param": 4}
    for fe, name, padding in (
        (WhisperFeatureExtractor(feature_size=16, chunk_length=1), "input_features", "max_length"),
        (ASTFeatureExtractor(num_mel_bins=16, max_length=100), "input_values", "longest"),
    ):
        plain = AudioCollator(fe, train=True, padding=padding)(rows)[name]
        masked = AudioCollator(fe, train=True, padding=padding, augment=masks)(rows)[name]
        assert masked.shape == plain.shape and not torch.equal(masked, plain)
        hop = 160
        for i, row in enumerate(rows):
            real = -(-len(decode_audio(row["audio"], sampling_rate=RATE)) // hop)
            time_axis = 2 if name == "input_features" else 1
            tail = masked[i].narrow(time_axis - 1, real, masked.shape[time_axis] - real)
            ref = plain[i].narrow(time_axis - 1, real, plain.shape[time_axis] - real)
            torch.testing.assert_close(tail, ref)  # frames past the clip are padding: never masked
    with pytest.raises(ConfigError, match="time_mask_prob"):
        AudioCollator(wav2vec2_extractor(), train=True, augment=masks)


def collate_epochs(loader, sampler, epochs: int) -> list[list[torch.Tensor]]:
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append([b["input_values"] for b in loader])
    return out


def test_keyed_randomness_is_resume_exact_and_worker_independent(tmp_path: Path):
    rows = write_clips(tmp_path, 6)

    def loader(workers: int = 0, batch_size: int = 2):
        collator = AudioCollator(wav2vec2_extractor(), max_duration=0.3, train=True, seed=5, augment=WAVE_AUG)
        assert collator.uses_example_keys
        dataset, sampler = with_example_keys(rows, EpochSampler(len(rows), seed=0))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator,
                          num_workers=workers), sampler  # fmt: skip

    full, sampler = loader()
    uninterrupted = collate_epochs(full, sampler, 2)
    assert not all(torch.equal(a, b) for a, b in zip(*uninterrupted, strict=True))  # epochs differ
    # resume in a fresh process-like state: new collator and loader, epoch 1, first batch already trained on
    resumed, sampler = loader()
    sampler.set_epoch(1)
    after = [b["input_values"] for b in skip_first_batches(resumed, 1)]
    for a, b in zip(after, uninterrupted[1][1:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    workers, sampler = loader(workers=2)
    for a, b in zip(collate_epochs(workers, sampler, 2)[1], uninterrupted[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a clip's augmentation does not depend on its batch: batch size 3 gives the same clips
    bigger, sampler = loader(batch_size=3)
    sampler.set_epoch(1)

    def clips(batches) -> list[torch.Tensor]:
        return [
            x[m.bool()] for b in batches for x, m in zip(b["input_values"], b["attention_mask"], strict=True)
        ]

    uninterrupted_clips = clips(full_batches(full, 1))
    for a, b in zip(clips(bigger), uninterrupted_clips, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def full_batches(loader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_unkeyed_examples_fall_back_to_hash_and_count(tmp_path: Path):
    rows = write_clips(tmp_path, 3)

    def collator():
        return AudioCollator(wav2vec2_extractor(), max_duration=0.3, train=True, augment=WAVE_AUG)

    first, second = collator(), collator()
    a1, a2 = first(rows)["input_values"], first(rows)["input_values"]
    assert not torch.equal(a1, a2)  # the second pass over a clip draws anew
    torch.testing.assert_close(second(rows)["input_values"], a1, rtol=0, atol=0)  # a fresh run repeats
    torch.testing.assert_close(second(rows[::-1])["input_values"], a2.flip(0), rtol=0, atol=0)  # order-free


# --- lengths and config ----------------------------------------------------------------------------
def test_audio_lengths_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import datasets

    rows = write_clips(tmp_path, 3, rate=8000)
    sf.write(tmp_path / "wide.wav", np.zeros((RATE // 4, 2), dtype=np.float32), RATE)
    rows.append({"audio": {"path": str(tmp_path / "wide.wav"), "bytes": None}, "label": 0})
    expected = [len(decode_audio(r["audio"], sampling_rate=RATE)) for r in rows]
    monkeypatch.setattr(sf, "read", lambda *a, **k: pytest.fail("audio_lengths must not decode"))
    assert audio_lengths(rows, sampling_rate=RATE) == expected
    paths = [r["audio"] if isinstance(r["audio"], str) else r["audio"]["path"] for r in rows]
    ds = datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", datasets.Audio(decode=False))
    assert audio_lengths(ds, sampling_rate=8000) == [math.ceil(n / 2) for n in expected]
    with pytest.raises(DataError, match="gone.wav"):
        audio_lengths([{"audio": str(tmp_path / "gone.wav")}])


def test_config_errors_name_every_bad_field(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        AudioAugmentConfig(noise_prob=1.5, snr_min=20, snr_max=5, speeds=[3.0], time_masks=-1)
    text = str(err.value)
    for field in ("augment.noise_prob", "augment.snr_min", "augment.speeds", "augment.time_masks"):
        assert field in text
    with pytest.raises(ConfigError, match="did you mean `noise_prob`"):
        AudioAugment({"noise_prb": 0.5})
    with pytest.raises(ConfigError, match="augment.noise_dir"):
        AudioAugmentConfig(noise_dir=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="augment.snr_max"):  # before any weights load
        AudioEncoder(str(tmp_path / "no_model_here"), augment={"snr_max": "loud"})


def test_the_loader_builder_keys_training_examples(tmp_path: Path):
    from hftl.data import KeyedDataset
    from hftl.training.builders import build_loader

    rows = write_clips(tmp_path, 4)
    train = build_loader(
        rows, collate_fn=AudioCollator(wav2vec2_extractor(), train=True), batch_size=2, shuffle=True
    )
    evaluation = build_loader(
        rows, collate_fn=AudioCollator(wav2vec2_extractor()), batch_size=2, shuffle=False
    )
    assert isinstance(train.dataset, KeyedDataset) and evaluation.dataset is rows
    train.sampler.set_epoch(3)
    keys = sorted(ex["_example_key"] for ex in train.dataset.__getitems__(list(train.sampler)))
    assert keys == [(i, 3) for i in range(4)]
