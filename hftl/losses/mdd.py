"""Margin disparity discrepancy (MDD), classification version."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, check_pair
from hftl.losses.grl import GradientReverseFunction


class MarginDisparityDiscrepancy(nn.Module):
    r"""The margin disparity discrepancy of MDD, for classification.

    Zhang, Liu, Long & Jordan, "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019
    (arXiv:1904.05801). Same math as TLlib's ``ClassificationMarginDisparityDiscrepancy``.

    With main-head logits :math:`y`, their predictions :math:`\hat y = \arg\max y` (no gradient) and
    adversarial-head probabilities :math:`q = \mathrm{softmax}(y_{adv})`, the discrepancy estimate is

    .. math::
        D_\gamma = \gamma\, \mathbb{E}_s \log q^s_{\hat y^s} + \mathbb{E}_t \log\big(1 - q^t_{\hat y^t}\big)

    (the paper's eq. 29; ``log(1 - q)`` is shifted, :math:`\log\min(1 - q + 10^{-6}, 1)`, to bound its
    gradient). The adversarial head maximises :math:`D_\gamma` (agree with the main head on source,
    disagree on target); the features minimise it.

    **Sign.** ``forward`` returns ``loss = -D_γ`` =
    :math:`\gamma\,\mathrm{CE}(y^s_{adv}, \hat y^s) - \log(1 - q^t_{\hat y^t})`, the quantity to
    *minimise* (TLlib's training script minimises ``-mdd(...)``, the same thing). The caller feeds the
    features to the adversarial head through a :class:`~hftl.losses.GradientReverseLayer`, so minimising
    ``loss`` raises :math:`D_\gamma` for the adversarial head and, through the reversed gradient, lowers it
    for the features. ``metrics["mdd"]`` reports :math:`D_\gamma` itself.

    The adversarial head is :class:`AdversarialClassifier` (a fresh classifier behind a gradient reversal
    layer; the paper ramps its ``coeff`` up to 0.1); ``hftl.adaptation.MDD`` puts the two together.

    Args:
        margin: :math:`\gamma`, the weight of the source term (4 in the paper for most benchmarks).

    Raises:
        ValueError: ``margin`` is not positive.

    Shape:
        - y_s, y_s_adv: :math:`(N_s, C)`; y_t, y_t_adv: :math:`(N_t, C)` logits.
        - Output: ``LossOutput`` with a scalar ``loss`` and ``metrics["mdd"]``.

    Example:
        >>> loss_fn = MarginDisparityDiscrepancy(margin=4.0)
        >>> y_s, y_t = torch.randn(8, 3), torch.randn(8, 3)
        >>> out = loss_fn(y_s, torch.randn(8, 3), y_t, torch.randn(8, 3))
        >>> out.loss.shape
        torch.Size([])
    """

    def __init__(self, *, margin: float = 4.0):
        super().__init__()
        if margin <= 0:
            raise ValueError(f"`margin` must be > 0; got {margin}")
        self.margin = margin

    def forward(
        self, y_s: torch.Tensor, y_s_adv: torch.Tensor, y_t: torch.Tensor, y_t_adv: torch.Tensor
    ) -> LossOutput:
        check_pair("y_s", y_s, "y_s_adv", y_s_adv, same_rows=True)
        check_pair("y_t", y_t, "y_t_adv", y_t_adv, same_rows=True)
        pred_s, pred_t = y_s.detach().argmax(dim=1), y_t.detach().argmax(dim=1)
        source = F.cross_entropy(y_s_adv, pred_s)  # = -E_s log q_s[pred]
        q_t = y_t_adv.softmax(dim=1).gather(1, pred_t[:, None]).squeeze(1)
        target = -torch.log(torch.clamp(1.0 - q_t + 1e-6, max=1.0)).mean()  # = -E_t log(1 - q_t[pred])
        loss = self.margin * source + target
        return LossOutput(loss=loss, metrics={"mdd": -loss.detach()})


class AdversarialClassifier(nn.Sequential):
    r"""MDD's adversarial head :math:`f'`: an MLP classifier that reads the features through a gradient
    reversal layer, ``Linear(F, H) → ReLU → Dropout → Linear(H, C)``.

    Zhang, Liu, Long & Jordan, "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019
    (arXiv:1904.05801), section 4: :math:`f'` has the main head's architecture with its own weights; the
    reversal layer lets one backward pass of :class:`MarginDisparityDiscrepancy` raise the discrepancy for
    :math:`f'` and lower it for the features. ``coeff`` scales (and flips) the gradient that reaches the
    features; the head's own gradient is not scaled.

    Args:
        in_features: width ``F`` of the features.
        num_classes: ``C``, the width of the main head's logits.
        hidden_features: ``H``.
        dropout: dropout after the ReLU (0.5 in the paper's code).

    Shape:
        - f: :math:`(N, F)`; output :math:`(N, C)` logits.

    Example:
        >>> head = AdversarialClassifier(16, 3, hidden_features=32)
        >>> f = torch.randn(4, 16, requires_grad=True)
        >>> head(f, coeff=0.1).sum().backward()  # the features get the reversed, scaled gradient
        >>> head(f).shape
        torch.Size([4, 3])
    """

    def __init__(
        self, in_features: int, num_classes: int, *, hidden_features: int = 1024, dropout: float = 0.5
    ):
        super().__init__(
            nn.Linear(in_features, hidden_features),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_features, num_classes),
        )

    def forward(self, f: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        return super().forward(GradientReverseFunction.apply(f, coeff))
