"""Domain-adversarial loss (DANN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, binary_accuracy, check_pair
from hftl.losses.grl import GradientReverseLayer


class DomainAdversarialLoss(nn.Module):
    r"""The domain-adversarial loss of DANN.

    Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015 (arXiv:1409.7495);
    Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016 (arXiv:1505.07818).
    Same math as TLlib's ``tllib/alignment/dann.py``.

    A discriminator :math:`D` (logits) reads the features through a gradient reversal layer :math:`R_\lambda`
    and is trained with binary cross-entropy, source = 1, target = 0:

    .. math::
        \mathcal{L} = \tfrac12 \Big[ \tfrac{1}{n_s} \sum_i w^s_i\, \ell\big(D(R_\lambda(f^s_i)), 1\big)
                    + \tfrac{1}{n_t} \sum_j w^t_j\, \ell\big(D(R_\lambda(f^t_j)), 0\big) \Big]

    Minimising :math:`\mathcal{L}` trains :math:`D` to tell the domains apart while the reversed gradient
    (scaled by ``coeff`` :math:`=\lambda`) trains the features to fool it. Each domain is averaged on its
    own, so both weigh the same whatever the batch sizes; weights are *not* renormalised (a weight of 2
    doubles that example's term).

    Args:
        discriminator: maps :math:`(N, F)` features to :math:`(N, 1)` logits, e.g.
            :class:`~hftl.losses.DomainDiscriminator`. The loss owns it, so its parameters are part of
            this module's ``parameters()``.

    Shape:
        - f_s: :math:`(N_s, F)`, f_t: :math:`(N_t, F)`.
        - w_s: :math:`(N_s,)`, w_t: :math:`(N_t,)`, optional per-example weights.
        - Output: ``LossOutput`` with a scalar ``loss`` and ``metrics["domain_acc"]``
          (discriminator accuracy).

    Example:
        >>> from hftl.losses import DomainDiscriminator
        >>> loss_fn = DomainAdversarialLoss(DomainDiscriminator(16, hidden_features=32))
        >>> out = loss_fn(torch.randn(8, 16), torch.randn(8, 16), coeff=0.5)
        >>> out.loss.shape, sorted(out.metrics)
        (torch.Size([]), ['domain_acc'])
    """

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator
        self.grl = GradientReverseLayer()

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        *,
        coeff: float = 1.0,
        w_s: torch.Tensor | None = None,
        w_t: torch.Tensor | None = None,
    ) -> LossOutput:
        check_pair("f_s", f_s, "f_t", f_t)
        n_s = f_s.shape[0]
        d = self.discriminator(self.grl(torch.cat([f_s, f_t]), coeff))
        d_s, d_t = d[:n_s], d[n_s:]
        y_s, y_t = torch.ones_like(d_s), torch.zeros_like(d_t)
        loss_s = F.binary_cross_entropy_with_logits(
            d_s, y_s, weight=None if w_s is None else w_s.view_as(d_s)
        )
        loss_t = F.binary_cross_entropy_with_logits(
            d_t, y_t, weight=None if w_t is None else w_t.view_as(d_t)
        )
        acc = binary_accuracy(d, torch.cat([y_s, y_t]))
        return LossOutput(loss=0.5 * (loss_s + loss_t), metrics={"domain_acc": acc})
