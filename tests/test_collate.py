"""Tests for the encoders' collators and hftl.data.lengths, with tiny processors built offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

from hftl.data import ClassificationData, text_lengths
from hftl.encoders import AudioCollator, ImageCollator, TextCollator

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "good", "bad"]


@pytest.fixture
def tokenizer(tmp_path: Path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    # transformers 5 takes the vocab file as `vocab=` (`vocab_file=` is ignored there and maps all to [UNK]).
    return transformers.BertTokenizer(vocab=str(vocab))


def test_text_collator_pads_to_batch_max(tokenizer):
    examples = [{"text": "a b c", "label": 1}, {"text": "good", "label": 0}]
    batch = TextCollator(tokenizer)(examples)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [5, 3]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    short = TextCollator(tokenizer, max_length=4)([{"text": "a b c a b"}, {"text": "a"}])
    assert short["input_ids"].shape == (2, 4) and "labels" not in short


def test_text_lengths(tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["a b c", "good", "a  b"]})
    assert text_lengths(ds) == [3, 1, 2]
    assert text_lengths(ds, tokenizer) == [5, 3, 4]
    assert text_lengths([{"text": "x y"}]) == [2]


def test_text_collator_pads_pretokenized_rows(tokenizer):
    rows = [
        dict(tokenizer(t, truncation=True, max_length=4), label=i)
        for i, t in enumerate(["a b c a b", "good"])
    ]
    batch = TextCollator(tokenizer, max_length=4)(rows)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 3], [2, 8, 3, 0]]  # padded, not tokenized again
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0] * 4] * 2 and batch["labels"].tolist() == [0, 1]
    ds = datasets.Dataset.from_list(rows)
    assert text_lengths(ds) == [4, 3] and text_lengths(rows) == [4, 3]  # token counts, not words


def _wav(path: Path, seconds: float, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return str(path)


def test_audio_collator_crops_to_max_duration(tmp_path: Path):
    extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000)
    examples = [
        {"audio": {"path": _wav(tmp_path / "long.wav", 2.0), "bytes": None}, "label": 1},
        {"audio": _wav(tmp_path / "short.wav", 0.5), "label": 0},
    ]
    batch = AudioCollator(extractor, max_duration=1.0)(examples)
    assert batch["input_values"].shape == (2, 16000)
    assert batch["attention_mask"].sum(1).tolist() == [16000, 8000]
    assert batch["labels"].tolist() == [1, 0]
    first = AudioCollator(extractor, max_duration=0.25, train=True, seed=3)(examples)["input_values"]
    again = AudioCollator(extractor, max_duration=0.25, train=True, seed=3)(examples)["input_values"]
    assert first.shape == (2, 4000) and torch.equal(first, again)
    full = AudioCollator(extractor)(examples)
    assert full["input_values"].shape == (2, 32000)


def test_audio_collator_resamples_8khz(tmp_path: Path):
    extractor = transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000)
    batch = AudioCollator(extractor)([{"audio": _wav(tmp_path / "a.wav", 0.5, rate=8000)}])
    assert batch["input_values"].shape == (1, 8000) and "labels" not in batch


def test_image_collator_gives_rgb_batch():
    data = ClassificationData(path="hftl:sklearn_digits", max_samples=4)
    examples = list(data.load()["test"])
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    batch = ImageCollator(processor)(examples)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["labels"].shape == (4,) and batch["labels"].dtype == torch.long
    gray = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5], image_std=[0.5])
    assert ImageCollator(gray).mode == "L"


def test_audio_collator_peak_and_rms_normalization(wavs):
    import numpy as np
    from transformers import Wav2Vec2FeatureExtractor

    from hftl.encoders.audio_collator import normalize_level

    x = np.array([0.0, 0.5, -0.25, 0.1], dtype=np.float32)
    assert np.isclose(np.abs(normalize_level(x, "peak")).max(), 1.0)
    assert np.isclose(np.sqrt(np.mean(normalize_level(x, "rms") ** 2)), 0.1, rtol=1e-5)
    assert np.array_equal(normalize_level(np.zeros(4, dtype=np.float32), "rms"), np.zeros(4))  # silence kept
    fe = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False)
    quiet = AudioCollator(fe, normalize="none")(wavs)["input_values"]
    loud = AudioCollator(fe, normalize="peak")(wavs)["input_values"]
    assert np.isclose(loud[0].abs().max().item(), 1.0) and quiet[0].abs().max().item() < 0.9
    with pytest.raises(Exception, match="normalize"):
        AudioCollator(fe, normalize="loud")
