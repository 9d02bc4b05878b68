"""Synthetic spoken digits: "zero".."nine" spoken by espeak-ng voices, a speech domain with no download.

Each voice says every digit ``per_digit`` times at a seeded random speed and pitch; clips are trimmed of
leading/trailing silence and written as 8 kHz mono 16-bit WAV like the Free Spoken Digit Dataset
(``hftl:fsdd``). The voices are split (seeded) into two groups, ``source`` and ``target``, so a
source -> target adaptation runs on this folder alone, and the whole set is a source domain for
synthetic -> real (FSDD) adaptation.

Layout::

    DIR/manifest.csv                      path,label,voice,group,speed,pitch (paths relative to DIR)
    DIR/source/<digit>_<voice>_<i>.wav
    DIR/target/<digit>_<voice>_<i>.wav

Example:
    >>> manifest = make_spoken_digits("outputs/spoken_digits", voices=["en-us", "en-gb"], per_digit=2)
    >>> ClassificationData(path=str(manifest), filters={"group": ["source"]}).load()

Command line: ``hftl data make-spoken-digits --out outputs/spoken_digits [--voices ...] [--force]``.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hftl.data.audio import resample
from hftl.errors import ConfigError, HftlError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Eight voices that ship with Debian's espeak-ng 1.51 (accents, variants, the klatt synthesiser), each
# sounding different: `espeak-ng --voices=en` and `--voices=variant` list the others (mbrola voices need
# extra packages). Beware: espeak-ng 1.51 ignores a variant on `en-gb` (`en-gb+m3` = `en-gb`); `en+m3` works.
DEFAULT_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-gbclan",
    "en-us+f2",
    "en+m3",
    "en-us+klatt",
)
SAMPLING_RATE = 8_000  # Hz, as FSDD
SPEED_RANGE = (120, 200)  # words per minute (espeak-ng's default is 175)
PITCH_RANGE = (20, 80)  # espeak-ng pitch 0..99 (default 50)
MANIFEST = "manifest.csv"
_TRIM_LEVEL = 0.02  # samples under 2 % of the peak at both ends are silence
_MARGIN_S = 0.02  # seconds of silence kept at each end


@dataclass(frozen=True)
class _Clip:
    digit: int
    voice: str
    take: int
    speed: int
    pitch: int
    group: str

    @property
    def relpath(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9-]+", "-", self.voice)  # en-us+f2 -> en-us-f2: no `_` or `/`
        return f"{self.group}/{self.digit}_{slug}_{self.take}.wav"


def espeak_binary() -> str:
    """The espeak-ng executable.

    Raises:
        HftlError: if espeak-ng is not installed.
    """
    found = shutil.which("espeak-ng")
    if found is None:
        raise HftlError(
            "espeak-ng is not installed (not found on PATH); it synthesizes the spoken digits. Install it "
            "with `apt-get install -y espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS)."
        )
    return found


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0 or "does not exist" in done.stderr:
        message = done.stderr.strip().rstrip(".") or "no message"
        raise HftlError(
            f"espeak-ng failed for {what} (exit {done.returncode}): {message}. "
            "`espeak-ng --voices=en` lists the voices; add a variant with `+`, e.g. en-us+f2."
        )


def _trim(wave: np.ndarray, rate: int) -> np.ndarray:
    """Cuts leading/trailing silence (under ``_TRIM_LEVEL`` of the peak), keeping a short margin."""
    loud = np.flatnonzero(np.abs(wave) >= _TRIM_LEVEL * np.abs(wave).max())
    if loud.size == 0:
        return wave
    margin = int(_MARGIN_S * rate)
    return wave[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def _synthesize(binary: str, clip: _Clip, root: Path) -> None:
    """espeak-ng at its native rate (22,050 Hz) -> trimmed, resampled 8 kHz mono 16-bit WAV."""
    import soundfile as sf

    out = root / clip.relpath
    raw = out.with_suffix(".raw.wav")
    word = DIGIT_WORDS[clip.digit]
    cmd = [binary, "-v", clip.voice, "-s", str(clip.speed), "-p", str(clip.pitch), "-w", str(raw), word]
    _run(cmd, f"voice {clip.voice!r}, word {word!r}")
    wave, rate = sf.read(raw, dtype="float32", always_2d=True)
    raw.unlink()
    wave = _trim(wave.mean(axis=1), rate)
    wave = np.clip(resample(wave, rate, SAMPLING_RATE), -1.0, 1.0)
    sf.write(out, wave, SAMPLING_RATE, subtype="PCM_16")


def _plan_clips(voices: Sequence[str], *, digits: Sequence[int], per_digit: int, seed: int) -> list[_Clip]:
    """Every clip to synthesize: voices split into groups, a seeded speed and pitch per clip."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(voices))
    n_source = (len(voices) + 1) // 2
    group = {voices[j]: "source" if rank < n_source else "target" for rank, j in enumerate(order)}
    return [
        _Clip(
            digit=d,
            voice=v,
            take=i,
            speed=int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
            pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            group=group[v],
        )
        for v in voices
        for d in digits
        for i in range(per_digit)
    ]


def _check(out: Path, voices: Sequence[str], digits: Sequence[int], per_digit: int, force: bool) -> None:
    problems = []
    if len(voices) < 2 or len(set(voices)) != len(voices):
        problems.append(f"`voices` is {list(voices)}; give at least two distinct espeak-ng voices.")
    if (
        not digits
        or any(isinstance(d, bool) or d not in range(10) for d in digits)
        or len(set(digits)) != len(digits)
    ):
        problems.append(f"`digits` is {list(digits)}; allowed: distinct integers 0..9.")
    if isinstance(per_digit, bool) or not isinstance(per_digit, int) or per_digit < 1:
        problems.append(f"`per_digit` is {per_digit!r}; allowed: a positive integer.")
    if problems:
        raise ConfigError(problems)
    if out.exists() and not out.is_dir():
        raise HftlError(f"--out {out} is a file; give a folder path (it is created).")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise HftlError(
            f"--out {out} already exists and is not empty; pass --force to replace it, or choose another folder."
        )


def make_spoken_digits(
    out_dir: str | Path,
    *,
    voices: Sequence[str] = DEFAULT_VOICES,
    per_digit: int = 6,
    digits: Sequence[int] = tuple(range(10)),
    seed: int = 0,
    force: bool = False,
    workers: int = 2,
) -> Path:
    """Synthesizes the spoken-digit set into ``out_dir`` (written in a temp folder, renamed at the end).

    Args:
        out_dir: folder to create; an existing non-empty one is replaced only with ``force``.
        voices: espeak-ng voices (``espeak-ng --voices=en``), optionally with a variant (``en-us+f2``).
        per_digit: clips per (voice, digit), each at its own random speed and pitch.
        digits: which digits to say (labels are the digits themselves).
        seed: seed of the voice groups, speeds and pitches.
        force: replace an existing non-empty ``out_dir``.
        workers: parallel espeak-ng processes.

    Returns:
        The manifest path, ``out_dir/manifest.csv`` (columns path,label,voice,group,speed,pitch).

    Raises:
        HftlError: if espeak-ng is missing or fails (e.g. an unknown voice), or ``out_dir`` is taken.
        ConfigError: for bad ``voices``, ``digits`` or ``per_digit``.
    """
    out = Path(out_dir).expanduser()
    voices, digits = list(voices), list(digits)
    _check(out, voices, digits, per_digit, force)
    binary = espeak_binary()
    clips = _plan_clips(voices, digits=digits, per_digit=per_digit, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        for group in ("source", "target"):
            (tmp / group).mkdir()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            # Check every voice once first, so an unknown one fails fast with a clear message.
            checks = [pool.submit(_run, [binary, "-q", "-v", v, "one"], f"voice {v!r}") for v in voices]
            [f.result() for f in checks]
            [f.result() for f in [pool.submit(_synthesize, binary, c, tmp) for c in clips]]
        with open(tmp / MANIFEST, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "voice", "group", "speed", "pitch"])
            writer.writerows([c.relpath, c.digit, c.voice, c.group, c.speed, c.pitch] for c in clips)
        if out.exists():
            old = out.parent / f"{tmp.name}.old"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out / MANIFEST
