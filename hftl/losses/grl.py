"""Gradient reversal layer (Ganin & Lempitsky, ICML 2015) and its warm-up schedule.

Adapted in spirit from TLlib's ``tllib/modules/grl.py`` (Jiang et al.); written fresh for hftl.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GradientReverseFunction(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-coeff`` in the backward pass.

    Example:
        >>> x = torch.ones(3, requires_grad=True)
        >>> GradientReverseFunction.apply(x, 0.5).sum().backward()
        >>> x.grad
        tensor([-0.5000, -0.5000, -0.5000])
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)  # a new autograd node with the same values

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * -ctx.coeff, None


class GradientReverseLayer(nn.Module):
    r"""Module form of :class:`GradientReverseFunction`: :math:`R(x) = x`, :math:`dR/dx = -\lambda I`.

    Placed between a feature extractor and a domain discriminator, it lets one backward pass train the
    discriminator to *separate* the domains while the features learn to *confuse* it (DANN, Ganin et al.,
    "Domain-Adversarial Training of Neural Networks", JMLR 2016, arXiv:1505.07818).

    Shape:
        - x: any shape; the output has the same shape and values.

    Example:
        >>> grl = GradientReverseLayer()
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> grl(x, coeff=0.3).sum().backward()
        >>> bool((x.grad == -0.3).all())
        True
    """

    def forward(self, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        return GradientReverseFunction.apply(x, coeff)


def grl_coefficient(progress: float, *, alpha: float = 10.0, low: float = 0.0, high: float = 1.0) -> float:
    r"""The GRL coefficient warm-up of Ganin et al. (JMLR 2016, eq. 14), rescaled to ``[low, high]``.

    .. math::
        \lambda(p) = \text{low} + (\text{high} - \text{low}) \left(\frac{2}{1 + e^{-\alpha p}} - 1\right)

    It starts at ``low`` (an untrained discriminator sends only noise to the features) and approaches
    ``high`` once :math:`\alpha p \gg 1` (:math:`\lambda(1) \approx 0.99991 \cdot` ``high`` for α = 10).

    Args:
        progress: training progress ``p = step / total_steps`` in ``[0, 1]``.
        alpha: steepness of the ramp.
        low: the coefficient at ``p = 0``.
        high: the limit for large ``alpha * p``.

    Returns:
        The coefficient as a python float.

    Raises:
        ValueError: ``progress`` lies outside ``[0, 1]``.

    Example:
        >>> grl_coefficient(0.0), round(grl_coefficient(1.0), 4)
        (0.0, 0.9999)
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"`progress` must be in [0, 1] (step / total_steps); got {progress}")
    return low + (high - low) * (2.0 / (1.0 + math.exp(-alpha * progress)) - 1.0)
