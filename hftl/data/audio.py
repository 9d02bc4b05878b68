"""Audio decoding without ``datasets``' decoder: soundfile to read, torchaudio to resample.

Audio columns stay undecoded in the datasets (``Audio(decode=False)`` items ``{"path", "bytes"}`` or
plain path strings), so the core needs neither torchcodec nor ffmpeg; the collator decodes each batch.
Formats libsndfile cannot read (m4a/AAC, WMA, WebM, ...) are decoded with torchcodec (ffmpeg) when it is
installed (``pip install hftl[audio]``).

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

# Highest sampling rate a header may claim (768 kHz: the top rate of studio converters). A damaged or
# hostile header claiming billions of Hz would make resampling allocate hundreds of GiB.
MAX_SAMPLING_RATE = 768_000


def _describe(item: str | dict) -> str:
    if isinstance(item, dict):
        return str(item.get("path") or "<in-memory audio bytes>")
    return str(item)


def _source(item: str | dict):
    """What soundfile/torchcodec open: the bytes (as a file object) if present, else the path."""
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
    return source


def _read_with_torchcodec(item: str | dict) -> tuple[np.ndarray, int] | None:
    """Decodes with torchcodec (ffmpeg); None if torchcodec is missing or cannot decode the item."""
    try:
        from torchcodec.decoders import AudioDecoder
    except Exception:  # not installed, or its ffmpeg libraries fail to load
        return None
    source = _source(item)
    try:
        samples = AudioDecoder(source.getvalue() if isinstance(source, io.BytesIO) else str(source))
        samples = samples.get_all_samples()
    except Exception:
        return None
    return samples.data.numpy().T.astype(np.float32, copy=False), int(samples.sample_rate)


def _check_rate(item: str | dict, rate: int) -> None:
    if rate > MAX_SAMPLING_RATE:
        raise DataError(
            f"Audio file {_describe(item)}: its header claims a sampling rate of {rate:,} Hz, above "
            f"{MAX_SAMPLING_RATE:,} Hz (a damaged header?). Fix: re-export it at its true rate, e.g. "
            "`ffmpeg -i FILE -ar 16000 OUT.wav`, or remove it."
        )


def read_audio(item: str | dict) -> tuple[np.ndarray, int]:
    """Reads ``item`` at its own rate: soundfile first, torchcodec (ffmpeg) for the formats it lacks.

    Args:
        item: a file path, or a ``datasets.Audio(decode=False)`` item ``{"path", "bytes"}`` (bytes win).

    Returns:
        The samples as float32 of shape ``(frames, channels)``, and the sampling rate in Hz.

    Raises:
        DataError: naming the file if it is missing, neither decoder can read it, or its header claims a
            sampling rate above :data:`MAX_SAMPLING_RATE`.
    """
    import soundfile as sf

    source = _source(item)
    try:
        wave, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        decoded = _read_with_torchcodec(item)
        if decoded is not None:
            _check_rate(item, decoded[1])
            return decoded
        raise DataError(
            f"Cannot decode audio file {_describe(item)}: {err}. Readable formats: those of libsndfile "
            f"({', '.join(sorted(AUDIO_EXTENSIONS))}) and, with torchcodec installed, those of ffmpeg. "
            "Convert the file to WAV (e.g. `ffmpeg -i FILE -ac 1 FILE.wav`) or remove it."
        ) from err
    _check_rate(item, int(rate))
    return wave, int(rate)


# Above this many polyphase branches (rate ratio reduced by the gcd, e.g. 7919 -> 16000 Hz), torchaudio's
# windowed-sinc kernel grows to gigabytes and takes seconds per clip; scipy's polyphase filter does not.
_MAX_TORCHAUDIO_PHASES = 1000


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resamples a 1-D float32 signal with torchaudio (scipy's polyphase filter for odd rate ratios).

    Args:
        wave: shape ``(frames,)``.
        orig_rate: the signal's rate in Hz.
        new_rate: the wanted rate in Hz.

    Returns:
        Shape ``(ceil(frames * new_rate / orig_rate),)``, float32.
    """
    if orig_rate == new_rate:
        return wave
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    try:
        import torch
        import torchaudio.functional as F
    except ImportError:
        F = None
    if F is None or max(up, down) > _MAX_TORCHAUDIO_PHASES:
        from scipy.signal import resample_poly

        return resample_poly(wave, up, down).astype(np.float32)
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
    wave, rate = read_audio(item)
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
