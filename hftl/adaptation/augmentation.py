"""Strong views of a collated batch, per modality, for consistency training (:class:`hftl.adaptation.Consistency`).

The weak view is the batch as the collator made it; the strong view is built here from its tensors, on the
batch's device, with torch's global RNG (seeded by the recipe):

* text (``input_ids``): a share of the real tokens (not special tokens, not padding) replaced by the
  tokenizer's mask token (its unknown token when it has none);
* waveforms (``input_values``, ``(B, T)``): Gaussian noise at a random SNR and a random delay;
* spectrograms (``input_features``, ``(B, F, T)`` or ``(B, T, F)``): SpecAugment-style masking, one random
  band along each of the two axes (so the layout does not matter), with torchaudio's ``mask_along_axis_iid``;
* images (``pixel_values``, ``(B, C, H, W)``): per image a random affine warp and a random erased patch
  (Cutout), both filled with the image's own background level (batched ``grid_sample``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from hftl.errors import ConfigError


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class StrongViewConfig:
    """How strong the strong view is; only the fields of the batch's modality are used."""

    token_mask_prob: float = field(default=0.2, metadata=_help("text: share of real tokens masked"))
    snr_db_min: float = field(default=5.0, metadata=_help("waveforms: lowest signal-to-noise ratio (dB)"))
    snr_db_max: float = field(default=20.0, metadata=_help("waveforms: highest signal-to-noise ratio (dB)"))
    max_shift: float = field(default=0.1, metadata=_help("waveforms: largest delay, as a share of the clip"))
    spec_mask: float = field(
        default=0.15, metadata=_help("spectrograms: widest masked band, as a share of each axis")
    )
    degrees: float = field(default=15.0, metadata=_help("images: largest rotation (degrees)"))
    translate: float = field(default=0.125, metadata=_help("images: largest shift, as a share of the size"))
    scale: float = field(default=0.15, metadata=_help("images: zoom in [1 - scale, 1 + scale]"))
    erase_prob: float = field(default=0.5, metadata=_help("images: probability of one erased patch (Cutout)"))

    def __post_init__(self) -> None:
        shares = ("token_mask_prob", "max_shift", "spec_mask", "translate", "scale", "erase_prob")
        bad = [
            f"`method.strong.{k}` = {getattr(self, k)}" for k in shares if not 0.0 <= getattr(self, k) <= 1.0
        ]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: must be in [0, 1]")
        if self.snr_db_min > self.snr_db_max:
            raise ConfigError(
                f"`method.strong.snr_db_min` ({self.snr_db_min}) must be <= `snr_db_max` ({self.snr_db_max})"
            )
        if self.degrees < 0:
            raise ConfigError(f"`method.strong.degrees` must be >= 0; got {self.degrees}")

    @classmethod
    def of(cls, value: StrongViewConfig | dict[str, Any] | None) -> StrongViewConfig:
        """From a config mapping (unknown keys refused, with the allowed ones named)."""
        if value is None or isinstance(value, StrongViewConfig):
            return value or cls()
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(f"`method.strong` has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**dict(value))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class TokenIds:
    """What text masking needs from the tokenizer: the replacement id and the ids it must not touch."""

    replace_id: int
    special_ids: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: Any) -> TokenIds:
        replace = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        if replace is None:
            raise ConfigError(
                f"The tokenizer ({type(tokenizer).__name__}) has neither a mask nor an unknown token, so the "
                "strong text view cannot mask tokens; use a tokenizer with one or another method"
            )
        return cls(replace_id=int(replace), special_ids=tuple(int(i) for i in tokenizer.all_special_ids))


def mask_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, ids: TokenIds, *, prob: float
) -> torch.Tensor:
    """``input_ids`` with each real token (attended, not special) replaced by ``ids.replace_id`` with ``prob``.

    Example:
        >>> ids = torch.tensor([[101, 7, 8, 9, 102, 0]])
        >>> mask_tokens(ids, (ids != 0).long(), TokenIds(103, (0, 101, 102, 103)), prob=1.0).tolist()
        [[101, 103, 103, 103, 102, 0]]
    """
    real = ~torch.isin(input_ids, torch.tensor(ids.special_ids, device=input_ids.device))
    if attention_mask is not None:
        real &= attention_mask.bool()
    chosen = real & (torch.rand(input_ids.shape, device=input_ids.device) < prob)
    return input_ids.masked_fill(chosen, ids.replace_id)


def noisy_shift(wave: torch.Tensor, cfg: StrongViewConfig) -> torch.Tensor:
    """Waveforms ``(B, T)``: each delayed by up to ``max_shift`` of ``T`` (zeros in front) plus white noise
    at an SNR drawn uniformly in ``[snr_db_min, snr_db_max]`` dB of the clip's own power."""
    b, t = wave.shape
    shifts = (torch.rand(b, device=wave.device) * cfg.max_shift * t).long()
    index = torch.arange(t, device=wave.device)[None] - shifts[:, None]  # out[i] = wave[i - shift]
    shifted = wave.gather(1, index.clamp_min(0)) * (index >= 0)
    power = wave.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-10)
    snr_db = cfg.snr_db_min + (cfg.snr_db_max - cfg.snr_db_min) * torch.rand(b, 1, device=wave.device)
    return shifted + torch.randn_like(wave) * (power / 10 ** (snr_db / 10)).sqrt()


def spec_augment(features: torch.Tensor, cfg: StrongViewConfig) -> torch.Tensor:
    """Spectrograms ``(B, F, T)`` or ``(B, T, F)``: one band masked along each axis, per example, with the
    example's mean (torchaudio's ``mask_along_axis_iid``; SpecAugment, Park et al. 2019)."""
    from torchaudio.functional import mask_along_axis_iid

    x = features[:, None]  # (B, 1, A1, A2): torchaudio masks axis 2 or 3 of a 4-D batch
    fill = float(features.mean())
    for axis in (2, 3):
        width = int(cfg.spec_mask * x.shape[axis])
        if width >= 1:
            x = mask_along_axis_iid(x, mask_param=width, mask_value=fill, axis=axis)
    return x[:, 0]


def warp_images(pixels: torch.Tensor, cfg: StrongViewConfig) -> torch.Tensor:
    """Images ``(B, C, H, W)``: per image a random affine warp (rotation, shift, zoom) and, with ``erase_prob``,
    one erased rectangle (Cutout, 2-15 % of the area), both filled with the image's own minimum (the background
    of a normalised digit).

    Batched with ``affine_grid``/``grid_sample`` (one call for the batch): torchvision's transforms draw one
    set of parameters per call, so they would need a Python loop over the images (13× slower per step on
    MNIST's 32 × 28 × 28 batches on CPU).
    """
    b, _, h, w = pixels.shape
    dev, dtype = pixels.device, pixels.dtype
    angle = (torch.rand(b, device=dev) * 2 - 1) * cfg.degrees * torch.pi / 180
    zoom = 1 + (torch.rand(b, device=dev) * 2 - 1) * cfg.scale
    shift = (torch.rand(b, 2, device=dev) * 2 - 1) * cfg.translate * 2  # grid units: the image spans [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = nn.functional.affine_grid(theta.to(dtype), list(pixels.shape), align_corners=False)
    background = pixels.amin(dim=(1, 2, 3), keepdim=True)
    warped = (
        nn.functional.grid_sample(pixels - background, grid, align_corners=False) + background
    )  # 0-padding
    area = (0.02 + 0.13 * torch.rand(b, device=dev)) * h * w
    ratio = torch.exp((torch.rand(b, device=dev) * 2 - 1) * math.log(3.0))  # aspect ratio in [1/3, 3]
    eh = (area * ratio).sqrt().clamp(1, h).long()
    ew = (area / ratio).sqrt().clamp(1, w).long()
    top = (torch.rand(b, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).long()
    rows, cols = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
    inside = ((rows >= top[:, None]) & (rows < (top + eh)[:, None]))[:, :, None] & (
        (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    )[:, None, :]
    erase = (inside & (torch.rand(b, 1, 1, device=dev) < cfg.erase_prob))[:, None]
    return torch.where(erase, background, warped)


def strong_view(
    inputs: dict[str, torch.Tensor], cfg: StrongViewConfig, *, token_ids: TokenIds | None
) -> dict[str, torch.Tensor]:
    """The strong view of one collated batch (the other keys, e.g. ``attention_mask``, unchanged).

    Raises:
        ConfigError: a batch with none of ``input_ids``, ``input_values``, ``input_features``, ``pixel_values``,
            or text without the tokenizer's ids.
    """
    out = dict(inputs)
    with torch.no_grad():
        if "input_ids" in inputs:
            if token_ids is None:
                raise ConfigError("the strong text view needs the encoder's tokenizer (`encoder.processor`)")
            out["input_ids"] = mask_tokens(
                inputs["input_ids"], inputs.get("attention_mask"), token_ids, prob=cfg.token_mask_prob
            )
        elif "input_values" in inputs:
            out["input_values"] = noisy_shift(inputs["input_values"], cfg)
        elif "input_features" in inputs:
            out["input_features"] = spec_augment(inputs["input_features"], cfg)
        elif "pixel_values" in inputs:
            out["pixel_values"] = warp_images(inputs["pixel_values"], cfg)
        else:
            raise ConfigError(
                f"No strong view for a batch with keys {sorted(inputs)}: consistency training augments "
                "`input_ids` (text), `input_values` / `input_features` (audio) or `pixel_values` (images)"
            )
    return out
