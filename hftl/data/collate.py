"""Batch collators: a list of standardized examples in, the model's input tensors (+ ``labels``) out.

Examples come from :class:`hftl.data.ClassificationData` splits: ``{"text" | "audio" | "image": ...,
"label": int}`` (no ``label`` in unlabeled splits). Each collator pads dynamically to the longest
example of the batch, so short batches cost little.

Example:
    >>> collate = TextCollator(tokenizer, max_length=128)
    >>> loader = torch.utils.data.DataLoader(splits["train"], batch_size=32, collate_fn=collate)
"""

from __future__ import annotations

import hashlib
import inspect
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hftl.data.audio import crop_or_pad, decode_audio
from hftl.data.augment import AudioAugment, AudioAugmentConfig
from hftl.data.tokenized import is_pretokenized
from hftl.errors import ConfigError, DataError

# Example field added by KeyedDataset: (dataset index, sampler epoch), the seed of its random choices.
EXAMPLE_KEY = "_example_key"


def _with_labels(batch, examples: list[dict]) -> dict[str, torch.Tensor]:
    """Plain dict of the processor's tensors, plus ``labels`` (LongTensor) when the examples have ``label``."""
    out = dict(batch)
    if examples and "label" in examples[0]:
        out["labels"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
    return out


class TextCollator:
    """Pads token ids (pre-tokenized rows) or tokenizes ``text``, to the longest sequence of the batch.

    Rows of a split tokenized by :func:`hftl.data.tokenized.pretokenize` carry ``input_ids`` (and
    ``attention_mask``, ``token_type_ids``): they are only padded, with ``tokenizer.pad``. Rows with
    raw ``text`` are tokenized here, on every call. Both give the same tensors for the same texts.

    Args:
        tokenizer: a transformers tokenizer.
        max_length: sequences longer than this many tokens are truncated.

    Returns (on call):
        ``input_ids``, ``attention_mask`` (and whatever else the tokenizer returns), shape ``(B, L)``
        with ``L <= max_length`` the longest tokenized text; ``labels`` shape ``(B,)``.

    Raises (on call):
        DataError: pre-tokenized rows longer than ``max_length`` (tokenized for another max length).
    """

    def __init__(self, tokenizer, *, max_length: int = 128):
        self.tokenizer, self.max_length = tokenizer, max_length
        self._token_keys = ("input_ids", *(k for k in tokenizer.model_input_names if k != "input_ids"))

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if examples and "input_ids" in examples[0]:
            return _with_labels(self._pad(examples), examples)
        texts = [ex["text"] for ex in examples]
        batch = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return _with_labels(batch, examples)

    def _pad(self, examples: list[dict]):
        longest = max(len(ex["input_ids"]) for ex in examples)
        if self.max_length is not None and longest > self.max_length:
            raise DataError(
                f"A pre-tokenized row has {longest} tokens but the collator's max_length is "
                f"{self.max_length}: the split was tokenized with a larger `encoder.max_length`. Fix: "
                "tokenize it again with the encoder's max_length (hftl.data.tokenized.pretokenize)."
            )
        keys = [k for k in self._token_keys if k in examples[0]]
        features = [{k: ex[k] for k in keys} for ex in examples]
        return self.tokenizer.pad(features, padding="longest", return_tensors="pt")


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

    * examples read through :class:`KeyedDataset` carry ``(dataset index, sampler epoch)``; the
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
        return _with_labels(batch, examples)


class ImageCollator:
    """Runs the image processor on ``image``, converting to the channel count it expects.

    The expected count is the processor's ``num_channels`` if it has one, else the length of its
    ``image_mean`` (3 when unknown): grayscale digits become RGB for an ImageNet ViT.

    Args:
        image_processor: a transformers image processor.

    Returns (on call):
        ``pixel_values`` shape ``(B, C, H, W)`` and ``labels`` shape ``(B,)``.
    """

    def __init__(self, image_processor):
        self.image_processor = image_processor
        channels = getattr(image_processor, "num_channels", None)
        mean = getattr(image_processor, "image_mean", None)
        if channels is None and isinstance(mean, list | tuple):
            channels = len(mean)
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [ex["image"] for ex in examples]
        images = [
            im.convert(self.mode) if getattr(im, "mode", self.mode) != self.mode else im for im in images
        ]
        return _with_labels(self.image_processor(images, return_tensors="pt"), examples)


def text_lengths(dataset: Iterable[dict], tokenizer=None, *, batch_size: int = 1000) -> list[int]:
    """Per-example lengths of ``text``, for length-grouped sampling.

    Pre-tokenized data (an ``input_ids`` column, see :mod:`hftl.data.tokenized`) gives its real token
    counts (after truncation), whatever ``tokenizer`` is.

    Args:
        dataset: a ``datasets.Dataset`` (or any sequence of dicts) with a ``text`` or ``input_ids`` column.
        tokenizer: count tokens (special tokens included) with it; None counts whitespace-separated words.
        batch_size: texts tokenized per call.

    Returns:
        One length per example, in dataset order.
    """
    if is_pretokenized(dataset):
        import pyarrow.compute as pc

        return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()
    if hasattr(dataset, "with_format"):
        texts = dataset.with_format("arrow")["text"].to_pylist()
    else:
        rows = list(dataset)
        if rows and "input_ids" in rows[0]:
            return [len(ex["input_ids"]) for ex in rows]
        texts = [ex["text"] for ex in rows]
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    lengths = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start : start + batch_size], truncation=False)["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths


def _audio_hash(item: str | dict) -> int:
    """A 63-bit hash of an audio item's path (or its bytes when it has no path), stable across processes."""
    if isinstance(item, dict):
        data = item.get("path") or item.get("bytes") or b""
    else:
        data = item
    data = data.encode() if isinstance(data, str) else bytes(data)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def audio_lengths(dataset: Iterable[dict], *, sampling_rate: int = 16_000) -> list[int]:
    """Per-example lengths of ``audio`` in samples at ``sampling_rate``, for length-grouped sampling.

    Reads only each file's header (``soundfile.info``): nothing is decoded.

    Args:
        dataset: a ``datasets.Dataset`` (or any sequence of dicts) with an undecoded ``audio`` column
            (paths or ``{"path", "bytes"}`` items).
        sampling_rate: the rate the clips will be decoded at (the encoder's).

    Returns:
        One length per example, in dataset order: ``ceil(frames × sampling_rate / file_rate)``.

    Raises:
        DataError: naming a file that is missing or whose header cannot be read.
    """
    import soundfile as sf

    if hasattr(dataset, "with_format"):
        items = dataset.with_format("arrow")["audio"].to_pylist()
    else:
        items = [ex["audio"] for ex in dataset]
    lengths = []
    for item in items:
        if isinstance(item, dict):
            name = item.get("path") or "<in-memory audio bytes>"
            source = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
        else:
            name = source = item
        try:
            info = sf.info(source)
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise DataError(
                f"Cannot read the header of audio file {name}: {err}. Fix or remove the file (group_by_length "
                "reads every training clip's duration)."
            ) from err
        lengths.append(-(-int(info.frames) * sampling_rate // int(info.samplerate)))
    return lengths


class EpochKeySampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` for each index of an epoch-seeded sampler (see :class:`KeyedDataset`).

    The epoch travels with the index, so DataLoader workers (which hold stale copies of the collator
    and dataset) still see the sampler's current epoch.

    Args:
        sampler: a sampler with ``epoch`` and ``set_epoch`` (:class:`hftl.data.samplers.EpochSampler`).
    """

    def __init__(self, sampler: Sampler[int]):
        self.sampler = sampler

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((i, epoch) for i in self.sampler)


class KeyedDataset(Dataset):
    """Reads ``(index, epoch)`` keys from :class:`EpochKeySampler` and adds them to each example.

    The collator seeds each example's random choices from the key (``EXAMPLE_KEY`` field), which makes
    augmentation a function of ``(seed, index, epoch)``: exact under resume and any worker count.

    Example:
        >>> sampler = EpochKeySampler(EpochSampler(len(ds), seed=0))
        >>> loader = DataLoader(KeyedDataset(ds), sampler=sampler, batch_size=8, collate_fn=collator)
    """

    def __init__(self, dataset: Sequence[dict]):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return {**self.dataset[int(key[0])], EXAMPLE_KEY: (int(key[0]), int(key[1]))}

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict]:
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None:
            return [self[k] for k in keys]
        rows = getitems([int(k[0]) for k in keys])  # one Arrow read for the batch
        return [{**row, EXAMPLE_KEY: (int(k[0]), int(k[1]))} for row, k in zip(rows, keys, strict=True)]


def with_example_keys(dataset: Sequence[dict], sampler: Sampler[int]) -> tuple[KeyedDataset, EpochKeySampler]:
    """The ``(dataset, sampler)`` pair that gives each example its ``(index, epoch)`` key.

    Wire it where the training loader is built, when the collator asks for keys
    (``getattr(collate_fn, "uses_example_keys", False)``)::

        sampler = EpochSampler(len(dataset), seed=seed, shuffle=True)
        dataset, sampler = with_example_keys(dataset, sampler)
    """
    return KeyedDataset(dataset), EpochKeySampler(sampler)
