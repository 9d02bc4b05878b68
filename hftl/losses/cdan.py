"""Conditional domain-adversarial loss (CDAN, CDAN+E)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, binary_accuracy
from hftl.losses.entropy import certainty_weights
from hftl.losses.grl import GradientReverseLayer


class ConditionalDomainAdversarialLoss(nn.Module):
    r"""The conditional adversarial loss of CDAN and CDAN+E.

    Long, Cao, Wang & Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018 (arXiv:1705.10667);
    same math as TLlib's ``tllib/alignment/cdan.py``.

    The discriminator reads the features *conditioned on* the predictions :math:`p = \mathrm{softmax}(g)`
    (detached, as in the official code) through the multilinear map
    :math:`T_\otimes(f, p) = p \otimes f \in \mathbb{R}^{C \cdot D}`, or, when ``randomized``,
    :math:`T_\odot(f, p) = (f R_f) \odot (p R_g) / \sqrt{d}` with Gaussian
    :math:`R_f \in \mathbb{R}^{D \times d}`, :math:`R_g \in \mathbb{R}^{C \times d}` drawn once
    (persistent buffers, so they are checkpointed).
    The loss is DANN's BCE on :math:`T(f, p)` behind a gradient reversal layer, each domain averaged alone:

    .. math::
        \mathcal{L} = \tfrac12 \Big[ \tfrac{1}{n_s}\sum_i w_i \ell(D(T^s_i), 1)
                    + \tfrac{1}{n_t}\sum_j w_j \ell(D(T^t_j), 0) \Big]

    With ``entropy_conditioning`` (CDAN+E) :math:`w \propto 1 + e^{-H(p)}`, normalised to mean 1 within
    each domain (the official code's per-domain normalisation); otherwise :math:`w = 1`.

    Args:
        discriminator: maps :math:`(N, K)` to :math:`(N, 1)` logits, with ``K`` given by
            :meth:`discriminator_in_features`.
        num_classes: ``C``, the width of the logits; features_dim: ``D``, the width of the features.
        entropy_conditioning: CDAN+E example weighting.
        randomized: use the randomized map (for large ``C · D``).
        randomized_dim: ``d``, the output width of the randomized map.

    Raises:
        ValueError: a width is not positive (in ``__init__``) or an input has the wrong shape.

    Shape:
        - g_s: :math:`(N_s, C)` logits, f_s: :math:`(N_s, D)`; g_t: :math:`(N_t, C)`, f_t: :math:`(N_t, D)`.
        - Output: ``LossOutput`` with a scalar ``loss`` and ``metrics["domain_acc"]``.

    Example:
        >>> from hftl.losses import DomainDiscriminator
        >>> width = ConditionalDomainAdversarialLoss.discriminator_in_features(
        ...     num_classes=3, features_dim=16, randomized=False, randomized_dim=1024)
        >>> loss_fn = ConditionalDomainAdversarialLoss(
        ...     DomainDiscriminator(width, hidden_features=32), num_classes=3, features_dim=16)
        >>> out = loss_fn(torch.randn(8, 3), torch.randn(8, 16), torch.randn(8, 3), torch.randn(8, 16))
        >>> width, out.loss.shape
        (48, torch.Size([]))
    """

    def __init__(
        self,
        discriminator: nn.Module,
        *,
        num_classes: int,
        features_dim: int,
        entropy_conditioning: bool = False,
        randomized: bool = False,
        randomized_dim: int = 1024,
    ):
        super().__init__()
        if min(num_classes, features_dim, randomized_dim) < 1:
            raise ValueError(
                "`num_classes`, `features_dim` and `randomized_dim` must be >= 1; got "
                f"{num_classes}, {features_dim}, {randomized_dim}"
            )
        self.discriminator = discriminator
        self.grl = GradientReverseLayer()
        self.num_classes, self.features_dim = num_classes, features_dim
        self.entropy_conditioning, self.randomized = entropy_conditioning, randomized
        if randomized:
            self.register_buffer("r_f", torch.randn(features_dim, randomized_dim))
            self.register_buffer("r_g", torch.randn(num_classes, randomized_dim))

    @staticmethod
    def discriminator_in_features(
        *, num_classes: int, features_dim: int, randomized: bool, randomized_dim: int
    ) -> int:
        """Discriminator width: ``randomized_dim`` if randomized, else ``num_classes * features_dim``."""
        return randomized_dim if randomized else num_classes * features_dim

    def multilinear_map(self, f: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """:math:`T(f, p)`: ``(N, D), (N, C) -> (N, C * D)`` with ``[c * D + d] = p_c f_d``, or ``(N, d)``."""
        if self.randomized:
            return (f @ self.r_f.to(f.dtype)) * (p @ self.r_g.to(p.dtype)) / math.sqrt(self.r_f.shape[1])
        return torch.einsum("nc,nd->ncd", p, f).flatten(1)

    def _check_shapes(self, *tensors: torch.Tensor) -> None:  # g_s, f_s, g_t, f_t
        c, d = self.num_classes, self.features_dim
        widths_ok = all(x.dim() == 2 and x.shape[1] == w for x, w in zip(tensors, (c, d, c, d), strict=True))
        g_s, f_s, g_t, f_t = tensors
        if not widths_ok or len(g_s) != len(f_s) or len(g_t) != len(f_t):
            want = f"g_s (N_s, {c}), f_s (N_s, {d}), g_t (N_t, {c}), f_t (N_t, {d})"
            raise ValueError(f"CDAN expects {want}; got {', '.join(str(tuple(x.shape)) for x in tensors)}")

    def forward(
        self,
        g_s: torch.Tensor,
        f_s: torch.Tensor,
        g_t: torch.Tensor,
        f_t: torch.Tensor,
        *,
        coeff: float = 1.0,
    ) -> LossOutput:
        self._check_shapes(g_s, f_s, g_t, f_t)
        n_s = f_s.shape[0]
        p = torch.cat([g_s, g_t]).softmax(dim=1).detach()
        h = self.grl(self.multilinear_map(torch.cat([f_s, f_t]), p), coeff)
        d = self.discriminator(h)
        d_s, d_t = d[:n_s], d[n_s:]
        y_s, y_t = torch.ones_like(d_s), torch.zeros_like(d_t)
        w_s = w_t = None
        if self.entropy_conditioning:  # normalised per domain: each domain's weights average 1
            w_s, w_t = certainty_weights(p[:n_s]).view_as(d_s), certainty_weights(p[n_s:]).view_as(d_t)
        loss_s = F.binary_cross_entropy_with_logits(d_s, y_s, weight=w_s)
        loss_t = F.binary_cross_entropy_with_logits(d_t, y_t, weight=w_t)
        acc = binary_accuracy(d, torch.cat([y_s, y_t]))
        return LossOutput(loss=0.5 * (loss_s + loss_t), metrics={"domain_acc": acc})
