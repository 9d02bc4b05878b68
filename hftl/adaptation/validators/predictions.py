"""Validators that read only class predictions: source-validation accuracy, IM and BNM."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import entr

from hftl.adaptation.validators.arrays import as_labels, as_numpy, as_probs
from hftl.errors import DataError


def source_validation_accuracy(probs_s_val: Any, labels_s_val: Any) -> float:
    """Accuracy on held-out *source* data: the baseline validator, blind to the domain shift.

    Higher is better. ``acc = mean_i [argmax_c p_ic == y_i]``. Musgrave et al. 2022 found it a strong
    baseline among label-free validators.

    Args:
        probs_s_val: class probabilities or logits (argmax is the same), shape ``(N, C)``.
        labels_s_val: integer labels, shape ``(N,)``.

    Returns:
        The accuracy in [0, 1].

    Example:
        >>> source_validation_accuracy([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 1, 1])
        0.6666666666666666
    """
    probs = as_numpy(probs_s_val, name="probs_s_val", ndim=2)
    labels = as_labels(labels_s_val, name="labels_s_val", rows=len(probs), rows_name="probs_s_val")
    return float(np.mean(probs.argmax(axis=1) == labels))


def information_maximization(probs_t: Any) -> float:
    """Information-maximisation score of target predictions (Gomes, Krause & Perona, NeurIPS 2010).

    Higher is better: predictions that are confident per sample *and* diverse over the target set.
    It is the mutual information between inputs and predicted labels, the negative of the IM loss that
    SHOT (Liang et al., ICML 2020) minimises::

        IM = H(mean_i p_i) - mean_i H(p_i),   H(p) = -sum_c p_c log p_c   (natural log)

    Range ``[0, log C]``: ``log C`` for confident predictions spread evenly over the ``C`` classes,
    0 for uniform predictions or for every sample confidently given the same class.

    Args:
        probs_t: softmax probabilities on the target set, shape ``(N, C)``.

    Returns:
        The score in nats.

    Example:
        >>> round(information_maximization([[1.0, 0.0], [0.0, 1.0]]), 4)  # log 2
        0.6931
        >>> information_maximization([[1.0, 0.0], [1.0, 0.0]])  # collapsed to one class
        0.0
    """
    probs = as_probs(probs_t, name="probs_t")
    marginal_entropy = entr(probs.mean(axis=0)).sum()
    mean_entropy = entr(probs).sum(axis=1).mean()
    return float(marginal_entropy - mean_entropy)


def batch_nuclear_norm(probs: Any, *, name: str = "probs") -> float:
    """Nuclear norm of a prediction matrix per row, ``||P||_* / N`` (Cui et al., "Towards Discriminability
    and Diversity: Batch Nuclear-norm Maximization under Label Insufficient Situations", CVPR 2020).

    The nuclear norm (sum of singular values) of the ``(N, C)`` probability matrix grows with both
    the confidence of each row (its Frobenius norm) and the number of classes predicted (its rank);
    BNM training maximises it on target batches, and the BNM loss is its negative. For ``N >= C`` the
    value lies in ``[1 / sqrt(N C), sqrt(C / N)]``: ``1 / sqrt(N C)`` for uniform rows, ``1 / sqrt(N)``
    for every row confidently on one class, ``sqrt(C / N)`` for confident rows spread evenly over the
    ``C`` classes. It depends on ``N``, so compare it only between candidates scored on the same rows.

    Args:
        probs: softmax probabilities, shape ``(N, C)``.
        name: the array's name in error messages.

    Returns:
        ``||P||_* / N``.

    Example:
        >>> batch_nuclear_norm(np.eye(4))  # 4 confident rows, one per class: 4 / 4
        1.0
        >>> batch_nuclear_norm([[1.0, 0.0]] * 4)  # collapsed: sqrt(4) / 4
        0.5
    """
    p = as_probs(probs, name=name)
    return float(np.linalg.svd(p, compute_uv=False).sum() / len(p))


def bnm(probs_s_val: Any, probs_t: Any) -> float:
    """BNM validator: ``BNM(source val) + BNM(target)`` (Musgrave, Belongie & Lim, "Three New Validators
    and a Large-Scale Benchmark Ranking for Unsupervised Domain Adaptation", 2022).

    Higher is better. Each term is :func:`batch_nuclear_norm` of that set's softmax predictions, as in
    Musgrave's ``BNMSummedSrcVal`` (the "Source Val + Target" BNM of the paper's tables, which ranked
    among the best validators of its 1M-checkpoint benchmark): the two sets are scored separately and
    summed, not concatenated. The source term penalises a checkpoint whose source predictions have
    become unsure or collapsed onto few classes. Like IM, BNM reads no labels: it cannot tell right from
    wrong confident predictions (permuting the rows leaves it unchanged).

    Args:
        probs_s_val: softmax probabilities on source validation data, shape ``(N_s, C)``.
        probs_t: softmax probabilities on (unlabelled) target data, shape ``(N_t, C)``.

    Returns:
        The sum of the two per-row nuclear norms.

    Raises:
        DataError: the two sets have different numbers of classes, or hold logits.

    Example:
        >>> balanced = np.eye(3)[[0, 1, 2, 0, 1, 2]]  # confident, every class predicted
        >>> collapsed = np.eye(3)[[0] * 6]  # confident, one class predicted
        >>> bnm(balanced, balanced) > bnm(balanced, collapsed)
        True
    """
    s, t = as_probs(probs_s_val, name="probs_s_val"), as_probs(probs_t, name="probs_t")
    if s.shape[1] != t.shape[1]:
        raise DataError(
            f"`probs_s_val` has {s.shape[1]} classes but `probs_t` has {t.shape[1]}; score both with one model."
        )
    return batch_nuclear_norm(s, name="probs_s_val") + batch_nuclear_norm(t, name="probs_t")
