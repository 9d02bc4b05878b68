"""LogME: the log marginal evidence of a Bayesian linear model on an encoder's features.

You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021
(arXiv:2102.11005). :func:`logme` scores features for a classification task (higher: they transfer
better); :func:`logme_evidence` is the fit of one real-valued target. Re-exported by
:mod:`hftl.adaptation.transferability` with the other transferability scores.

Example:
    >>> import numpy as np
    >>> f, y = np.random.default_rng(0).normal(size=(200, 16)), np.arange(200) % 2
    >>> logme(f, y) < logme(f + 3.0 * y[:, None], y)  # features that carry the labels score higher
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hftl.adaptation.selection import as_numpy
from hftl.errors import DataError

__all__ = ["LogMEFit", "gram_spectrum", "label_array", "logme", "logme_evidence"]


def label_array(labels: Any, rows: int, name: str = "labels") -> np.ndarray:
    """``labels`` (a list, array or tensor) as a flat NumPy array of one value per row.

    Raises:
        DataError: not exactly ``rows`` values.
    """
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).ravel()
    if labels.shape != (rows,):
        raise DataError(f"`{name}` has {labels.shape[0]} values but there are {rows} rows; pass one per row.")
    return labels


# --- LogME --------------------------------------------------------------------------------------------


@dataclass
class LogMEFit:
    """The maximum-evidence fit of one regression target.

    Attributes:
        evidence: the log evidence divided by the number of rows, ``log p(y | F, alpha, beta) / n``.
        alpha: prior precision of the weights at the fixed point.
        beta: noise precision at the fixed point.
        iterations: fixed-point iterations run.
    """

    evidence: float
    alpha: float
    beta: float
    iterations: int


def _evidence(alpha: float, beta: float, x2: np.ndarray, rest: float, sigma: np.ndarray, n: int, d: int):
    """``(log evidence, ||m||^2, ||y - F m||^2)`` for the SVD statistics of one target (see logme_evidence)."""
    t = alpha / beta
    m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))
    res2 = float(np.sum(x2 * (t / (t + sigma)) ** 2) + rest)
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * math.log(alpha)
    ev = (
        0.5 * d * math.log(alpha) + 0.5 * n * math.log(beta) - 0.5 * n * math.log(2.0 * math.pi)
        - 0.5 * beta * res2 - 0.5 * alpha * m2 - 0.5 * log_det
    )  # fmt: skip
    return ev, m2, res2


_FLOOR = 1e-5  # the authors' epsilon, as a floor: an exact fit (n < D) gives a large finite beta, not inf


def _logme_fit(
    u: np.ndarray, sigma: np.ndarray, y: np.ndarray, d: int, max_iter: int, tol: float
) -> LogMEFit:
    n = len(y)
    x = u.T @ y  # y in the basis of the left singular vectors
    x2 = x**2
    rest = max(float(y @ y) - float(x2.sum()), 0.0)  # the part of y outside the column space of F
    alpha, beta = 1.0, 1.0
    for it in range(1, max_iter + 1):  # noqa: B007 (`it` is reported after the loop)
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))  # effective number of well-determined weights
        _, m2, res2 = _evidence(alpha, beta, x2, rest, sigma, n, d)
        alpha = gamma / max(m2, _FLOOR)
        beta = (n - gamma) / max(res2, _FLOOR)
        if abs(alpha / beta - t) / t <= tol:
            break
    return LogMEFit(_evidence(alpha, beta, x2, rest, sigma, n, d)[0] / n, alpha, beta, it)


def gram_spectrum(features: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(U, sigma, n, D)`` of ``(n, D)`` features ``F = U S V^T``, restricted to ``sigma = s^2 > 0``.

    Computed from the smaller Gram matrix (shared by LogME and the H-score).

    ``eigh`` of ``F F^T`` (``n <= D``) or ``F^T F`` (``n > D``, then ``U = F V / s``) costs
    ``O(n D min(n, D))`` like an SVD but runs several times faster on one thread for wide features.
    """
    f = as_numpy(features, name="features", ndim=2)
    if not np.isfinite(f).all():
        raise DataError("`features` holds NaN or inf values; check the encoder output (e.g. fp16 overflow).")
    n, d = f.shape
    sigma, vecs = np.linalg.eigh(f @ f.T if n <= d else f.T @ f)
    keep = sigma > sigma.max() * max(n, d) * np.finfo(np.float64).eps  # numerically non-zero
    sigma, vecs = sigma[keep], vecs[:, keep]
    u = vecs if n <= d else (f @ vecs) / np.sqrt(sigma)
    return u, sigma, n, d


def logme_evidence(features: Any, target: Any, *, max_iter: int = 100, tol: float = 1e-6) -> LogMEFit:
    r"""Maximum evidence of Bayesian linear regression ``y = F w + noise`` (LogME, one target).

    You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
    ICML 2021 (arXiv:2102.11005), Algorithm 1 in its fast SVD form (the authors' ``_fit_fixed_point``).
    With the prior :math:`w \sim N(0, \alpha^{-1} I_D)` and noise :math:`N(0, \beta^{-1})`, the evidence
    :math:`p(y \mid F, \alpha, \beta) = N(y; 0, \beta^{-1} I_n + \alpha^{-1} F F^\top)` is maximised by the
    fixed point (MacKay 1992), with :math:`F = U S V^\top`, :math:`\sigma = s^2` and :math:`x = U^\top y`::

        gamma = sum_i beta sigma_i / (alpha + beta sigma_i)
        m     = beta A^-1 F^T y,  A = alpha I + beta F^T F
        alpha <- gamma / m^T m,   beta <- (n - gamma) / ||F m - y||^2

    and the log evidence at the fixed point is::

        D/2 log alpha + n/2 log beta - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log |A|

    ``log |A|`` counts the zero eigenvalues of :math:`F^\top F` (``D - n`` of them when ``n < D``; the
    authors' fast version drops them, the two agree when ``F`` has full column rank).

    Args:
        features: ``(n, D)`` features.
        target: ``(n,)`` real-valued target (a one-hot label column for classification).
        max_iter: at most this many fixed-point updates.
        tol: stop when ``alpha / beta`` changes by at most this relative amount.

    Returns:
        The fit: evidence per row, ``alpha``, ``beta``, iterations.

    Raises:
        DataError: wrong shapes, non-finite features.
    """
    u, sigma, n, d = gram_spectrum(features)
    y = as_numpy(label_array(target, n, "target"), name="target", ndim=1)
    return _logme_fit(u, sigma, y, d, max_iter, tol)


def logme(features: Any, labels: Any, *, max_iter: int = 100, tol: float = 1e-6) -> float:
    """LogME of features for a classification task: the mean over classes of :func:`logme_evidence`.

    Each class gives one regression target, its one-hot indicator column (You et al. 2021, Sec. 4.2).
    Comparable between encoders on the same examples and labels; higher is better. One eigendecomposition
    is shared by all classes: ``O(n D min(n, D))``.

    Args:
        features: ``(n, D)`` features.
        labels: ``(n,)`` class labels (any hashable values; at least two classes).
        max_iter: see :func:`logme_evidence`.
        tol: see :func:`logme_evidence`.

    Returns:
        The mean evidence per row (a log-likelihood per example, usually negative).

    Raises:
        DataError: wrong shapes, or fewer than two classes.
    """
    u, sigma, n, d = gram_spectrum(features)
    labels = label_array(labels, n)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise DataError(f"LogME needs labels of at least two classes; found only {classes.tolist()}.")
    fits = [_logme_fit(u, sigma, (labels == c).astype(np.float64), d, max_iter, tol) for c in classes]
    return float(np.mean([fit.evidence for fit in fits]))
