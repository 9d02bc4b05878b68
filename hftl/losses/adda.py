"""The adversarial losses of ADDA's second stage: a discriminator against the target encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, check_pair


@dataclass(kw_only=True)
class AdversarialDiscriminativeOutput(LossOutput):
    """:class:`LossOutput` of :class:`AdversarialDiscriminativeLoss`: ``loss`` is the target encoder's term.

    Attributes:
        discriminator_loss: the discriminator's own term; it reaches no encoder (its inputs are detached),
            so the caller adds it at weight 1 whatever weight it gives ``loss``.
    """

    discriminator_loss: torch.Tensor


class AdversarialDiscriminativeLoss(nn.Module):
    r"""The two stage-2 losses of ADDA, computed in one call and trained by one backward pass.

    Tzeng, Hoffman, Saenko & Darrell, "Adversarial Discriminative Domain Adaptation", CVPR 2017
    (arXiv:1702.05464), eq. 9 with the inverted-label GAN loss of its Table 1; TLlib's
    ``tllib/alignment/adda.py`` trains the same two terms in alternating steps.

    A discriminator :math:`D` (logits) learns source = 1 vs target = 0 on *detached* features, and the
    target encoder :math:`M_t` learns to make :math:`D` say "source" for its features, with :math:`D` held
    fixed (its parameters are excluded from this term's graph):

    .. math::
        \mathcal{L}_D = \tfrac12 \Big[ \tfrac{1}{n_s} \sum_i \ell\big(D(f^s_i), 1\big)
                      + \tfrac{1}{n_t} \sum_j \ell\big(D(f^t_j), 0\big) \Big], \qquad
        \mathcal{L}_M = \tfrac{1}{n_t} \sum_j \ell\big(D(M_t(x^t_j)), 1\big)

    with :math:`\ell` the binary cross-entropy on logits. :math:`\mathcal{L}_D` only reaches :math:`D` and
    :math:`\mathcal{L}_M` only reaches the encoder, so ``discriminator_loss + w * loss`` trains both at once
    (``w``: the method's ``trade_off``). The source features come from the frozen source encoder.

    Args:
        discriminator: maps :math:`(N, F)` features to :math:`(N, 1)` logits, e.g.
            :class:`~hftl.losses.DomainDiscriminator` (the paper: a 3-layer MLP, 500 hidden units, no batch
            norm). The loss owns it.

    Raises:
        ValueError: the features are not 2-D with the same width.

    Shape:
        - f_s: :math:`(N_s, F)` from the source encoder, f_t: :math:`(N_t, F)` from the target encoder.
        - Output: :class:`AdversarialDiscriminativeOutput`: scalar ``loss`` (:math:`\mathcal{L}_M`), scalar
          ``discriminator_loss`` (:math:`\mathcal{L}_D`), ``metrics["domain_acc"]`` (the discriminator's
          accuracy on both batches).

    Example:
        >>> from hftl.losses import DomainDiscriminator
        >>> loss_fn = AdversarialDiscriminativeLoss(DomainDiscriminator(16, hidden_features=32, batch_norm=False))
        >>> f_s, f_t = torch.randn(8, 16), torch.randn(8, 16, requires_grad=True)
        >>> out = loss_fn(f_s, f_t)
        >>> (out.discriminator_loss + 0.5 * out.loss).backward()  # one pass trains both
        >>> f_t.grad.abs().sum() > 0, out.loss.shape
        (tensor(True), torch.Size([]))
    """

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> AdversarialDiscriminativeOutput:
        check_pair("f_s", f_s, "f_t", f_t)
        d_s, d_t = self.discriminator(f_s.detach()), self.discriminator(f_t.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(d_s, torch.ones_like(d_s))
            + F.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t))
        )
        params = list(self.discriminator.parameters())
        for p in params:  # the encoder's term must not train the discriminator
            p.requires_grad_(False)
        try:
            d_t_enc = self.discriminator(f_t)
        finally:
            for p in params:
                p.requires_grad_(True)
        loss_m = F.binary_cross_entropy_with_logits(d_t_enc, torch.ones_like(d_t_enc))  # inverted labels
        acc = 0.5 * ((d_s > 0).float().mean() + (d_t <= 0).float().mean())
        return AdversarialDiscriminativeOutput(
            loss=loss_m, discriminator_loss=loss_d, metrics={"domain_acc": acc}
        )
