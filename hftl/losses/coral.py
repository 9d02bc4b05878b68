"""Correlation alignment (Deep CORAL)."""

from __future__ import annotations

import torch
from torch import nn

from hftl.losses.base import LossOutput, at_least_float32, check_pair, no_autocast


def _covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance of the columns of ``x``: ``(x - mean)^T (x - mean) / (n - 1)``, shape (D, D)."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (x.shape[0] - 1)


class CorrelationAlignmentLoss(nn.Module):
    r"""The CORAL loss: distance between the feature covariances of the two domains.

    Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016 Workshops
    (arXiv:1607.01719). With unbiased covariances :math:`C_s, C_t \in \mathbb{R}^{d \times d}`:

    .. math::
        \mathcal{L}_{CORAL} = \frac{1}{4 d^2} \, \| C_s - C_t \|_F^2

    This follows the paper (covariances only, its :math:`1/(4d^2)` scale). TLlib's
    ``CorrelationAlignmentLoss`` differs: it averages the squared entries (scale :math:`1/d^2`) and adds
    a mean-difference term :math:`\frac1d \|\mu_s - \mu_t\|^2`; here the CORAL weight (``trade_off``)
    absorbs the factor 4, and the mean term is left out.

    Raises:
        ValueError: the inputs are not 2-D with the same width, or a batch has fewer than 2 rows.

    Shape:
        - f_s: :math:`(N_s, d)`, f_t: :math:`(N_t, d)`, :math:`N_s, N_t \ge 2`.
        - Output: ``LossOutput`` with a scalar ``loss``.

    Example:
        >>> loss_fn = CorrelationAlignmentLoss()
        >>> f_s = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # C_s = diag(2, 0)
        >>> f_t = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # C_t = diag(0, 2)
        >>> loss_fn(f_s, f_t).loss.item()  # (4 + 4) / (4 * 2**2)
        0.5
    """

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> LossOutput:
        check_pair("f_s", f_s, "f_t", f_t)
        if min(f_s.shape[0], f_t.shape[0]) < 2:
            raise ValueError(
                f"CORAL needs 2+ rows per domain to estimate a covariance; got {tuple(f_s.shape)} and "
                f"{tuple(f_t.shape)}"
            )
        d = f_s.shape[1]
        with no_autocast(f_s):  # covariances in half precision lose the signal
            f_s = at_least_float32(f_s)
            f_t = at_least_float32(f_t).to(f_s.dtype)
            loss = (_covariance(f_s) - _covariance(f_t)).square().sum() / (4 * d * d)
        return LossOutput(loss=loss)
