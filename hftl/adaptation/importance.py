"""Instance-based transfer: source examples re-weighted by a density ratio, as an adaptation method."""

from __future__ import annotations

from torch import nn

from hftl.adaptation.methods import AdaptationMethod, AdaptBatch, StepLosses
from hftl.errors import ConfigError
from hftl.losses import DomainDiscriminator
from hftl.losses import ImportanceWeighting as ImportanceWeightingLoss
from hftl.training.engine import Progress


class ImportanceWeighting(AdaptationMethod):
    r"""Source cross-entropy weighted by :math:`w(x) \propto \mathrm{clip}(p_t(x) / p_s(x), 1/c, c)`.

    Shimodaira (2000); the ratio from a domain classifier as in Bickel, Brückner & Scheffer (JMLR 2009)
    (:class:`hftl.losses.ImportanceWeighting`). Each step a discriminator on *detached* encoder features learns
    target vs source (the ``transfer`` term, which trains only the discriminator); its odds
    :math:`e^{D(f)}` estimate :math:`p_t/p_s`, clipped to :math:`[1/c, c]` and normalised to mean 1 over the
    source batch, and the source loss becomes

    .. math::
        \mathcal{L}_{\text{base}} = \frac1{B_s} \sum_i w_i\, \mathrm{CE}(h(x^s_i), y^s_i)

    When it helps: covariate shift, the same labelling function in both domains and a target whose
    inputs the source covers, but with other frequencies (e.g. more long reviews, some speakers more often):
    the weights move the source risk towards the target risk. When it does not: a target outside the
    source's support (weights hit the clip, the effective sample size falls: watch the logged
    ``effective_sample_size``), or a labelling function that changed; it aligns nothing, so shifts that
    need new features (synthetic → real) are for DANN/MCC/consistency instead.

    Args:
        in_features: pooled feature width (set by the recipe).
        num_classes: number of classes (set by the recipe; unused).
        trade_off: weight of the discriminator's loss (it trains the discriminator only).
        hidden_features: width of the discriminator MLP.
        clip: :math:`c > 1`, the largest ratio kept.

    Raises:
        ConfigError: ``clip`` not above 1.

    Shape:
        Logs ``domain_acc``, ``max_weight`` and ``effective_sample_size`` (:math:`(\sum w)^2 / \sum w^2 / B_s`).

    Example:
        >>> m = ImportanceWeighting(in_features=4, num_classes=2, hidden_features=8, clip=5.0)
        >>> m.loss.clip
        5.0
    """

    name = "importance_weighting"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0, hidden_features: int = 256,
        clip: float = 5.0,
    ):  # fmt: skip
        super().__init__(trade_off=trade_off)
        if not clip > 1.0:
            raise ConfigError(f"`method.clip` must be > 1 (the largest density ratio kept); got {clip}")
        self.loss = ImportanceWeightingLoss(
            DomainDiscriminator(in_features, hidden_features=hidden_features), clip=clip
        )

    def training_step(self, model: nn.Module, batch: AdaptBatch, progress: Progress) -> StepLosses:
        out_s = model(**batch.source)
        per_example = nn.functional.cross_entropy(out_s.logits, batch.labels, reduction="none")
        if batch.target is None:
            return StepLosses(per_example.mean(), None)
        f_t = model(**batch.target).features
        transfer = self.loss(out_s.features, f_t)
        return StepLosses((transfer.weights.to(per_example) * per_example).mean(), transfer)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        raise ConfigError(
            "ImportanceWeighting re-weights the source cross-entropy inside its training step, so it needs the "
            "adapt recipe's loop (`hftl run adapt`), not cached features"
        )
