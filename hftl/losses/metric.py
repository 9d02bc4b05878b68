"""Metric-learning losses for few-shot transfer: triplet (with optional batch-hard mining) and pair losses.

Each loss declares the batch it consumes in ``inputs``: ``"triplets"`` (anchor, positive, negative
embeddings), ``"pairs"`` (two embeddings and a 1/0 same-class target) or ``"labeled"`` (embeddings and
class labels; the loss mines its own triplets). The few-shot recipe (``recipes/fewshot.py``) builds the
matching batches with :mod:`hftl.data.pairs`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from hftl.losses.base import LossOutput, at_least_float32, check_pair, no_autocast

Distance = Literal["euclidean", "squared_euclidean", "cosine"]
LossInputs = Literal["pairs", "triplets", "labeled"]
DISTANCES: tuple[str, ...] = ("euclidean", "squared_euclidean", "cosine")
_EPS = 1e-12  # keeps sqrt differentiable at 0 (a point and itself)


def _check_distance(distance: str, margin: float) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"`loss.distance` is {distance!r}; allowed: {', '.join(DISTANCES)}.")
    if margin < 0:
        raise ValueError(f"`loss.margin` is {margin}; allowed: a margin >= 0 (in units of the distance).")


def paired_distance(x: torch.Tensor, y: torch.Tensor, distance: Distance) -> torch.Tensor:
    r"""Row-wise distance :math:`d(x_i, y_i)`.

    ``euclidean`` is :math:`\|x - y\|_2`, ``squared_euclidean`` :math:`\|x - y\|_2^2`, ``cosine``
    :math:`1 - \cos(x, y)` (in [0, 2]).

    Shape:
        - x, y: :math:`(N, D)`; output :math:`(N,)`.
    """
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(x, y, dim=-1)
    squared = (x - y).square().sum(dim=-1)
    return squared if distance == "squared_euclidean" else squared.clamp_min(_EPS).sqrt()


def distance_matrix(x: torch.Tensor, distance: Distance) -> torch.Tensor:
    """All pairwise distances :math:`D_{ij} = d(x_i, x_j)` (same definitions as :func:`paired_distance`).

    Shape:
        - x: :math:`(N, D)`; output :math:`(N, N)` with a zero diagonal.
    """
    if distance == "cosine":
        unit = F.normalize(x, dim=-1)
        return 1.0 - unit @ unit.T
    squared = (x.unsqueeze(1) - x.unsqueeze(0)).square().sum(dim=-1)  # exact (no Gram-matrix cancellation)
    return squared if distance == "squared_euclidean" else squared.clamp_min(_EPS).sqrt()


class TripletLoss(nn.Module):
    r"""Triplet loss with a margin over a distance, on given (anchor, positive, negative) triplets.

    Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face Recognition and Clustering",
    CVPR 2015 (arXiv:1503.03832). With a distance :math:`d` and margin :math:`m`:

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_{i=1}^{N} \max\bigl(0,\; d(a_i, p_i) - d(a_i, n_i) + m\bigr)

    FaceNet uses the squared euclidean distance on L2-normalised embeddings; sentence-transformers'
    ``TripletLoss`` the euclidean distance with :math:`m = 5`.

    Args:
        margin: how much closer the positive must be than the negative before a triplet stops counting.
        distance: ``euclidean``, ``squared_euclidean`` or ``cosine`` (:math:`1 - \cos`).

    Shape:
        - anchor, positive, negative: :math:`(N, D)`.
        - Output: ``LossOutput`` with a scalar ``loss`` and metrics ``active`` (share of triplets with a
          positive hinge), ``d_pos`` and ``d_neg`` (mean distances).

    Example:
        >>> loss_fn = TripletLoss(margin=1.0)
        >>> a, p, n = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.5]])
        >>> loss_fn(a, p, n).loss.item()  # max(0, 1 - 1.5 + 1)
        0.5
    """

    inputs: ClassVar[LossInputs] = "triplets"

    def __init__(self, *, margin: float = 1.0, distance: Distance = "euclidean"):
        super().__init__()
        _check_distance(distance, margin)
        self.margin, self.distance = margin, distance

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> LossOutput:
        check_pair("anchor", anchor, "positive", positive, same_rows=True)
        check_pair("anchor", anchor, "negative", negative, same_rows=True)
        with no_autocast(anchor):
            a, p, n = (at_least_float32(t) for t in (anchor, positive, negative))
            d_pos, d_neg = paired_distance(a, p, self.distance), paired_distance(a, n, self.distance)
            hinge = (d_pos - d_neg + self.margin).clamp_min(0.0)
        return LossOutput(loss=hinge.mean(), metrics=_triplet_metrics(hinge, d_pos, d_neg))


class BatchHardTripletLoss(nn.Module):
    r"""Triplet loss with batch-hard mining: each anchor against its hardest positive and negative.

    Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017
    (arXiv:1703.07737), on the triplet loss of Schroff et al. 2015. For every anchor :math:`i` of the batch
    that has at least one other example of its class and one of another class:

    .. math::
        \mathcal{L} = \frac{1}{|V|} \sum_{i \in V} \max\Bigl(0,\; \max_{j \ne i,\, y_j = y_i} d(x_i, x_j)
        - \min_{k:\, y_k \ne y_i} d(x_i, x_k) + m\Bigr)

    Anchors without a positive or a negative in the batch are left out (:math:`V`); a batch with none
    gives a zero loss that still carries the graph.

    Args:
        margin: as in :class:`TripletLoss`.
        distance: as in :class:`TripletLoss`.

    Shape:
        - features: :math:`(N, D)`; labels: :math:`(N,)` integer classes.
        - Output: ``LossOutput`` (scalar ``loss``; metrics ``active``, ``d_pos``, ``d_neg``, ``anchors``).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
        >>> loss = BatchHardTripletLoss(margin=1.0)(x, torch.tensor([0, 0, 1, 1])).loss
        >>> round(loss.item(), 4)  # hinges 1-3+1, 1-2+1, 3-2+1, 3-5+1 -> (0 + 0 + 2 + 0) / 4
        0.5
    """

    inputs: ClassVar[LossInputs] = "labeled"

    def __init__(self, *, margin: float = 1.0, distance: Distance = "euclidean"):
        super().__init__()
        _check_distance(distance, margin)
        self.margin, self.distance = margin, distance

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        if features.dim() != 2 or labels.shape != features.shape[:1]:
            raise ValueError(
                f"`features` must be (N, D) and `labels` (N,); got {tuple(features.shape)} and "
                f"{tuple(labels.shape)}."
            )
        with no_autocast(features):
            dist = distance_matrix(at_least_float32(features), self.distance)
            same = labels.unsqueeze(0) == labels.unsqueeze(1)
            self_mask = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
            positive, negative = same & ~self_mask, ~same
            valid = positive.any(dim=1) & negative.any(dim=1)
            if not valid.any():  # e.g. every example of a different class: nothing to mine
                zero = features.sum() * 0.0
                return LossOutput(loss=zero, metrics={"active": zero.detach(), "anchors": zero.detach()})
            d_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)[valid]
            d_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)[valid]
            hinge = (d_pos - d_neg + self.margin).clamp_min(0.0)
        metrics = _triplet_metrics(hinge, d_pos, d_neg) | {"anchors": valid.sum().float()}
        return LossOutput(loss=hinge.mean(), metrics=metrics)


class CosineSimilarityLoss(nn.Module):
    r"""Squared error between the cosine similarity of a pair and its target (1 same class, 0 not).

    The pair loss SetFit trains with by default (Tunstall et al., "Efficient Few-Shot Learning Without
    Prompts", 2022, arXiv:2209.11055; sentence-transformers' ``CosineSimilarityLoss``):

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_{i=1}^{N} \bigl(\cos(u_i, v_i) - t_i\bigr)^2,
        \qquad t_i \in \{0, 1\}

    Shape:
        - u, v: :math:`(N, D)`; target: :math:`(N,)` floats (or ints) in [0, 1].
        - Output: ``LossOutput`` (scalar ``loss``; metrics ``cos_pos``/``cos_neg``, mean similarity of
          same-class / different-class pairs in the batch).

    Example:
        >>> u, v = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 2.0]])
        >>> round(CosineSimilarityLoss()(u, v, torch.tensor([1.0, 0.0])).loss.item(), 4)  # (cos45 - 1)^2 / 2
        0.0429
    """

    inputs: ClassVar[LossInputs] = "pairs"

    def forward(self, u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> LossOutput:
        _check_pairs(u, v, target)
        with no_autocast(u):
            cos = F.cosine_similarity(at_least_float32(u), at_least_float32(v), dim=-1)
            target = target.to(cos.dtype)
            loss = (cos - target).square().mean()
        return LossOutput(loss=loss, metrics=_pair_metrics(cos, target, "cos"))


class ContrastiveLoss(nn.Module):
    r"""The margin contrastive loss of Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an
    Invariant Mapping", CVPR 2006: pulls same-class pairs together, pushes others beyond a margin.

    .. math::
        \mathcal{L} = \frac{1}{2N} \sum_{i=1}^{N} \Bigl( t_i\, d_i^2 + (1 - t_i) \max(0,\, m - d_i)^2 \Bigr),
        \qquad d_i = d(u_i, v_i),\; t_i \in \{0, 1\}

    Args:
        margin: different-class pairs farther apart than this cost nothing.
        distance: ``euclidean`` (the paper), ``squared_euclidean`` or ``cosine``.

    Shape:
        - u, v: :math:`(N, D)`; target: :math:`(N,)` with 1 for a same-class pair, 0 otherwise.
        - Output: ``LossOutput`` (scalar ``loss``; metrics ``d_pos``/``d_neg``, mean distances).

    Example:
        >>> u, v = torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        >>> ContrastiveLoss(margin=2.0)(u, v, torch.tensor([1, 0])).loss.item()  # (5^2 + (2 - 1)^2) / 4
        6.5
    """

    inputs: ClassVar[LossInputs] = "pairs"

    def __init__(self, *, margin: float = 1.0, distance: Distance = "euclidean"):
        super().__init__()
        _check_distance(distance, margin)
        self.margin, self.distance = margin, distance

    def forward(self, u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> LossOutput:
        _check_pairs(u, v, target)
        with no_autocast(u):
            d = paired_distance(at_least_float32(u), at_least_float32(v), self.distance)
            target = target.to(d.dtype)
            per_pair = target * d.square() + (1 - target) * (self.margin - d).clamp_min(0.0).square()
            loss = per_pair.mean() / 2
        return LossOutput(loss=loss, metrics=_pair_metrics(d, target, "d"))


def _check_pairs(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> None:
    check_pair("u", u, "v", v, same_rows=True)
    if target.shape != u.shape[:1]:
        raise ValueError(f"`target` must be (N,) = ({u.shape[0]},); got {tuple(target.shape)}.")


@torch.no_grad()
def _triplet_metrics(
    hinge: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor
) -> dict[str, torch.Tensor]:
    return {"active": (hinge > 0).float().mean(), "d_pos": d_pos.mean(), "d_neg": d_neg.mean()}


@torch.no_grad()
def _pair_metrics(value: torch.Tensor, target: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """Mean ``value`` over same-class (``pos``) and different-class (``neg``) pairs; a side with no pair is
    ``nan`` (reading ``mask.any()`` to leave it out would wait for the device at every step)."""
    out = {}
    for suffix, mask in (("pos", target > 0.5), ("neg", target <= 0.5)):
        out[f"{name}_{suffix}"] = (value * mask).sum() / mask.sum()
    return out
