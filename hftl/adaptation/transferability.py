"""Transferability scores: will these features / this source transfer to the target, before any training?

Scores of an encoder's features for a labelled task (higher is better):

* :func:`logme` - the log marginal evidence of a Bayesian linear model on the features (You et al. 2021;
  in :mod:`hftl.adaptation.logme`, re-exported here);
* :func:`h_score` - how much of the feature variance the classes explain (Bao et al. 2019);

scores of a *source* classifier for the target labels (need a few labelled target examples; higher is better):

* :func:`leep` - log expected empirical prediction of the source model's soft outputs (Nguyen et al. 2020);
* :func:`nce` - negative conditional entropy of target labels given hard source predictions (Tran et al. 2019);

and label-free distances between source and target features (lower: closer domains):

* :func:`~hftl.adaptation.diagnostics.proxy_a_distance` (Ben-David et al. 2007), re-exported here;
* :func:`mmd` - multi-kernel maximum mean discrepancy with :mod:`hftl.losses` kernels (Gretton et al. 2012).

:func:`estimate_target_prior` estimates the target class distribution without target labels (BBSE,
Lipton et al. 2018); ``hftl assess`` uses it to warn about label shift.

Example:
    >>> import numpy as np
    >>> f, y = np.random.default_rng(0).normal(size=(200, 16)), np.arange(200) % 2
    >>> logme(f, y) < logme(f + 3.0 * y[:, None], y)  # features that carry the labels score higher
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hftl.adaptation.diagnostics import _paired, _subsample, proxy_a_distance
from hftl.adaptation.logme import LogMEFit, gram_spectrum, label_array, logme, logme_evidence
from hftl.adaptation.selection import as_numpy
from hftl.errors import DataError

__all__ = [
    "LogMEFit",
    "estimate_target_prior",
    "h_score",
    "label_entropy",
    "leep",
    "logme",
    "logme_evidence",
    "mmd",
    "nce",
    "proxy_a_distance",
]


# --- H-score ------------------------------------------------------------------------------------------


def _ledoit_wolf_shrinkage(x: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    """``(shrinkage, mu)`` of :func:`sklearn.covariance.ledoit_wolf_shrinkage` for centred ``x`` whose Gram
    eigenvalues are ``sigma``, in ``O(n D)``: ``sum((X^T X)^2) = sum(sigma^2)``, ``sum(X2^T X2) = sum_i |x_i|^4``."""
    n, d = x.shape
    trace = float(sigma.sum()) / n  # tr(S), S = X^T X / n
    mu = trace / d
    delta_ = float(np.sum(sigma**2)) / n**2
    beta = (float(np.sum(np.sum(x**2, axis=1) ** 2)) / n - delta_) / (n * d)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    return (0.0 if beta <= 0 or delta <= 0 else min(beta, delta) / delta), mu


def h_score(features: Any, labels: Any, *, shrinkage: bool = False) -> float:
    r"""H-score: :math:`\mathrm{tr}(\mathrm{cov}(f)^{-1} \mathrm{cov}(E[f \mid y]))`, higher is better.

    Bao, Li, Huang, Zheng, Tan & Zhao, "An Information-Theoretic Approach to Transferability in Task
    Transfer Learning", ICIP 2019. ``cov(E[f|y])`` is the covariance of the features with each row replaced
    by its class mean (the between-class scatter); the plain version inverts the sample covariance with a
    pseudo-inverse, like the reference code. With ``shrinkage`` the feature covariance is the Ledoit-Wolf
    estimate ``(1 - delta) S + delta mu I`` of :class:`sklearn.covariance.LedoitWolf` (Ibrahim, Ponomareva
    & Mazumder, ICLR 2023), far more stable when ``D`` is large next to ``n``.

    Computed in the span of the centred features: with ``X = U diag(s) V^T`` and ``A`` the class-averaging
    matrix, ``H = sum_i s_i^2 |A u_i|^2 / ((1 - delta) s_i^2 + n delta mu)`` (``delta = 0``: the pseudo-inverse),
    so no ``D x D`` matrix is formed.

    Args:
        features: ``(n, D)`` features.
        labels: ``(n,)`` class labels.
        shrinkage: use the Ledoit-Wolf shrunk feature covariance.

    Returns:
        The H-score (the plain one is at most the number of classes minus one).

    Raises:
        DataError: wrong shapes, fewer than two rows or two classes.
    """
    f = as_numpy(features, name="features", ndim=2)
    labels = label_array(labels, len(f))
    classes, index = np.unique(labels, return_inverse=True)
    if len(f) < 2 or len(classes) < 2:
        raise DataError(
            f"H-score needs 2+ rows and 2+ classes; got {len(f)} rows, classes {classes.tolist()}."
        )
    x = f - f.mean(axis=0)
    u, sigma, n, _ = gram_spectrum(x)
    counts = np.bincount(index)
    class_means = np.zeros((len(classes), u.shape[1]))
    np.add.at(class_means, index, u)
    au2 = np.sum((class_means / counts[:, None]) ** 2 * counts[:, None], axis=0)  # |A u_i|^2
    delta, mu = _ledoit_wolf_shrinkage(x, sigma) if shrinkage else (0.0, 0.0)
    return float(np.sum(sigma * au2 / ((1.0 - delta) * sigma + n * delta * mu)))


# --- LEEP and NCE -------------------------------------------------------------------------------------


def label_entropy(labels: Any) -> float:
    """Entropy (nats) of the empirical label distribution: ``-LEEP`` and ``-NCE`` of an uninformative source."""
    _, counts = np.unique(np.asarray(labels).ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def leep(source_probs: Any, labels: Any) -> float:
    r"""Log expected empirical prediction (LEEP), higher is better, at most 0.

    Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020. With the source model's distribution :math:`\theta(x_i)` over source labels
    :math:`z` on the *target* examples and their target labels :math:`y_i`::

        P(y, z) = 1/n sum_{i: y_i = y} theta(x_i)_z,   P(y | z) = P(y, z) / sum_y' P(y', z)
        LEEP    = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z

    A source that carries no information about ``y`` scores ``-H(y)`` (:func:`label_entropy`).

    Args:
        source_probs: ``(n, Z)`` source-model probabilities on the target examples (rows sum to 1).
        labels: ``(n,)`` target labels.

    Returns:
        The LEEP score (the average log-likelihood of the expected empirical predictor).

    Raises:
        DataError: wrong shapes or rows that are not probabilities.
    """
    theta = as_numpy(source_probs, name="source_probs", ndim=2)
    if np.any(theta < -1e-6) or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-3):
        raise DataError(
            "`source_probs` rows must be probabilities (non-negative, sum 1): pass softmax(logits)."
        )
    labels = label_array(labels, len(theta))
    _, y = np.unique(labels, return_inverse=True)
    joint = np.zeros((y.max() + 1, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= len(theta)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), np.finfo(np.float64).tiny)
    eep = np.sum(conditional[y] * theta, axis=1)
    return float(np.mean(np.log(np.maximum(eep, np.finfo(np.float64).tiny))))


def nce(source_labels: Any, labels: Any) -> float:
    """Negative conditional entropy ``-H(Y | Z)`` of target labels given hard source labels, at most 0.

    Tran, Nguyen & Hassner, "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
    ``Z`` are the source model's predicted labels (argmax) on the target examples; the empirical joint
    ``P(y, z)`` gives ``NCE = sum_{y,z} P(y, z) log P(y | z)``. ``NCE + H(Y)`` is the mutual information
    between source predictions and target labels (0: the source tells nothing).

    Args:
        source_labels: ``(n,)`` hard source labels of the target examples.
        labels: ``(n,)`` target labels.

    Returns:
        The NCE score.

    Raises:
        DataError: different lengths.
    """
    z = np.asarray(source_labels).ravel()
    labels = label_array(labels, len(z))
    _, zi = np.unique(z, return_inverse=True)
    _, yi = np.unique(labels, return_inverse=True)
    joint = np.zeros((yi.max() + 1, zi.max() + 1))
    np.add.at(joint, (yi, zi), 1.0)
    joint /= len(z)
    conditional = joint / joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(conditional[nonzero])))


# --- domain distance and label shift ------------------------------------------------------------------


def mmd(
    features_s: Any,
    features_t: Any,
    *,
    kernel_alphas: tuple[float, ...] = (0.5, 1.0, 2.0),
    max_samples: int = 1000,
    seed: int = 0,
) -> float:
    """Squared multi-kernel MMD between source and target features (0: same distribution), lower is closer.

    Both domains are subsampled (fixed seed) to ``n = min(n_s, n_t, max_samples)`` rows and scored with
    :class:`~hftl.losses.MultipleKernelMaximumMeanDiscrepancy` (the biased estimator) over
    :func:`~hftl.losses.gaussian_kernels` whose bandwidths follow the data (``alpha`` x the mean squared
    distance), so the value does not depend on the feature scale.

    Args:
        features_s: ``(N_s, D)`` source features.
        features_t: ``(N_t, D)`` target features.
        kernel_alphas: bandwidth multipliers of the Gaussian kernels.
        max_samples: at most this many rows per domain (the kernel matrix is ``2n x 2n``).
        seed: seed of the subsampling.

    Returns:
        The MMD² estimate.

    Raises:
        DataError: different widths or fewer than 2 rows per domain.
    """
    import torch

    from hftl.losses import MultipleKernelMaximumMeanDiscrepancy, gaussian_kernels

    source, target = _paired(features_s, features_t, min_rows=2)
    rng = np.random.default_rng(seed)
    n = min(len(source), len(target), max_samples)
    source, _ = _subsample(rng, source, n)
    target, _ = _subsample(rng, target, n)
    loss = MultipleKernelMaximumMeanDiscrepancy(gaussian_kernels(kernel_alphas))
    with torch.no_grad():
        out = loss(torch.from_numpy(source), torch.from_numpy(target))
    return float(out.loss.clamp_min(0.0))


def estimate_target_prior(probs_s_val: Any, labels_s_val: Any, probs_t: Any) -> np.ndarray:
    """The target class distribution from unlabelled target predictions, by black-box shift estimation.

    Lipton, Wang & Smola, "Detecting and Correcting for Label Shift with Black Box Predictors", ICML 2018.
    With ``C[i, j] = P_source(pred = i, y = j)`` from held-out source data and ``mu[i] = P_target(pred = i)``,
    the importance weights solve ``C w = mu`` (least squares) and ``q_t = w * p_source``, clipped at 0 and
    renormalised.

    Args:
        probs_s_val: ``(n_v, K)`` source-classifier probabilities on held-out labelled source data.
        labels_s_val: ``(n_v,)`` their labels, integers in ``0..K-1``.
        probs_t: ``(n_t, K)`` the same classifier's probabilities on unlabelled target data.

    Returns:
        ``(K,)`` the estimated target class probabilities.

    Raises:
        DataError: wrong shapes or labels outside ``0..K-1``.
    """
    pv = as_numpy(probs_s_val, name="probs_s_val", ndim=2)
    pt = as_numpy(probs_t, name="probs_t", ndim=2)
    k = pv.shape[1]
    yv = label_array(labels_s_val, len(pv), "labels_s_val").astype(np.int64)
    if pt.shape[1] != k or yv.min() < 0 or yv.max() >= k:
        raise DataError(
            f"`probs_t` must have {k} columns like `probs_s_val` and labels must lie in 0..{k - 1}; got "
            f"{pt.shape[1]} columns and labels {yv.min()}..{yv.max()}."
        )
    confusion = np.zeros((k, k))
    np.add.at(confusion, (pv.argmax(axis=1), yv), 1.0 / len(yv))
    mu = np.bincount(pt.argmax(axis=1), minlength=k) / len(pt)
    w = np.clip(np.linalg.lstsq(confusion, mu, rcond=None)[0], 0.0, None)
    q = w * np.bincount(yv, minlength=k) / len(yv)
    return q / q.sum() if q.sum() > 0 else mu
