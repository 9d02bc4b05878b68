"""Audio decoding without ``datasets``' decoder: soundfile to read, torchaudio to resample.

Audio columns stay undecoded in the datasets (``Audio(decode=False)`` items ``{"path", "bytes"}`` or
plain path strings), so the core needs neither torchcodec nor ffmpeg; the collator decodes each batch.

Example:
    >>> wave = decode_audio("0_george_0.wav", sampling_rate=16_000)  # 8 kHz file -> 16 kHz
    >>> clip = crop_or_pad(wave, 16_000, random=False, generator=None)  # exactly 1 s
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from hftl.errors import DataError

# Formats libsndfile reads (mp3 since libsndfile 1.1); used to recognise audio folders and manifests.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf"}
)


def _describe(item: str | dict) -> str:
    if isinstance(item, dict):
        return str(item.get("path") or "<in-memory audio bytes>")
    return str(item)


def _read(item: str | dict) -> tuple[np.ndarray, int]:
    """Reads ``item`` with soundfile as float32 of shape (frames, channels) and its sampling rate."""
    import soundfile as sf

    if isinstance(item, dict):
        source = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
    else:
        source = item
    if source is None:
        raise DataError(
            "Audio item has neither `bytes` nor `path`; expected a file path or {'path', 'bytes'}."
        )
    if isinstance(source, str | Path) and not Path(source).is_file():
        raise DataError(f"Audio file not found: {source}. Check the paths in the data manifest or folder.")
    try:
        wave, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise DataError(
            f"Cannot decode audio file {_describe(item)}: {err}. Supported formats are those of libsndfile "
            f"({', '.join(sorted(AUDIO_EXTENSIONS))}); convert the file, e.g. with ffmpeg, to 16-bit WAV."
        ) from err
    return wave, int(rate)


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resamples a 1-D float32 signal with torchaudio (scipy's polyphase filter if torchaudio is missing)."""
    if orig_rate == new_rate:
        return wave
    try:
        import torch
        import torchaudio.functional as F
    except ImportError:
        from scipy.signal import resample_poly

        g = math.gcd(orig_rate, new_rate)
        return resample_poly(wave, new_rate // g, orig_rate // g).astype(np.float32)
    return F.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig_rate, new_rate).numpy()


def decode_audio(item: str | dict, *, sampling_rate: int) -> np.ndarray:
    """Decodes one audio item to a mono float32 waveform at ``sampling_rate``.

    Args:
        item: a file path, or a ``datasets.Audio(decode=False)`` item ``{"path", "bytes"}`` (bytes win).
        sampling_rate: target rate in Hz; the signal is resampled when the file's rate differs.

    Returns:
        Shape ``(ceil(frames * sampling_rate / file_rate),)``, channels averaged.

    Raises:
        DataError: naming the file if it is missing, unreadable, empty or contains NaN/inf.
    """
    wave, rate = _read(item)
    if wave.size == 0:
        raise DataError(f"Audio file {_describe(item)} is empty (0 samples); remove it from the data set.")
    mono = wave.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise DataError(
            f"Audio file {_describe(item)} contains NaN or infinite samples; re-encode or remove it."
        )
    return np.ascontiguousarray(resample(mono, rate, sampling_rate), dtype=np.float32)


def crop_or_pad(
    wave: np.ndarray, length: int, *, random: bool, generator: np.random.Generator | None = None
) -> np.ndarray:
    """Crops or zero-pads a 1-D waveform to exactly ``length`` samples.

    Args:
        wave: shape ``(frames,)``.
        length: number of samples to return.
        random: crop at a random offset (training augmentation) instead of the centre.
        generator: source of the random offset; a fresh unseeded one if None.

    Returns:
        Shape ``(length,)``: a window of ``wave`` if it is longer, else ``wave`` followed by zeros.
    """
    if length <= 0:
        raise ValueError(f"crop_or_pad: length must be positive, got {length}")
    excess = len(wave) - length
    if excess > 0:
        if random:
            start = int((generator or np.random.default_rng()).integers(0, excess + 1))
        else:
            start = excess // 2
        return wave[start : start + length]
    if excess < 0:
        return np.pad(wave, (0, -excess))
    return wave
