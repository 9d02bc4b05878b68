"""Information maximization (SHOT): confident and diverse target predictions, and SHOT's pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, at_least_float32, no_autocast
from hftl.losses.entropy import entropy


class InformationMaximizationLoss(nn.Module):
    r"""Entropy minimisation plus prediction diversity on unlabelled target logits.

    Liang, Hu & Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
    Unsupervised Domain Adaptation" (SHOT), ICML 2020 (arXiv:2002.08546), after Krause, Perona & Gomes,
    "Discriminative Clustering by Regularized Information Maximization", NeurIPS 2010. With
    :math:`p_i = \mathrm{softmax}(g_i)`, the batch mean :math:`\bar p = \frac1B \sum_i p_i` and a class prior
    :math:`\pi` (uniform by default):

    .. math::
        \mathcal{L} = \alpha \underbrace{\frac1B \sum_{i=1}^{B} H(p_i)}_{\text{entropy}}
                    + \beta \underbrace{\mathrm{KL}(\bar p \,\|\, \pi)}_{\text{diversity}}

    The entropy term makes each prediction confident; the diversity term stops all of them collapsing onto
    one class. With a uniform :math:`\pi`, :math:`\mathrm{KL}(\bar p \| \pi) = \log C - H(\bar p)`, so this is
    SHOT's :math:`\frac1B\sum_i H(p_i) - H(\bar p)` plus the constant :math:`\log C` (same gradients; here the
    minimum is 0). Uniform predictions give entropy :math:`\log C`, diversity 0; one-hot predictions of a
    single class give entropy 0, diversity :math:`\log C`; one-hot predictions spread evenly give 0 and 0.

    Args:
        entropy_weight: :math:`\alpha \ge 0`.
        diversity_weight: :math:`\beta \ge 0` (SHOT: 1, the same as the entropy term).
        class_prior: :math:`\pi`, the expected share of each class on the target (positive, summing to 1);
            ``None`` is uniform. Set it when the target classes are known to be imbalanced.

    Raises:
        ValueError: a negative weight, a prior that is not a probability vector, or logits that do not
            have ``len(class_prior)`` columns.

    Shape:
        - logits_t: :math:`(B, C)` target logits.
        - Output: ``LossOutput`` with a scalar ``loss`` and the two terms (detached) as ``metrics["entropy"]``
          and ``metrics["diversity"]``.

    Example:
        >>> loss_fn = InformationMaximizationLoss()
        >>> out = loss_fn(torch.zeros(4, 2))  # uniform predictions: entropy log 2, diversity 0
        >>> out.metrics
        {'entropy': tensor(0.6931), 'diversity': tensor(0.)}
        >>> round(loss_fn(torch.tensor([[9.0, -9.0], [-9.0, 9.0]])).loss.item(), 4)  # confident and diverse
        0.0
    """

    def __init__(
        self,
        *,
        entropy_weight: float = 1.0,
        diversity_weight: float = 1.0,
        class_prior: list[float] | None = None,
    ):
        super().__init__()
        if entropy_weight < 0 or diversity_weight < 0:
            raise ValueError(f"weights must be >= 0; got {entropy_weight}, {diversity_weight}")
        prior = None if class_prior is None else torch.as_tensor(class_prior, dtype=torch.float64)
        if prior is not None and (prior.dim() != 1 or (prior <= 0).any() or abs(prior.sum() - 1) > 1e-6):
            raise ValueError(f"`class_prior` must be positive and sum to 1; got {class_prior}")
        self.entropy_weight, self.diversity_weight = entropy_weight, diversity_weight
        self.register_buffer("class_prior", None if prior is None else prior.float(), persistent=False)

    def forward(self, logits_t: torch.Tensor) -> LossOutput:
        if logits_t.dim() != 2:
            raise ValueError(f"`logits_t` must have shape (batch, num_classes); got {tuple(logits_t.shape)}")
        num_classes = logits_t.shape[1]
        if self.class_prior is not None and self.class_prior.numel() != num_classes:
            raise ValueError(
                f"`class_prior` has {self.class_prior.numel()} classes, the logits {num_classes}"
            )
        with no_autocast(logits_t):
            probs = at_least_float32(logits_t).softmax(dim=1)
            mean_entropy = entropy(probs, reduction="mean")
            mean = probs.mean(dim=0)
            uniform = self.class_prior is None
            prior = mean.new_full((num_classes,), 1 / num_classes) if uniform else self.class_prior.to(mean)
            # KL(mean || prior) = sum mean * (log mean - log prior); 0 * log 0 counts as 0
            diversity = (mean * (mean.clamp_min(torch.finfo(mean.dtype).tiny).log() - prior.log())).sum()
            loss = self.entropy_weight * mean_entropy + self.diversity_weight * diversity
        return LossOutput(
            loss=loss, metrics={"entropy": mean_entropy.detach(), "diversity": diversity.detach()}
        )


@torch.no_grad()
def shot_pseudo_labels(features: torch.Tensor, logits: torch.Tensor, *, rounds: int = 1) -> torch.Tensor:
    r"""SHOT's self-supervised pseudo-labels: nearest class centroid in cosine distance.

    Liang et al. 2020 (arXiv:2002.08546), Eq. 4-6: centroids are the probability-weighted means of the
    target features :math:`c_k = \sum_i p_{ik} f_i / \sum_i p_{ik}`; each example takes the class of its nearest
    centroid; then ``rounds`` times the centroids are recomputed from those hard labels and examples
    re-assigned. Classes that no example predicts get no centroid (as in SHOT's code). Features are extended
    with a constant 1 and L2-normalised first, as in SHOT's code. Run it over the whole target set (e.g. once
    per epoch), then train with cross-entropy on the labels it returns.

    Args:
        features: :math:`(N, F)` target features.
        logits: :math:`(N, C)` the classifier's logits for them.
        rounds: re-assignments after the first (SHOT uses 1).

    Returns:
        :math:`(N,)` long tensor of pseudo-labels.

    Example:
        >>> f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> shot_pseudo_labels(f, torch.tensor([[2.0, 0.0], [0.0, 0.1], [0.0, 2.0], [0.0, 2.0]])).tolist()
        [0, 0, 1, 1]
    """
    if features.dim() != 2 or logits.dim() != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(
            f"`features` (N, F) and `logits` (N, C) need the same N; got {tuple(features.shape)}, {tuple(logits.shape)}"
        )
    f = at_least_float32(features)
    f = F.normalize(torch.cat([f, torch.ones_like(f[:, :1])], dim=1), dim=1)
    weights = at_least_float32(logits).softmax(dim=1)
    present = torch.bincount(weights.argmax(dim=1), minlength=weights.shape[1]) > 0
    labels = weights.argmax(dim=1)
    for _ in range(rounds + 1):
        centroids = F.normalize((weights.T @ f) / (weights.sum(dim=0)[:, None] + 1e-8), dim=1)
        similarity = (f @ centroids.T).masked_fill(~present, float("-inf"))
        labels = similarity.argmax(dim=1)
        weights = F.one_hot(labels, num_classes=weights.shape[1]).to(f.dtype)
    return labels
