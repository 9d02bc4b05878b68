"""Speech augmentation for the training split: noise at an SNR, time shift, gain, speed, SpecAugment masks.

Waveform transforms run on one 1-D float clip with a per-example random generator (the collator
derives it from the run seed and the example, so runs are reproducible); spectrogram masking runs on
the feature extractor's 2-D output (Whisper ``input_features``, AST ``input_values``). The
transforms come from torchaudio (``add_noise``, ``resample``, ``TimeMasking``/``FrequencyMasking``);
coloured noise and the noise-file bank are written here.

Example:
    >>> augment = AudioAugment(AudioAugmentConfig(noise_prob=0.5, snr_min=5, snr_max=20, speed_prob=0.3))
    >>> noisy = augment(wave, 16_000, generator=np.random.default_rng(0))  # doctest: +SKIP

In a recipe config the same settings sit on the audio encoder::

    encoder:
      _component_: hftl.encoders.AudioEncoder
      augment: {noise_prob: 0.5, snr_min: 5, snr_max: 20, speed_prob: 0.3}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hftl.config import to_dataclass
from hftl.data.audio import AUDIO_EXTENSIONS, resample
from hftl.errors import ConfigError, DataError

NoiseType = Literal["white", "pink", "brown"]
NOISE_TYPES: tuple[str, ...] = ("white", "pink", "brown")
# Power spectral density ∝ 1 / f^exponent: white 0, pink 1, brown (Brownian) 2.
_NOISE_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class AudioAugmentConfig:
    """Which speech augmentations run on training clips, and how strongly.

    Every ``*_prob`` is the probability that one clip gets that transform; all default to 0, so the
    default config changes nothing. Waveform transforms run in the order speed → shift → gain →
    noise (the drawn SNR is that of the final clip); masks run on the extracted features.
    """

    noise_prob: float = field(default=0.0, metadata=_help("Probability of adding noise to a clip."))
    noise_types: list[NoiseType] = field(
        default_factory=lambda: list(NOISE_TYPES),
        metadata=_help("Generated noise colours to draw from: white, pink (1/f), brown (1/f²)."),
    )
    noise_dir: str | None = field(
        default=None,
        metadata=_help(
            "Folder of noise recordings (any libsndfile format, searched recursively); when set, noise "
            "is a random segment of a random file instead of generated noise."
        ),
    )
    snr_min: float = field(default=5.0, metadata=_help("Lowest signal-to-noise ratio in dB."))
    snr_max: float = field(
        default=20.0, metadata=_help("Highest SNR in dB; each noisy clip draws uniformly in between.")
    )
    shift_prob: float = field(default=0.0, metadata=_help("Probability of a time shift."))
    shift_max: float = field(
        default=0.1,
        metadata=_help("Largest shift in seconds, either way; the clip keeps its length (zero-filled)."),
    )
    gain_prob: float = field(default=0.0, metadata=_help("Probability of a random gain."))
    gain_min_db: float = field(default=-6.0, metadata=_help("Lowest gain in dB."))
    gain_max_db: float = field(default=6.0, metadata=_help("Highest gain in dB (drawn uniformly)."))
    speed_prob: float = field(default=0.0, metadata=_help("Probability of speed perturbation."))
    speeds: list[float] = field(
        default_factory=lambda: [0.9, 1.0, 1.1],
        metadata=_help(
            "Speed factors drawn uniformly (Ko et al. 2015 use 0.9/1.0/1.1); 1.1 makes a clip 1/1.1 as "
            "long and raises its pitch, by resampling."
        ),
    )
    time_mask_prob: float = field(
        default=0.0, metadata=_help("Probability of each SpecAugment time mask (spectrogram inputs).")
    )
    time_masks: int = field(default=2, metadata=_help("Number of time masks tried per clip."))
    time_mask_param: int = field(
        default=20, metadata=_help("A time mask covers fewer than this many frames (10 ms each).")
    )
    freq_mask_prob: float = field(
        default=0.0, metadata=_help("Probability of each SpecAugment frequency mask.")
    )
    freq_masks: int = field(default=2, metadata=_help("Number of frequency masks tried per clip."))
    freq_mask_param: int = field(
        default=8, metadata=_help("A frequency mask covers fewer than this many mel bins.")
    )
    mask_value: Literal["mean", "zero"] = field(
        default="mean", metadata=_help("Masked cells take the clip's mean feature value, or 0.")
    )

    def __post_init__(self) -> None:
        problems = [
            f"`augment.{name}` must be a probability in [0, 1]; got {getattr(self, name)}"
            for name in ("noise_prob", "shift_prob", "gain_prob", "speed_prob", "time_mask_prob", "freq_mask_prob")
            if not 0.0 <= getattr(self, name) <= 1.0
        ]  # fmt: skip
        problems += [
            f"`augment.{name}` must be an integer >= 0; got {getattr(self, name)}"
            for name in ("time_masks", "time_mask_param", "freq_masks", "freq_mask_param")
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0
        ]
        if self.snr_min > self.snr_max:
            problems.append(
                f"`augment.snr_min` = {self.snr_min} is above `augment.snr_max` = {self.snr_max}; swap them"
            )
        if self.gain_min_db > self.gain_max_db:
            problems.append(
                f"`augment.gain_min_db` = {self.gain_min_db} is above `augment.gain_max_db` = "
                f"{self.gain_max_db}; swap them"
            )
        if self.shift_max < 0:
            problems.append(f"`augment.shift_max` must be >= 0 seconds; got {self.shift_max}")
        if not self.speeds or any(not 0.5 <= s <= 2.0 for s in self.speeds):
            problems.append(
                f"`augment.speeds` must be a non-empty list of factors in [0.5, 2]; got {self.speeds} "
                "(e.g. [0.9, 1.0, 1.1])"
            )
        bad = [t for t in self.noise_types if t not in NOISE_TYPES]
        if bad or (not self.noise_types and self.noise_dir is None):
            problems.append(
                f"`augment.noise_types` must be a non-empty list of {', '.join(NOISE_TYPES)}; got "
                f"{self.noise_types}"
            )
        if self.noise_dir is not None and not Path(self.noise_dir).is_dir():
            problems.append(
                f"`augment.noise_dir` = {self.noise_dir!r} is not a folder; point it at a folder of noise "
                "recordings or set it to null for generated noise"
            )
        if problems:
            raise ConfigError(problems)

    @property
    def waveform_enabled(self) -> bool:
        """Whether any waveform transform can run."""
        return any(p > 0 for p in (self.noise_prob, self.shift_prob, self.gain_prob, self.speed_prob))

    @property
    def spectrogram_enabled(self) -> bool:
        """Whether any SpecAugment mask can run."""
        return (self.time_mask_prob > 0 and self.time_masks > 0 and self.time_mask_param > 1) or (
            self.freq_mask_prob > 0 and self.freq_masks > 0 and self.freq_mask_param > 1
        )


@dataclass
class AugmentDraw:
    """The random choices for one clip (what :meth:`AudioAugment.draw` picked).

    Attributes:
        speed: speed factor (1.0 = unchanged).
        shift: shift in samples at the clip's rate; > 0 delays the clip.
        gain_db: gain in dB, or None for no gain.
        snr_db: target signal-to-noise ratio in dB, or None for no noise.
        noise: the noise colour or noise file, or None.
    """

    speed: float = 1.0
    shift: int = 0
    gain_db: float | None = None
    snr_db: float | None = None
    noise: str | None = None


def colored_noise(kind: NoiseType, length: int, generator: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped to power ∝ 1/f^k (white k=0, pink 1, brown 2), unit RMS, float32.

    The spectrum of white noise is scaled by ``f^(-k/2)`` (``f`` clamped at the first non-zero
    bin, so the DC component stays finite) and transformed back.
    """
    white = generator.standard_normal(length)
    exponent = _NOISE_EXPONENT[kind]
    if exponent:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(length)
        freqs[0] = freqs[1] if length > 1 else 1.0
        white = np.fft.irfft(spectrum / freqs ** (exponent / 2), n=length)
        white -= white.mean()
    rms = float(np.sqrt(np.mean(white**2))) or 1.0
    return (white / rms).astype(np.float32)


class NoiseBank:
    """Random segments of the recordings in a folder, read without decoding whole files.

    Args:
        folder: searched recursively for files with an audio extension.

    Raises:
        DataError: the folder holds no audio file.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
        )
        if not self.files:
            raise DataError(
                f"`augment.noise_dir` = {str(self.folder)!r} holds no audio file "
                f"({', '.join(sorted(AUDIO_EXTENSIONS))}); add noise recordings or unset it"
            )
        self._info: dict[Path, tuple[int, int]] = {}

    def segment(self, length: int, rate: int, generator: np.random.Generator) -> tuple[np.ndarray, str]:
        """A random mono segment of ``length`` samples at ``rate`` (tiled when the file is shorter)."""
        import soundfile as sf

        path = self.files[int(generator.integers(len(self.files)))]
        if path not in self._info:
            info = sf.info(str(path))
            self._info[path] = (int(info.frames), int(info.samplerate))
        frames, file_rate = self._info[path]
        need = int(np.ceil(length * file_rate / rate)) + 1
        start = int(generator.integers(0, max(frames - need, 0) + 1))
        try:
            data, _ = sf.read(str(path), start=start, frames=need, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise DataError(
                f"Cannot read noise file {path}: {err}; remove it from `augment.noise_dir`"
            ) from err
        if data.size == 0:
            raise DataError(f"Noise file {path} is empty; remove it from `augment.noise_dir`")
        noise = resample(data.mean(axis=1, dtype=np.float32), file_rate, rate)
        return np.resize(noise, length).astype(np.float32), str(path)


class AudioAugment:
    """Applies an :class:`AudioAugmentConfig` to clips (waveforms) and spectrogram features.

    Args:
        config: the augmentation settings; a mapping is checked field by field first.

    Example:
        >>> augment = AudioAugment({"noise_prob": 1.0, "snr_min": 10, "snr_max": 10})
        >>> rng = np.random.default_rng(0)
        >>> out = augment(np.sin(np.linspace(0, 100, 16000)).astype("float32"), 16000, generator=rng)
    """

    def __init__(self, config: AudioAugmentConfig | Mapping[str, Any]):
        self.config = as_augment_config(config)
        self.noise_bank = NoiseBank(self.config.noise_dir) if self.config.noise_dir else None
        self._maskers: tuple[torch.nn.Module, torch.nn.Module] | None = None

    def __repr__(self) -> str:
        return f"AudioAugment({self.config})"

    # -- waveforms -------------------------------------------------------------------------------
    def draw(self, rate: int, generator: np.random.Generator) -> AugmentDraw:
        """Draws the random choices for one clip; every probability is tested, in a fixed order."""
        cfg, draw = self.config, AugmentDraw()
        if generator.random() < cfg.speed_prob:
            draw.speed = float(cfg.speeds[int(generator.integers(len(cfg.speeds)))])
        if generator.random() < cfg.shift_prob:
            limit = int(round(cfg.shift_max * rate))
            draw.shift = int(generator.integers(-limit, limit + 1))
        if generator.random() < cfg.gain_prob:
            draw.gain_db = float(generator.uniform(cfg.gain_min_db, cfg.gain_max_db))
        if generator.random() < cfg.noise_prob:
            draw.snr_db = float(generator.uniform(cfg.snr_min, cfg.snr_max))
            if self.noise_bank is None:
                draw.noise = cfg.noise_types[int(generator.integers(len(cfg.noise_types)))]
        return draw

    def apply(
        self, wave: np.ndarray, rate: int, draw: AugmentDraw, generator: np.random.Generator
    ) -> np.ndarray:
        """Applies ``draw`` to a 1-D float clip; ``generator`` supplies the noise samples."""
        out = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if draw.speed != 1.0:
            out = speed_perturb(out, rate, draw.speed)
        if draw.shift:
            out = time_shift(out, draw.shift)
        if draw.gain_db is not None:
            out = out * 10.0 ** (draw.gain_db / 20.0)
        if draw.snr_db is not None and out.numel() and float(out.square().sum()) > 0:
            if self.noise_bank is not None:
                noise, draw.noise = self.noise_bank.segment(out.numel(), rate, generator)
            else:
                noise = colored_noise(draw.noise, out.numel(), generator)
            out = add_noise(out, torch.from_numpy(noise), draw.snr_db)
        return out.numpy()

    def __call__(self, wave: np.ndarray, rate: int, *, generator: np.random.Generator) -> np.ndarray:
        """Draws and applies the waveform transforms to one clip (unchanged when none is enabled)."""
        if not self.config.waveform_enabled:
            return wave
        return self.apply(wave, rate, self.draw(rate, generator), generator)

    # -- spectrograms ----------------------------------------------------------------------------
    def mask(
        self,
        features: torch.Tensor,
        *,
        freq_axis: Literal[0, 1],
        generator: np.random.Generator,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """SpecAugment (Park et al. 2019) time and frequency masks on one clip's features.

        Args:
            features: ``(F, T)`` (``freq_axis=0``, Whisper) or ``(T, F)`` (``freq_axis=1``, AST).
            freq_axis: which axis holds the mel bins.
            generator: source of the mask probabilities and of the torch seed for torchaudio's masks.
            num_frames: frames holding the clip (the rest is padding, never masked); None = all.

        Returns:
            A masked copy of the same shape.
        """
        cfg = self.config
        if not cfg.spectrogram_enabled:
            return features
        if self._maskers is None:
            import torchaudio.transforms as T

            self._maskers = (T.TimeMasking(cfg.time_mask_param), T.FrequencyMasking(cfg.freq_mask_param))
        spec = features if freq_axis == 0 else features.transpose(0, 1)  # (F, T) for torchaudio
        frames = spec.shape[1] if num_frames is None else max(1, min(num_frames, spec.shape[1]))
        real = spec[:, :frames]
        value = float(real.mean()) if cfg.mask_value == "mean" else 0.0
        time_masks = sum(generator.random() < cfg.time_mask_prob for _ in range(cfg.time_masks))
        freq_masks = sum(generator.random() < cfg.freq_mask_prob for _ in range(cfg.freq_masks))
        masks = [self._maskers[0]] * time_masks + [self._maskers[1]] * freq_masks
        if not masks:
            return features
        seed = int(generator.integers(2**63 - 1))
        with torch.random.fork_rng(devices=[]):  # torchaudio draws from the global RNG: seed it locally
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also seeds CUDA (slow)
            for masking in masks:
                real = masking(real, mask_value=value)
        spec = torch.cat([real, spec[:, frames:]], dim=1)
        return spec if freq_axis == 0 else spec.transpose(0, 1).contiguous()


def speed_perturb(wave: torch.Tensor, rate: int, factor: float) -> torch.Tensor:
    """Plays ``wave`` ``factor`` times faster by resampling (Kaldi/Ko et al. 2015 speed perturbation).

    The clip is treated as if recorded at ``rate × factor`` and resampled to ``rate``, so its length
    becomes ``ceil(len × rate / round(rate × factor))`` and its pitch scales by ``factor``.
    """
    import torchaudio.functional as F

    return F.resample(wave, int(round(rate * factor)), rate)


def time_shift(wave: torch.Tensor, shift: int) -> torch.Tensor:
    """Shifts by ``shift`` samples (> 0 later, < 0 earlier), zero-filling; the length is unchanged."""
    if shift == 0 or wave.numel() == 0:
        return wave
    out = torch.zeros_like(wave)
    if abs(shift) >= wave.numel():
        return out
    if shift > 0:
        out[shift:] = wave[:-shift]
    else:
        out[:shift] = wave[-shift:]
    return out


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``wave + a·noise`` with ``a`` chosen so that ``10 log10(‖wave‖² / ‖a·noise‖²) = snr_db``."""
    import torchaudio.functional as F

    return F.add_noise(wave[None], noise[None], torch.tensor([snr_db], dtype=wave.dtype))[0]


def as_augment_config(value: AudioAugmentConfig | Mapping[str, Any] | None) -> AudioAugmentConfig | None:
    """An :class:`AudioAugmentConfig` from a config mapping (fields and types checked), or as given."""
    if value is None or isinstance(value, AudioAugmentConfig):
        return value
    if isinstance(value, AudioAugment):
        return value.config
    return to_dataclass(AudioAugmentConfig, value, key="augment")
