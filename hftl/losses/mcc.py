"""Minimum class confusion (MCC) on unlabelled target predictions."""

from __future__ import annotations

import torch
from torch import nn

from hftl.losses.base import LossOutput, at_least_float32, no_autocast
from hftl.losses.entropy import certainty_weights


class MinimumClassConfusionLoss(nn.Module):
    r"""The minimum class confusion loss of MCC.

    Jin, Wang, Long & Wang, "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020
    (arXiv:1912.03699). Same math as TLlib's ``tllib/self_training/mcc.py``.

    With temperature-scaled target probabilities
    :math:`\hat Y = \mathrm{softmax}(g / T) \in \mathbb{R}^{B \times C}` and certainty weights
    :math:`W = \mathrm{diag}(w)`, :math:`w_i \propto 1 + e^{-H(\hat y_i)}` (mean 1), the class
    confusion :math:`C = \hat Y^\top W \hat Y` is normalised per column ("category normalisation",
    :math:`\tilde C_{jj'} = C_{jj'} / \sum_{j''} C_{j''j'}`) and the loss is its off-diagonal mass:

    .. math::
        \mathcal{L} = \frac{1}{C} \sum_{j \neq j'} \tilde C_{jj'} \in [0, 1]

    0 when every example is confidently assigned and each class is predicted (no class pair is
    confused); :math:`(C - 1) / C` for uniform predictions.

    Args:
        temperature: :math:`T > 0`; 1 is the plain softmax, the paper uses 2.5.

    Raises:
        ValueError: ``temperature`` is not positive.

    Shape:
        - logits_t: :math:`(B, C)` target logits.
        - Output: ``LossOutput`` with a scalar ``loss``.

    Example:
        >>> loss_fn = MinimumClassConfusionLoss(temperature=2.5)
        >>> out = loss_fn(torch.zeros(4, 3))  # uniform predictions: (C - 1) / C
        >>> round(out.loss.item(), 4)
        0.6667
    """

    def __init__(self, *, temperature: float = 2.5):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0; got {temperature}")
        self.temperature = temperature

    def forward(self, logits_t: torch.Tensor) -> LossOutput:
        if logits_t.dim() != 2:
            raise ValueError(f"`logits_t` must have shape (batch, num_classes); got {tuple(logits_t.shape)}")
        num_classes = logits_t.shape[1]
        with no_autocast(logits_t):  # the confusion matrix in full precision
            probs = (at_least_float32(logits_t) / self.temperature).softmax(dim=1)
            weights = certainty_weights(probs)[:, None]  # (B, 1), detached
            confusion = (probs * weights).T @ probs  # (C, C)
            floor = torch.finfo(confusion.dtype).tiny  # a class with vanishing mass would divide 0 by 0
            confusion = confusion / confusion.sum(dim=0, keepdim=True).clamp_min(floor)
            loss = (confusion.sum() - confusion.trace()) / num_classes
        return LossOutput(loss=loss)
