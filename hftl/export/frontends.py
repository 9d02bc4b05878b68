"""Audio feature extraction as exportable modules, so an exported graph takes plain waveforms.

transformers' feature extractors run in NumPy (or torchaudio) outside the model, one clip at a time.
Put in the ONNX graph, the extraction runs batched in onnxruntime and the exported model's only
preprocessing is reading the audio (:mod:`hftl.export.runtime`); no torch, torchaudio or transformers at
inference. Each module reproduces one extractor exactly as hftl's ``AudioCollator`` calls it
(``padding="longest"``, ``return_attention_mask=True``), and the export's parity check compares the whole
graph with the collator + PyTorch model on the same waveforms.

=============================  ============================================================================
extractor                      module
=============================  ============================================================================
``Wav2Vec2FeatureExtractor``   :class:`WaveformNorm`: per-clip zero mean / unit variance over the real
(wav2vec2, HuBERT, WavLM)      samples, padding set to ``padding_value`` (``do_normalize``)
``Speech2TextFeature           :class:`KaldiFbank`: Kaldi log-mel filter banks (torchaudio's
Extractor`` (hftl's speech     ``compliance.kaldi.fbank`` defaults, batched) and utterance CMVN over the
CNN-transformer)               real frames
=============================  ============================================================================

Other extractors (Whisper, AST, ...) are not reproduced: their graphs take the extractor's outputs and
the processor files travel beside the graph (:func:`audio_frontend` returns ``None``).

Shape:
    - waveform: ``(B, S)`` float32 samples at the extractor's rate, right-padded with anything.
    - attention_mask: ``(B, S)`` 1 for real samples (a prefix of each row), 0 for padding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

WAVEFORM_INPUTS = ("waveform", "attention_mask")


class WaveformNorm(nn.Module):
    """``Wav2Vec2FeatureExtractor``: pad, then normalise each clip over its real samples.

    Args:
        do_normalize: zero-mean unit-variance normalisation (``(x - mean) / sqrt(var + 1e-7)``).
        padding_value: value of the padded samples.
    """

    def __init__(self, *, do_normalize: bool, padding_value: float):
        super().__init__()
        self.do_normalize, self.padding_value = do_normalize, float(padding_value)

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        valid = attention_mask > 0
        x = waveform
        if self.do_normalize:
            weight = valid.to(x.dtype)
            count = weight.sum(-1, keepdim=True).clamp(min=1.0)
            mean = (x * weight).sum(-1, keepdim=True) / count
            var = (((x - mean) * weight) ** 2).sum(-1, keepdim=True) / count
            x = (x - mean) / torch.sqrt(var + 1e-7)
        x = torch.where(valid, x, torch.full_like(x, self.padding_value))
        return {"input_values": x, "attention_mask": attention_mask.to(torch.int32)}


class KaldiFbank(nn.Module):
    """``Speech2TextFeatureExtractor``: Kaldi filter banks of each clip, utterance CMVN, padding.

    The Kaldi steps and defaults of ``torchaudio.compliance.kaldi.fbank`` (25 ms frames every 10 ms
    without edge padding, DC offset removal, pre-emphasis 0.97, Povey window, power spectrum of the
    frame zero-padded to a power of two (a matrix product), mel banks from 20 Hz to Nyquist, log floored at float32
    epsilon) on the waveform scaled to 16-bit range (× 32768), as the extractor does; then
    per-clip mean and variance normalisation over the clip's real frames.

    Args:
        sampling_rate: samples per second.
        num_mel_bins: mel filters.
        normalize_means, normalize_vars, do_ceptral_normalize: the extractor's CMVN switches.
        padding_value: value of the padded frames.
    """

    def __init__(
        self,
        *,
        sampling_rate: int,
        num_mel_bins: int,
        do_ceptral_normalize: bool = True,
        normalize_means: bool = True,
        normalize_vars: bool = True,
        padding_value: float = 0.0,
    ):
        super().__init__()
        from torchaudio.compliance.kaldi import get_mel_banks

        self.window_size = int(sampling_rate * 0.025)  # 25 ms frames (200 samples at 8 kHz) ...
        self.window_shift = int(sampling_rate * 0.010)  # ... every 10 ms (80 samples)
        self.n_fft = 1 << (self.window_size - 1).bit_length()  # next power of two: 256
        self.cmvn_means = do_ceptral_normalize and normalize_means
        self.cmvn_vars = do_ceptral_normalize and normalize_vars
        self.padding_value = float(padding_value)
        banks, _ = get_mel_banks(
            num_mel_bins, self.n_fft, float(sampling_rate), 20.0, 0.0, 100.0, -500.0, 1.0
        )
        banks = torch.nn.functional.pad(banks, (0, 1))  # (mel, n_fft // 2 + 1): no weight on Nyquist
        window = torch.hann_window(self.window_size, periodic=False, dtype=torch.float32).pow(0.85)
        # The real DFT of a frame zero-padded to n_fft, as two matrix products (cos and sin parts): the
        # same numbers as torch.fft.rfft to ~1e-5 in the log-mel features, and exportable by both
        # torch.onnx exporters (the TorchScript one has no rfft) without ONNX's DFT operator.
        samples = torch.arange(self.window_size, dtype=torch.float64)
        bins = torch.arange(self.n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(samples, bins) / self.n_fft
        self.register_buffer("dft_cos", torch.cos(angle), persistent=False)  # float64: see forward
        self.register_buffer("dft_sin", torch.sin(angle), persistent=False)
        self.register_buffer("mel_banks", banks.T.contiguous().float(), persistent=False)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("offsets", torch.arange(self.window_size), persistent=False)

    @property
    def min_samples(self) -> int:
        """The shortest clip that gives one frame."""
        return self.window_size

    def forward(self, waveform: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = waveform * 32768.0  # Kaldi works on the 16-bit integer scale
        num_frames = (x.shape[1] - self.window_size) // self.window_shift + 1
        starts = torch.arange(num_frames, device=x.device) * self.window_shift
        frames = x[:, starts[:, None] + self.offsets[None, :]]  # (B, M, window_size)
        frames = frames - frames.mean(-1, keepdim=True)  # remove the DC offset
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate-padded shift
        frames = (frames - 0.97 * previous) * self.window  # pre-emphasis, Povey window
        # In float64: float32 sums over a frame lose the quiet bins that torchaudio's FFT keeps (up to
        # 5e-4 apart after CMVN instead of 2e-5); the rest stays float32 like torchaudio.
        frames = frames.double()
        power = (frames @ self.dft_cos) ** 2 + (frames @ self.dft_sin) ** 2  # (B, M, n_fft // 2 + 1)
        power = power.float()
        feats = torch.clamp(power @ self.mel_banks, min=torch.finfo(torch.float32).eps).log()
        lengths = attention_mask.sum(-1)
        frame_counts = torch.where(
            lengths >= self.window_size, (lengths - self.window_size) // self.window_shift + 1, 0
        )
        valid = torch.arange(feats.shape[1], device=x.device)[None, :] < frame_counts[:, None]  # (B, M)
        weight = valid.to(feats.dtype).unsqueeze(-1)
        count = weight.sum(1, keepdim=True).clamp(min=1.0)
        if self.cmvn_means:
            feats = feats - (feats * weight).sum(1, keepdim=True) / count
        if self.cmvn_vars:
            mean = (feats * weight).sum(1, keepdim=True) / count
            feats = feats / torch.sqrt((((feats - mean) * weight) ** 2).sum(1, keepdim=True) / count)
        feats = torch.where(valid.unsqueeze(-1), feats, torch.full_like(feats, self.padding_value))
        return {"input_features": feats, "attention_mask": valid.to(torch.int32)}


def audio_frontend(extractor: Any) -> nn.Module | None:
    """The in-graph module reproducing ``extractor``, or ``None`` when hftl has none for its type.

    Only the exact classes are matched (a subclass may change the computation); an extractor with
    dithering (random noise at inference) is not reproduced either.
    """
    name = type(extractor).__name__
    if name == "Wav2Vec2FeatureExtractor" and getattr(extractor, "feature_size", 1) == 1:
        return WaveformNorm(
            do_normalize=bool(extractor.do_normalize), padding_value=float(extractor.padding_value)
        )
    if name == "Speech2TextFeatureExtractor" and not getattr(extractor, "dither", 0.0):
        return KaldiFbank(
            sampling_rate=int(extractor.sampling_rate),
            num_mel_bins=int(extractor.num_mel_bins),
            do_ceptral_normalize=bool(extractor.do_ceptral_normalize),
            normalize_means=bool(extractor.normalize_means),
            normalize_vars=bool(extractor.normalize_vars),
            padding_value=float(extractor.padding_value),
        )
    return None


def min_samples(frontend: nn.Module | None) -> int:
    """The shortest clip ``frontend`` accepts (1 sample unless it frames the signal)."""
    return int(getattr(frontend, "min_samples", 1))
