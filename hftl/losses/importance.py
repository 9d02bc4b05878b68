"""Instance weighting under covariate shift: source weights p_t(x) / p_s(x) from a domain classifier."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, binary_accuracy, check_pair


@dataclass
class ImportanceWeightingOutput(LossOutput):
    """:class:`LossOutput` plus ``weights``: one detached weight per source example, mean 1."""

    weights: torch.Tensor = field(default_factory=lambda: torch.ones(0))


class ImportanceWeighting(nn.Module):
    r"""Density-ratio weights for the source examples, estimated by a domain classifier on features.

    Shimodaira, "Improving predictive inference under covariate shift by weighting the log-likelihood
    function", J. Stat. Plan. Inference 2000 (the weighting); Bickel, Brückner & Scheffer, "Discriminative
    Learning Under Covariate Shift", JMLR 2009 (the ratio from a classifier). A discriminator :math:`D` gives
    the logit :math:`D(f)` of "target" against "source"; trained with each domain's binary cross-entropy
    averaged on its own (equal domain priors), its odds estimate the density ratio

    .. math::
        r(x) = \frac{p_t(x)}{p_s(x)} = \frac{P(t \mid x)}{P(s \mid x)} = e^{D(f(x))}, \qquad
        w_i = \frac{\tilde r_i}{\frac{1}{B_s}\sum_j \tilde r_j}, \quad \tilde r = \mathrm{clip}(r, 1/c, c)

    and the source loss becomes :math:`\frac{1}{B_s} \sum_i w_i\, \mathrm{CE}(h(x_i), y_i)`: an unbiased
    estimate of the *target* risk when the label function is the same in both domains and only the marginal
    :math:`p(x)` moved (covariate shift). Clipping at :math:`c` bounds the variance (no example weighs more
    than :math:`c^2` times another) and self-normalising keeps the loss scale. The discriminator reads
    *detached* features: it learns the ratio, it never trains the encoder (that would be DANN).

    Args:
        discriminator: maps :math:`(N, F)` features to :math:`(N, 1)` logits ("target" > 0), e.g.
            :class:`~hftl.losses.DomainDiscriminator`; owned by this module.
        clip: :math:`c > 1`, the largest ratio kept (and :math:`1/c` the smallest).

    Raises:
        ValueError: ``clip`` not above 1, or mismatched feature widths.

    Shape:
        - f_s: :math:`(B_s, F)`, f_t: :math:`(B_t, F)`.
        - Output: ``ImportanceWeightingOutput``: ``loss`` (the discriminator's, scalar), ``weights``
          :math:`(B_s,)` (detached, mean 1) and detached ``metrics["domain_acc"]``, ``metrics["max_weight"]``,
          ``metrics["effective_sample_size"]`` (:math:`(\sum w)^2 / \sum w^2 / B_s \in (0, 1]`).

    Example:
        >>> from hftl.losses import DomainDiscriminator
        >>> iw = ImportanceWeighting(DomainDiscriminator(8, hidden_features=16), clip=10.0)
        >>> out = iw(torch.randn(6, 8), torch.randn(6, 8))
        >>> out.weights.shape, round(out.weights.mean().item(), 4), sorted(out.metrics)
        (torch.Size([6]), 1.0, ['domain_acc', 'effective_sample_size', 'max_weight'])
    """

    def __init__(self, discriminator: nn.Module, *, clip: float = 10.0):
        super().__init__()
        if not clip > 1.0:
            raise ValueError(f"`clip` must be > 1 (the largest density ratio kept); got {clip}")
        self.discriminator, self.clip = discriminator, clip

    def normalized(self, logits: torch.Tensor) -> torch.Tensor:
        """Discriminator logits :math:`(B_s, 1)` → clipped, self-normalised weights :math:`(B_s,)` (detached)."""
        bound = torch.log(torch.tensor(self.clip, dtype=torch.float64)).item()
        ratio = logits.detach().float().view(-1).clamp(-bound, bound).exp()
        return ratio / ratio.mean()

    @torch.no_grad()
    def weights(self, f_s: torch.Tensor) -> torch.Tensor:
        """The weights :math:`(B_s,)` of source features ``f_s`` alone (discriminator in eval mode)."""
        was_training = self.discriminator.training
        self.discriminator.eval()  # batch norm: the running statistics, not this batch's
        w = self.normalized(self.discriminator(f_s.detach()))
        self.discriminator.train(was_training)
        return w

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> ImportanceWeightingOutput:
        check_pair("f_s", f_s, "f_t", f_t)
        n_s = f_s.shape[0]
        d = self.discriminator(torch.cat([f_s, f_t]).detach())
        d_s, d_t = d[:n_s], d[n_s:]
        loss = 0.5 * (
            F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s))
            + F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))
        )
        w = self.normalized(d_s)
        metrics = {
            "domain_acc": binary_accuracy(d, torch.cat([torch.zeros_like(d_s), torch.ones_like(d_t)])),
            "max_weight": w.max(),
            "effective_sample_size": w.sum() ** 2 / (w**2).sum() / n_s,
        }
        return ImportanceWeightingOutput(loss=loss, metrics=metrics, weights=w.to(f_s.dtype))
