"""Pooling of token/frame/patch states into one vector per example."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hftl.errors import ConfigError

PoolingName = Literal["cls", "mean", "attention", "stats"]
POOLINGS: tuple[str, ...] = ("cls", "mean", "attention", "stats")


class Pooling(nn.Module):
    """Pools ``(B, T, H)`` hidden states into ``(B, H)`` (``(B, 2H)`` for ``stats``).

    Args:
        method: ``cls`` (first token), ``mean`` (mask-aware average), ``attention`` (learned
            softmax weights over tokens, one linear scorer) or ``stats`` (mean and standard deviation
            concatenated, the x-vector statistics pooling used for speech).
        hidden_size: width ``H`` of the states (needed by ``attention``).

    Raises:
        ConfigError: ``method`` is not one of the names above.

    Shape:
        - hidden: ``(B, T, H)``; mask: ``(B, T)`` with 1 for real tokens, or ``None``.
        - output: ``(B, H)``, or ``(B, 2H)`` for ``stats``.
    """

    def __init__(self, method: PoolingName, hidden_size: int):
        super().__init__()
        if method not in POOLINGS:
            raise ConfigError(f"`encoder.pooling` must be one of {', '.join(POOLINGS)}; got {method!r}")
        self.method = method
        self.scorer = nn.Linear(hidden_size, 1) if method == "attention" else None
        self.out_features = 2 * hidden_size if method == "stats" else hidden_size

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.method == "cls":
            return hidden[:, 0]
        if mask is None:
            mask = hidden.new_ones(hidden.shape[:2])
        mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        if self.method == "attention":
            scores = self.scorer(hidden).masked_fill(mask == 0, torch.finfo(hidden.dtype).min)
            return (scores.softmax(dim=1) * hidden).sum(dim=1)
        count = mask.sum(dim=1).clamp(min=1.0)
        mean = (hidden * mask).sum(dim=1) / count
        if self.method == "mean":
            return mean
        var = (((hidden - mean.unsqueeze(1)) * mask) ** 2).sum(dim=1) / count
        return torch.cat([mean, var.clamp(min=1e-10).sqrt()], dim=-1)
