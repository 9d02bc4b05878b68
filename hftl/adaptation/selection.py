"""Label-free model selection for unsupervised domain adaptation, and how well it picks.

Domain adaptation trains on labelled source and *unlabelled* target data, so the checkpoint, the
``trade_off`` or the method has to be chosen without target labels. Each validator (in
:mod:`hftl.adaptation.validators`) scores one candidate (a checkpoint, a hyper-parameter setting) from
what the recipe can compute without target labels; :func:`select` picks the best candidate by name
from :data:`CRITERIA`. :func:`weighted_spearman` and :func:`regret` measure, *with* target labels, how
well a validator would have picked (``benchmarks/selection.py``, docs/selection.md).

=================== ====================================== ====== ========================================
name                function                               better reads (candidate keys)
=================== ====================================== ====== ========================================
``source_val_acc``  :func:`source_validation_accuracy`     higher probs_s_val, labels_s_val
``im``              :func:`information_maximization`       higher probs_t
``snd``             :func:`soft_neighborhood_density`      higher probs_t
``dev``             :func:`deep_embedded_validation`       lower  features_s_train, features_s_val,
                                                                  losses_s_val, features_t
``bnm``             :func:`bnm`                            higher probs_s_val, probs_t
``class_ami``       :func:`class_ami`                      higher features_s_val, labels_s_val,
                                                                  features_t, probs_t
=================== ====================================== ====== ========================================

Shapes: ``probs_*`` ``(N, C)`` softmax outputs, ``features_*`` ``(N, D)`` pooled encoder features,
``labels_s_val`` / ``losses_s_val`` ``(N,)``; ``_s_train`` / ``_s_val`` are source training / validation
rows, ``_t`` unlabelled target rows. Every validator takes numpy arrays or torch tensors and returns a
python ``float``.

Example:
    >>> import numpy as np
    >>> confident = {"probs_t": np.eye(3)[[0, 1, 2, 0, 1, 2]]}
    >>> unsure = {"probs_t": np.full((6, 3), 1 / 3)}
    >>> select([unsure, confident], "im")
    1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import rankdata

from hftl.adaptation.validators import (
    as_numpy,
    bnm,
    class_ami,
    deep_embedded_validation,
    importance_weights,
    information_maximization,
    soft_neighborhood_density,
    source_validation_accuracy,
)
from hftl.errors import ConfigError, DataError, HftlError

__all__ = [
    "CRITERIA",
    "Criterion",
    "as_numpy",
    "bnm",
    "class_ami",
    "deep_embedded_validation",
    "importance_weights",
    "information_maximization",
    "regret",
    "score",
    "select",
    "soft_neighborhood_density",
    "source_validation_accuracy",
    "weighted_spearman",
]


class Criterion(NamedTuple):
    """A selection criterion: the function, its direction and the candidate keys it reads (in order)."""

    fn: Callable[..., float]
    higher_is_better: bool
    inputs: tuple[str, ...]


CRITERIA: dict[str, Criterion] = {
    "source_val_acc": Criterion(source_validation_accuracy, True, ("probs_s_val", "labels_s_val")),
    "im": Criterion(information_maximization, True, ("probs_t",)),
    "snd": Criterion(soft_neighborhood_density, True, ("probs_t",)),
    "dev": Criterion(
        deep_embedded_validation, False, ("features_s_train", "features_s_val", "losses_s_val", "features_t")
    ),
    "bnm": Criterion(bnm, True, ("probs_s_val", "probs_t")),
    "class_ami": Criterion(class_ami, True, ("features_s_val", "labels_s_val", "features_t", "probs_t")),
}


def _criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ConfigError(
            f"unknown selection criterion {name!r}; choose one of {sorted(CRITERIA)} "
            "(e.g. `selection.criterion=im`)."
        )
    return CRITERIA[name]


def score(candidate: dict[str, Any], criterion: str) -> float:
    """Score one candidate dict with the criterion named ``criterion`` (see :func:`select`).

    Raises:
        ConfigError: unknown ``criterion``.
        HftlError: the candidate lacks a key the criterion reads.
    """
    spec = _criterion(criterion)
    missing = [key for key in spec.inputs if key not in candidate]
    if missing:
        raise HftlError(
            f"criterion {criterion!r} reads {list(spec.inputs)} but the candidate lacks {missing} "
            f"(it has {sorted(candidate)}); compute them or choose another criterion."
        )
    return spec.fn(*(candidate[key] for key in spec.inputs))


def select(candidates: list[dict[str, Any]], criterion: str) -> int:
    """Index of the best candidate under ``criterion``, without target labels.

    Args:
        candidates: one dict per checkpoint / setting, holding the keys the criterion reads
            (``CRITERIA[criterion].inputs``, e.g. ``{"probs_t": ...}`` for ``"im"``).
        criterion: a name in :data:`CRITERIA`.

    Returns:
        The index of the best candidate; ties go to the earliest, NaN scores never win.

    Raises:
        ConfigError: unknown ``criterion``.
        HftlError: no candidates, a candidate lacking a key, or every score NaN.
    """
    sign = 1.0 if _criterion(criterion).higher_is_better else -1.0
    if not candidates:
        raise HftlError("select() got no candidates; pass at least one checkpoint's outputs.")
    best, best_value = -1, -np.inf
    for index, candidate in enumerate(candidates):
        value = sign * score(candidate, criterion)
        if value > best_value:  # strict: ties keep the earliest
            best, best_value = index, value
    if best < 0:
        raise HftlError(f"every candidate scored NaN under {criterion!r}; check the inputs for NaN/inf.")
    return best


def _finite_scores(scores: Any, accuracies: Any) -> tuple[np.ndarray, np.ndarray]:
    values = as_numpy(scores, name="scores", ndim=1)
    accs = as_numpy(accuracies, name="accuracies", ndim=1)
    if len(values) != len(accs):
        raise DataError(
            f"`scores` has {len(values)} entries but `accuracies` has {len(accs)}; pass one per checkpoint."
        )
    if not np.all(np.isfinite(accs)):
        raise DataError("`accuracies` holds NaN/inf; every checkpoint needs a measured accuracy.")
    return values, accs


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ranks that advance by each row's weight: a row's rank is the weight of all rows with smaller
    values plus ``(n_tied + 1) / 2`` times the mean weight of its ties (WeightedCorr's ``_wrank``; with
    unit weights, the ordinary average ranks)."""
    unique, group = np.unique(values, return_inverse=True)
    total = np.bincount(group, weights=weights, minlength=len(unique))
    count = np.bincount(group, minlength=len(unique))
    below = np.concatenate([[0.0], np.cumsum(total)[:-1]])
    return (below + (count + 1) / 2 * total / count)[group]


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    cov = np.average((x - mx) * (y - my), weights=w)
    var = np.average((x - mx) ** 2, weights=w) * np.average((y - my) ** 2, weights=w)
    return float(cov / np.sqrt(var)) if var > 0 else float("nan")


def weighted_spearman(
    scores: Sequence[float] | np.ndarray, accuracies: Sequence[float] | np.ndarray, *, power: float = 2.0
) -> float:
    """Weighted Spearman correlation between validator scores and target accuracies, as Musgrave,
    Belongie & Lim 2022 rank validators (powerful-benchmarker ``weighted_spearman``, ``pow=2``).

    Each checkpoint ``i`` is weighted by ``w_i = max(r_score_i, r_acc_i) ** power``, where ``r`` is its
    dense rank divided by the largest rank (1 for the best score or the best accuracy), so disagreements
    among the checkpoints a validator would pick, or that are truly best, count most; the result is the
    weighted Pearson correlation of weighted ranks (ranks that advance by each row's weight, as the
    WeightedCorr package computes them)::

        rho_w = cov_w(R_s, R_a) / sqrt(var_w(R_s) var_w(R_a))

    NaN/inf scores are set to the lowest finite score (they can never be picked). Pass scores where
    higher is better (negate DEV).

    Args:
        scores: one validator score per checkpoint, shape ``(N,)``.
        accuracies: the checkpoints' target accuracies, shape ``(N,)``.
        power: exponent of the weights (paper: 2).

    Returns:
        The correlation in ``[-1, 1]``; NaN when the scores or the accuracies are all equal (or every
        score is NaN): the ranking is then undefined.

    Raises:
        DataError: mismatched lengths or non-finite accuracies.

    Example:
        >>> weighted_spearman([0.1, 0.2, 0.3], [0.5, 0.7, 0.9])
        1.0
        >>> round(weighted_spearman([1, 2, 3], [1, 3, 2]), 4)  # the two best disagree: -5/14
        -0.3571
    """
    values, accs = _finite_scores(scores, accuracies)
    finite = np.isfinite(values)
    if not finite.any():
        return float("nan")
    values = np.where(finite, values, values[finite].min())
    rank_s = rankdata(values, method="dense") / len(np.unique(values))
    rank_a = rankdata(accs, method="dense") / len(np.unique(accs))
    weights = np.maximum(rank_s, rank_a) ** power
    return _weighted_pearson(_weighted_ranks(values, weights), _weighted_ranks(accs, weights), weights)


def regret(scores: Sequence[float] | np.ndarray, accuracies: Sequence[float] | np.ndarray) -> float:
    """How much target accuracy picking by ``scores`` loses: ``max(accuracies) - accuracies[pick]``.

    ``pick`` is the checkpoint with the highest score (pass higher-is-better scores), the earliest among
    ties, as :func:`select` picks; NaN scores are never picked.

    Args:
        scores: one validator score per checkpoint, shape ``(N,)``.
        accuracies: the checkpoints' target accuracies, shape ``(N,)``.

    Returns:
        The regret, >= 0, in the units of ``accuracies``; NaN when every score is NaN.

    Raises:
        DataError: mismatched lengths or non-finite accuracies.

    Example:
        >>> round(regret([0.3, 0.9, 0.5], [0.80, 0.75, 0.85]), 4)  # picks the second: 0.85 - 0.75
        0.1
    """
    values, accs = _finite_scores(scores, accuracies)
    if not np.isfinite(values).any():
        return float("nan")
    pick = int(np.argmax(np.where(np.isfinite(values), values, -np.inf)))
    return float(accs.max() - accs[pick])
