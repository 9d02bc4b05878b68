"""The audio collator: decode, level, augment and crop each clip, then run the encoder's feature extractor.

:class:`AudioCollator` is what :meth:`hftl.encoders.AudioEncoder.collator` returns. Training clips get
random crops and augmentation (:mod:`hftl.data.augment`), each example from its own generator seeded by its
key (:mod:`hftl.data.keys`), so the draws are exact under resume; evaluation clips are centre-cropped.

Example:
    >>> collate = AudioCollator(feature_extractor, max_duration=4.0, train=True, seed=0)  # doctest: +SKIP
    >>> batch = collate([{"audio": "clip.wav", "label": 1}])  # doctest: +SKIP
    >>> sorted(batch)  # doctest: +SKIP
    ['attention_mask', 'input_values', 'labels']
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from hftl.data.audio import crop_or_pad, decode_audio
from hftl.data.augment import AudioAugment, AudioAugmentConfig
from hftl.data.keys import EXAMPLE_KEY
from hftl.encoders.base import with_labels
from hftl.errors import ConfigError, DataError


def normalize_level(wave: np.ndarray, mode: Literal["peak", "rms"], *, rms_target: float = 0.1) -> np.ndarray:
    """Scales a clip to peak 1 (``peak``) or to an RMS of ``rms_target`` (``rms``); silence is returned as is."""
    level = np.abs(wave).max() if mode == "peak" else np.sqrt(np.mean(np.square(wave, dtype=np.float64)))
    if not np.isfinite(level) or level <= 1e-8:
        return wave
    return (wave * ((1.0 if mode == "peak" else rms_target) / level)).astype(wave.dtype, copy=False)


class AudioCollator:
    """Decodes ``audio``, augments and crops training clips, and runs the feature extractor.

    Each training example gets its own random generator (crop offset, augmentation draws, masks),
    seeded from ``seed`` and the example's *key*:

    * examples read through :class:`hftl.data.keys.KeyedDataset` carry ``(dataset index, sampler epoch)``; the
      randomness is then a function of ``(seed, index, epoch)`` only: identical with any batch size,
      number of DataLoader workers, process count, and after an exact resume.
    * other examples fall back to ``(seed, hash of the audio path or bytes, how many times this
      collator object has seen that clip)``: reproducible for an uninterrupted run with
      ``num_workers=0``, but **not** resume-exact (a resumed process starts counting at 0 again)
      and, with workers, each worker counts separately.

    Evaluation (``train=False``) is deterministic: centre crop, no augmentation.

    Args:
        feature_extractor: a transformers feature extractor; its ``sampling_rate`` sets the decode rate.
        max_duration: clips longer than this many seconds are cropped to it; None keeps full clips.
        train: random crops and augmentation (instead of centre crops, no augmentation).
        seed: base seed of the per-example generators.
        augment: waveform and SpecAugment settings (:class:`hftl.data.augment.AudioAugmentConfig`, a
            mapping of its fields, or an :class:`~hftl.data.augment.AudioAugment`); applied only when
            ``train`` is True.
        normalize: level of every decoded clip before augmentation: ``peak`` scales the largest
            absolute sample to 1, ``rms`` scales the root-mean-square to 0.1 (-20 dBFS), ``none`` keeps
            the file's level. Silent clips are left as they are.
        padding: ``longest`` pads to the longest clip of the batch; ``max_length`` to the extractor's
            fixed length (Whisper's encoder needs its 30 s ``chunk_length``). AST's extractor always
            pads to its ``max_length`` frames.

    Returns (on call):
        The extractor's tensors (``input_values`` ``(B, T)`` for wav2vec2-style extractors, with
        ``T <= max_duration * sampling_rate``; ``input_features`` ``(B, mel, frames)`` for Whisper;
        ``input_values`` ``(B, frames, mel)`` for AST) and ``attention_mask`` when the extractor
        supports it; ``labels`` shape ``(B,)``.

    Raises:
        ConfigError: SpecAugment masks are enabled but the extractor gives waveforms, not spectrograms.
    """

    def __init__(
        self,
        feature_extractor,
        *,
        max_duration: float | None = None,
        train: bool = False,
        seed: int = 0,
        augment: AudioAugment | AudioAugmentConfig | Mapping[str, Any] | None = None,
        padding: Literal["longest", "max_length"] = "longest",
        normalize: Literal["none", "peak", "rms"] = "none",
    ):
        if normalize not in ("none", "peak", "rms"):
            raise ConfigError(f"`encoder.normalize` is {normalize!r}; choose none, peak or rms")
        self.normalize = normalize
        if max_duration is not None and max_duration <= 0:
            raise ValueError(
                f"AudioCollator: max_duration must be positive seconds or None, got {max_duration}"
            )
        self.feature_extractor = feature_extractor
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.max_length = None if max_duration is None else int(round(max_duration * self.sampling_rate))
        self.train, self.seed = train, seed
        if augment is not None and not isinstance(augment, AudioAugment):
            augment = AudioAugment(augment)
        self.augment = augment
        # Loader builders wrap the data set with `with_example_keys` when this is True.
        self.uses_example_keys = train
        self._seen: dict[int, int] = {}  # fallback keys: clip hash -> times collated
        params = inspect.signature(feature_extractor.__call__).parameters
        self._kwargs: dict[str, Any] = (
            {"return_attention_mask": True} if "return_attention_mask" in params else {}
        )
        if "padding" in params:
            self._kwargs["padding"] = padding
        self._hop = int(getattr(feature_extractor, "hop_length", 0) or self.sampling_rate // 100)
        self._spectrogram = None
        if augment is not None and augment.config.spectrogram_enabled:
            self._spectrogram = self._spectrogram_layout()

    def _extract(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return self.feature_extractor(
            waves, sampling_rate=self.sampling_rate, return_tensors="pt", **self._kwargs
        )

    def _spectrogram_layout(self) -> tuple[str, int]:
        """Which output holds the spectrogram and its mel axis (0: ``(mel, T)``, 1: ``(T, mel)``)."""
        probe = np.random.default_rng(0).standard_normal(self.sampling_rate // 10).astype(np.float32)
        out = self._extract(
            [0.01 * probe]
        )  # 0.1 s of faint noise (silence gives NaN in normalizing extractors)
        bins = getattr(self.feature_extractor, "num_mel_bins", None) or getattr(
            self.feature_extractor, "feature_size", None
        )
        for name in ("input_features", "input_values"):
            x = out.get(name)
            if x is None or x.dim() != 3:
                continue
            if type(self.feature_extractor).__name__.startswith("Whisper") or x.shape[2] != bins:
                if x.shape[1] == bins:
                    return name, 0
            else:
                return name, 1
        shapes = {k: tuple(v.shape) for k, v in out.items()}
        raise ConfigError(
            "`encoder.augment`: time/frequency masks need spectrogram inputs, but "
            f"{type(self.feature_extractor).__name__} gives {shapes} (no (batch, mel, frames) output with "
            f"{bins} mel bins). Set `time_mask_prob` and `freq_mask_prob` to 0 for waveform encoders."
        )

    def _generator(self, example: dict) -> np.random.Generator:
        key = example.get(EXAMPLE_KEY)
        if key is not None:
            entropy = [self.seed, 0, int(key[0]), int(key[1])]
        else:
            ident = _audio_hash(example["audio"])
            count = self._seen[ident] = self._seen.get(ident, -1) + 1
            entropy = [self.seed, 1, ident, count]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def _train_clip(self, wave: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        augment = self.augment
        if self.max_length is not None and augment is not None and augment.config.waveform_enabled:
            # Augment only what survives the crop: a window long enough for the fastest speed factor.
            margin = max(augment.config.speeds) if augment.config.speed_prob > 0 else 1.0
            window = int(np.ceil(self.max_length * margin))
            if len(wave) > window:
                wave = crop_or_pad(wave, window, random=True, generator=generator)
        if augment is not None:
            wave = augment(wave, self.sampling_rate, generator=generator)
        if self.max_length is not None and len(wave) > self.max_length:
            wave = crop_or_pad(wave, self.max_length, random=True, generator=generator)
        return wave

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        waves = [decode_audio(ex["audio"], sampling_rate=self.sampling_rate) for ex in examples]
        for wave, example in zip(waves, examples, strict=True):
            if not np.isfinite(wave).all():  # the up-front scan reads headers and file ends only
                name = (
                    example["audio"].get("path") if isinstance(example["audio"], dict) else example["audio"]
                )
                raise DataError(
                    f"{name}: {np.count_nonzero(~np.isfinite(wave)):,} samples are NaN or infinite. "
                    "Fix: re-export the file, or remove it from the data."
                )
        if self.normalize != "none":
            waves = [normalize_level(w, self.normalize) for w in waves]
        if self.train:
            generators = [self._generator(ex) for ex in examples]
            waves = [self._train_clip(w, g) for w, g in zip(waves, generators, strict=True)]
        elif self.max_length is not None:
            waves = [
                crop_or_pad(w, self.max_length, random=False) if len(w) > self.max_length else w
                for w in waves
            ]
        batch = dict(self._extract(waves))
        if self.train and self._spectrogram is not None:
            name, freq_axis = self._spectrogram
            batch[name] = torch.stack([
                self.augment.mask(x, freq_axis=freq_axis, generator=g, num_frames=-(-len(w) // self._hop))
                for x, w, g in zip(batch[name], waves, generators, strict=True)
            ])  # fmt: skip
        return with_labels(batch, examples)


def _audio_hash(item: str | dict) -> int:
    """A 63-bit hash of an audio item's path (or its bytes when it has no path), stable across processes."""
    if isinstance(item, dict):
        data = item.get("path") or item.get("bytes") or b""
    else:
        data = item
    data = data.encode() if isinstance(data, str) else bytes(data)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
