"""Shannon entropy of predicted class probabilities, and the certainty weights built from it."""

from __future__ import annotations

from typing import Literal

import torch


def entropy(
    probs: torch.Tensor, *, dim: int = -1, reduction: Literal["none", "mean"] = "none"
) -> torch.Tensor:
    r"""Shannon entropy :math:`H(p) = -\sum_c p_c \log p_c` in nats.

    ``log`` reads ``p`` clamped to the dtype's smallest positive normal number, so ``0 · log 0`` counts
    as 0 and the gradient stays finite; for any ``p`` above that floor the value is exact (a uniform
    distribution over ``C`` classes gives exactly ``log C``).

    Args:
        probs: probabilities (rows summing to 1 along ``dim``), e.g. ``logits.softmax(-1)``.
        dim: the class dimension.
        reduction: ``"none"`` keeps one value per distribution, ``"mean"`` averages them.

    Returns:
        The entropy per distribution, or its mean.

    Raises:
        ValueError: unknown ``reduction``.

    Shape:
        - probs: :math:`(N, C)` (or any shape with the classes on ``dim``).
        - Output: :math:`(N,)` for ``"none"``, a scalar for ``"mean"``.

    Example:
        >>> entropy(torch.full((2, 4), 0.25))
        tensor([1.3863, 1.3863])
    """
    if reduction not in ("none", "mean"):
        raise ValueError(f"`reduction` must be 'none' or 'mean'; got {reduction!r}")
    floor = torch.finfo(probs.dtype).tiny
    h = -(probs * probs.clamp_min(floor).log()).sum(dim)
    return h.mean() if reduction == "mean" else h


def certainty_weights(probs: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    r"""Entropy-aware example weights :math:`w_i \propto 1 + e^{-H(p_i)}`, rescaled to mean 1.

    Confident predictions (low entropy) weigh up to twice as much as uniform ones. Used by CDAN+E
    (Long et al., NeurIPS 2018, arXiv:1705.10667) and MCC (Jin et al., ECCV 2020, arXiv:1912.03699).
    The weights are computed from ``probs.detach()``: they rescale a loss, they are not trained.

    Shape:
        - probs: :math:`(N, C)` with the classes on ``dim``.
        - Output: :math:`(N,)`, summing to :math:`N`.

    Example:
        >>> w = certainty_weights(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
        >>> w.sum().item()
        2.0
    """
    w = 1.0 + torch.exp(-entropy(probs.detach(), dim=dim))
    return w * (w.numel() / w.sum())
