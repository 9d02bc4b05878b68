"""Checking every audio file of a data set before training, so a bad file never kills a long run.

:func:`scan_audio` reads each file's header with soundfile (fast: no decoding), confirms that its last
frames decode (a truncated FLAC or MP3 fails there), fully decodes only float files (the only ones that
can hold NaN), and falls back to the collator's own decoder (:func:`hftl.data.audio.read_audio`) for
what libsndfile cannot open. Bad files — missing, empty, unreadable or unsupported, truncated, without
samples, with NaN/inf samples, or with an implausible sampling rate (below 1 kHz or above 768 kHz) — are reported **once**, each with
its name and the fix, and then either stop the run (``on_bad_audio: stop``, the default) or are dropped
(``skip``) with one summary. Stereo and multichannel files are mixed down and other sampling rates are
resampled by the collator: neither is an error. Clips far longer than the encoder's ``max_duration``
are counted and warned about once.

Example (YAML)::

    data:
      _component_: hftl.data.ClassificationData
      path: clips/manifest.csv
      on_bad_audio: skip                                # drop bad files, report them once
      max_duration: ${encoder.max_duration}             # warn about clips cropped to a small part
      bad_audio_report: ${output_dir}/bad_audio.csv     # full list (split, row, path, problem, fix)
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

from hftl.data.audio import AUDIO_EXTENSIONS, MAX_SAMPLING_RATE, read_audio
from hftl.errors import DataError

logger = logging.getLogger(__name__)

OnBadAudio = Literal["stop", "skip"]
LONG_FACTOR = 2.0  # clips over LONG_FACTOR x max_duration lose more than half their audio to the crop
MIN_SAMPLING_RATE = 1_000  # Hz; a header below this is damaged (no encoder hears anything in 500 Hz)
SHOWN = 5  # files listed in a message; the report file lists all
_TAIL_FRAMES = 1024  # frames decoded at the end of each file to prove the data is all there
_CHUNK = 1024  # rows read from the dataset at a time (bytes items can be large)
_WORKERS = 8  # header reads wait on the disk, not the CPU
_REPORTED: set[str] = set()  # messages already shown in this process (a data set may be loaded twice)

FIX_MISSING = (
    "correct the path in the manifest (relative paths are resolved against the manifest's folder) or "
    "remove the row"
)
FIX_REEXPORT = "re-export the file from its source, or remove it"
FIX_RATE = "re-export it at its true rate, e.g. `ffmpeg -i FILE -ar 16000 OUT.wav`, or remove it"
FIX_CONVERT = "convert it to WAV or FLAC, e.g. `ffmpeg -i FILE -ac 1 FILE.wav`, or remove it"


@dataclass(frozen=True)
class AudioInfo:
    """What a readable audio file holds: ``frames`` samples per channel at ``sampling_rate`` Hz."""

    frames: int
    sampling_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sampling_rate


@dataclass(frozen=True)
class BadAudio:
    """One bad file: where it is (``split``, ``row``, ``path``), what is wrong and how to fix it."""

    split: str
    row: int
    path: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path} (split {self.split!r}, row {self.row}): {self.problem}. Fix: {self.fix}."


class BadAudioError(DataError):
    """Raised by :func:`probe_audio` for a file that cannot be trained on."""

    def __init__(self, problem: str, fix: str):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}. Fix: {fix}.")


def option_problems(on_bad_audio: object, max_duration: object) -> list[str]:
    """Problems with the ``on_bad_audio`` and ``max_duration`` arguments of ClassificationData."""
    problems = []
    if on_bad_audio not in ("stop", "skip"):
        problems.append(f"`data.on_bad_audio` is {on_bad_audio!r}; allowed: stop (default) or skip.")
    if max_duration is not None and (
        isinstance(max_duration, bool) or not isinstance(max_duration, int | float) or max_duration <= 0
    ):
        problems.append(
            f"`data.max_duration` is {max_duration!r}; allowed: positive seconds (the encoder's "
            "`max_duration`, e.g. `${encoder.max_duration}`) or null."
        )
    return problems


# --- one file ----------------------------------------------------------------------------------------


def _name(item: str | dict | None) -> str:
    if isinstance(item, dict):
        return str(item.get("path") or "<in-memory audio bytes>")
    return str(item)


def _check_finite(wave: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(wave)))
    if bad:
        amount = "all" if bad == wave.size else f"{bad:,} of {wave.size:,}"
        raise BadAudioError(f"{amount} samples are NaN or infinite", FIX_REEXPORT)


def _check_complete(f, frames: int) -> None:
    """Raises if the data ends before the frames the header announces (a truncated file)."""
    import soundfile as sf

    declared = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", f.extra_info, re.M)
    if declared:  # WAV: libsndfile shortens `frames` to the bytes present; 2**31-1 and up are placeholders
        said, present = (int(x) for x in declared.groups())
        if present < said < 2**31 - 1:
            raise BadAudioError(
                f"truncated: its header announces {said:,} bytes of audio, the file holds {present:,}",
                FIX_REEXPORT,
            )
    start = max(frames - _TAIL_FRAMES, 0)
    try:
        f.seek(start)
        got = len(f.read(frames - start, dtype="float32"))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadAudioError(
            f"truncated or corrupt: decoding fails before its end ({err})", FIX_REEXPORT
        ) from err
    if got != frames - start:
        raise BadAudioError(
            f"truncated: its header announces {frames:,} frames, decoding stops at {start + got:,}",
            FIX_REEXPORT,
        )


def _probe_decoding(item: str | dict, err: Exception) -> AudioInfo:
    """For what libsndfile cannot open: the collator's decoder (torchcodec/ffmpeg when installed)."""
    try:
        wave, rate = read_audio(item)
    except DataError:
        suffix = Path(_name(item)).suffix.lower()
        if suffix not in AUDIO_EXTENSIONS:
            raise BadAudioError(
                f"unsupported format {suffix or '(no extension)'!r}: neither libsndfile nor torchcodec can "
                f"read it (supported: {', '.join(sorted(AUDIO_EXTENSIONS))}, and ffmpeg's formats with "
                "torchcodec installed)",
                FIX_CONVERT,
            ) from err
        reason = re.sub(r"^Error opening .*?: ", "", str(err)).rstrip(".")  # the path is named already
        raise BadAudioError(f"corrupt: cannot be decoded ({reason})", FIX_REEXPORT) from err
    _check_finite(wave)
    return AudioInfo(frames=wave.shape[0], sampling_rate=rate, channels=wave.shape[1])


def _probe_source(item: str | dict, source) -> AudioInfo:
    import soundfile as sf

    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        info = _probe_decoding(item, err)
    else:
        with f:
            info = AudioInfo(frames=f.frames, sampling_rate=f.samplerate, channels=f.channels)
            if info.frames > 0:
                _check_complete(f, info.frames)
                if f.subtype in ("FLOAT", "DOUBLE"):  # integer PCM and lossy codecs cannot hold NaN
                    f.seek(0)
                    _check_finite(f.read(dtype="float32"))
    if info.frames == 0:
        raise BadAudioError("holds no audio (0 samples)", FIX_REEXPORT)
    if info.sampling_rate < MIN_SAMPLING_RATE:
        raise BadAudioError(
            f"sampling rate {info.sampling_rate} Hz in its header is below {MIN_SAMPLING_RATE:,} Hz, too low "
            "to resample into audio any encoder can use (a damaged header?)",
            FIX_RATE,
        )
    if info.sampling_rate > MAX_SAMPLING_RATE:
        raise BadAudioError(
            f"sampling rate {info.sampling_rate:,} Hz in its header is above {MAX_SAMPLING_RATE:,} Hz (a damaged "
            "header?); resampling it would need gigabytes",
            FIX_RATE,
        )
    return info


@functools.lru_cache(maxsize=200_000)
def _probe_file(path: str, mtime_ns: int, size: int) -> AudioInfo:
    """Probes a file once per (path, modification time, size): a data set loaded twice is scanned once."""
    return _probe_source(path, path)


def probe_audio(item: str | dict) -> AudioInfo:
    """Checks one audio item (a path or a ``{"path", "bytes"}`` dict) the way the collator will read it.

    Raises:
        BadAudioError: with ``problem`` and ``fix``, if the collator could not train on the item.
    """
    data = item.get("bytes") if isinstance(item, dict) else None
    if data is not None:
        if not len(data):
            raise BadAudioError("empty (0 bytes)", FIX_REEXPORT)
        return _probe_source(item, io.BytesIO(data))
    path = item.get("path") if isinstance(item, dict) else item
    if not path:
        raise BadAudioError("the row has no audio path", FIX_MISSING)
    file = Path(str(path))
    if not file.is_file():
        raise BadAudioError("file not found", FIX_MISSING)
    stat = file.stat()
    if stat.st_size == 0:
        raise BadAudioError("empty file (0 bytes)", FIX_REEXPORT)
    return _probe_file(str(file), stat.st_mtime_ns, stat.st_size)


def _probe_or_problem(item: str | dict) -> AudioInfo | BadAudioError:
    try:
        return probe_audio(item)
    except BadAudioError as err:
        return err


# --- a whole data set --------------------------------------------------------------------------------


def _probe_split(ds: datasets.Dataset, column: str, pool: ThreadPoolExecutor):
    """Yields ``(row, item, AudioInfo | BadAudioError)`` for every row, reading ``_CHUNK`` rows at a time."""
    table = ds.with_format("arrow")
    for start in range(0, len(ds), _CHUNK):
        items = table[start : start + _CHUNK][column].to_pylist()
        for offset, (item, result) in enumerate(zip(items, pool.map(_probe_or_problem, items), strict=True)):
            yield start + offset, item, result


def _warn_once(message: str) -> None:
    if message not in _REPORTED:
        _REPORTED.add(message)
        logger.warning(message)


def _listing(bad: list[BadAudio], report_path: str | Path | None) -> str:
    lines = [f"  - {b}" for b in bad[:SHOWN]]
    if len(bad) > SHOWN:
        where = f"all in {report_path}" if report_path else "set `data.bad_audio_report` to list them all"
        lines.append(f"  ... and {len(bad) - SHOWN} more ({where})")
    return "\n".join(lines)


def write_report(bad: list[BadAudio], path: str | Path) -> Path:
    """Writes every bad file as a csv row (split, row, path, problem, fix); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "row", "path", "problem", "fix"])
        writer.writerows([b.split, b.row, b.path, b.problem, b.fix] for b in bad)
    return path


def _drop(dd: datasets.DatasetDict, bad: list[BadAudio], source: str) -> datasets.DatasetDict:
    for split, ds in dd.items():
        rows = {b.row for b in bad if b.split == split}
        if len(rows) == len(ds):
            raise DataError(
                f"Every audio file of split {split!r} of {source} is bad ({len(ds)} files), so "
                f"`on_bad_audio: skip` leaves nothing to train on:\n{_listing([b for b in bad if b.split == split], None)}"
            )
        if rows:
            dd[split] = ds.select([i for i in range(len(ds)) if i not in rows])
    return dd


def _warn_long(long: list[tuple[float, str]], total: int, source: str, max_duration: float) -> None:
    seconds, name = max(long)
    _warn_once(
        f"{len(long):,} of {total:,} audio clips of {source} are longer than {LONG_FACTOR:g} x max_duration "
        f"({max_duration:g} s), the longest {seconds:.1f} s ({name}). The encoder keeps one {max_duration:g} s "
        "crop of each (random in training, centred in evaluation), so most of their audio is never used: "
        "cut long recordings into clips of about max_duration, or raise `encoder.max_duration`."
    )


def scan_audio(
    dd: datasets.DatasetDict,
    *,
    source: str,
    on_bad_audio: OnBadAudio = "stop",
    max_duration: float | None = None,
    report_path: str | Path | None = None,
    column: str = "audio",
) -> datasets.DatasetDict:
    """Checks every audio file of every split before training; stops on or drops the bad ones.

    Args:
        dd: splits whose ``column`` holds paths or ``{"path", "bytes"}`` items (ClassificationData's shape).
        source: the data set as the user named it (``data.path``), for the messages.
        on_bad_audio: ``stop`` raises one error listing the bad files; ``skip`` drops their rows and
            warns once with the count and the first files.
        max_duration: the encoder's crop length in seconds; clips over ``LONG_FACTOR`` times it are
            counted and warned about once. None skips that check.
        report_path: csv file listing every bad file (written whenever there is one).
        column: the audio column.

    Returns:
        ``dd`` without the bad rows (unchanged when every file is good).

    Raises:
        DataError: with ``stop`` and at least one bad file, or when ``skip`` would empty a split.
    """
    bad: list[BadAudio] = []
    long: list[tuple[float, str]] = []
    total = multichannel = 0
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for split, ds in dd.items():
            for row, item, result in _probe_split(ds, column, pool):
                total += 1
                if isinstance(result, BadAudioError):
                    bad.append(BadAudio(split, row, _name(item), result.problem, result.fix))
                    continue
                multichannel += result.channels > 1
                if max_duration is not None and result.duration > LONG_FACTOR * max_duration:
                    long.append((result.duration, _name(item)))
    if bad:
        if report_path is not None:
            write_report(bad, report_path)
        if on_bad_audio == "stop":
            raise DataError(
                f"{len(bad)} of {total:,} audio files of {source} cannot be used (checked before training):\n"
                f"{_listing(bad, report_path)}\nFix or remove them, or set `on_bad_audio: skip` on this data "
                "config (e.g. `data.on_bad_audio=skip`) to train without them."
            )
        dd = _drop(dd, bad, source)
        _warn_once(
            f"Skipping {len(bad)} of {total:,} audio files of {source} (`on_bad_audio: skip`):\n"
            f"{_listing(bad, report_path)}" + (f"\nFull list: {report_path}" if report_path else "")
        )
    if long and max_duration is not None:
        _warn_long(long, total, source, max_duration)
    if multichannel:
        logger.info("%d multichannel audio files of %s are mixed down to mono.", multichannel, source)
    return dd
