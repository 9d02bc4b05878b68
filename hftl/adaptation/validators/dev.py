"""Deep Embedded Validation: target risk estimated from importance-weighted source-validation losses."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from hftl.adaptation.validators.arrays import as_numpy
from hftl.errors import DataError


def importance_weights(
    features_s_train: Any, features_t: Any, features_s_val: Any, *, seed: int = 0
) -> np.ndarray:
    """Density ratio ``w(x) = p_t(x) / p_s(x)`` at ``features_s_val`` from a domain classifier.

    A logistic regression (on standardised features, ``C`` picked from ``{0.01, 0.1, 1, 10}`` by
    held-out log-loss on a 20% split, then refit on all) separates source-train (0) from target (1);
    ``w(x) = p(t|x) / p(s|x) * n_s / n_t`` (Bayes' rule; ``n_s / n_t`` undoes the class prior).
    A linear classifier gives a log-linear ratio: enough for a shift of the features' mean, not for a
    change of their spread alone.

    Args:
        features_s_train: source training features, shape ``(N_s, D)``.
        features_t: target features, shape ``(N_t, D)``.
        features_s_val: where to evaluate the ratio (source validation features), ``(N_v, D)``.
        seed: seed of the held-out split that picks ``C``.

    Returns:
        The weights, shape ``(len(features_s_val),)``; their mean is about 1 when the source
        features cover the target.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x_s, x_t, x_v = (rng.normal(size=(300, 2)) for _ in range(3))  # no shift
        >>> w = importance_weights(x_s, x_t, x_v)
        >>> w.shape, bool(abs(w.mean() - 1) < 0.1)
        ((300,), True)
    """
    source = as_numpy(features_s_train, name="features_s_train", ndim=2)
    target = as_numpy(features_t, name="features_t", ndim=2)
    evaluate = as_numpy(features_s_val, name="features_s_val", ndim=2)
    if not source.shape[1] == target.shape[1] == evaluate.shape[1]:
        raise DataError(
            f"feature widths differ: features_s_train {source.shape[1]}, features_t {target.shape[1]}, "
            f"features_s_val {evaluate.shape[1]}; pass features from the same layer."
        )
    if min(len(source), len(target)) < 5:
        raise DataError(f"need >= 5 source-train and target rows; got {len(source)} and {len(target)}.")
    x = np.concatenate([source, target])
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    scaler = StandardScaler().fit(x)
    x = scaler.transform(x)
    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    best_c, best_loss = 1.0, np.inf
    for c in (0.01, 0.1, 1.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=1000).fit(x_fit, y_fit)
        p = np.clip(clf.predict_proba(x_held)[:, 1], 1e-7, 1 - 1e-7)
        loss = -np.mean(y_held * np.log(p) + (1 - y_held) * np.log(1 - p))
        if loss < best_loss - 1e-12:
            best_c, best_loss = c, loss
    clf = LogisticRegression(C=best_c, max_iter=1000).fit(x, y)
    p_target = np.clip(clf.predict_proba(scaler.transform(evaluate))[:, 1], 1e-6, 1 - 1e-6)
    return p_target / (1 - p_target) * len(source) / len(target)


def deep_embedded_validation(
    features_s_train: Any, features_s_val: Any, losses_s_val: Any, features_t: Any, *, seed: int = 0
) -> float:
    """Deep Embedded Validation (You et al., "Towards Accurate Model Selection in Deep Unsupervised
    Domain Adaptation", ICML 2019): an estimate of the *target* risk from source-validation losses.

    **Lower is better** (it estimates a loss). With density ratios ``w_i`` from
    :func:`importance_weights` on source-val and per-sample source-val losses ``l_i``::

        L_i = w_i * l_i,   eta = -Cov(L, w) / Var(w),   DEV = mean(L) + eta * mean(w) - eta

    The control variate ``eta * (mean(w) - 1)`` (``E[w] = 1``) cuts the variance of plain importance
    weighting. The paper fits an MLP domain classifier; a tuned logistic regression is used here.
    Assumes covariate shift: the target lies where source data exist, with the same labelling.

    Args:
        features_s_train: source training features, shape ``(N_s, D)``.
        features_s_val: source validation features, shape ``(N_v, D)``.
        losses_s_val: per-sample loss of the candidate on source-val (e.g. cross-entropy), ``(N_v,)``.
        features_t: target features, shape ``(N_t, D)``.
        seed: seed of the domain classifier's held-out split.

    Returns:
        The DEV risk, in the units of ``losses_s_val``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x_s, x_v, x_t = (rng.normal(size=(300, 2)) for _ in range(3))
        >>> round(deep_embedded_validation(x_s, x_v, np.full(300, 0.5), x_t), 6)  # constant loss: exact
        0.5
    """
    losses = as_numpy(losses_s_val, name="losses_s_val", ndim=1)
    weights = importance_weights(features_s_train, features_t, features_s_val, seed=seed)
    if len(losses) != len(weights):
        raise DataError(f"`losses_s_val` has {len(losses)} rows but `features_s_val` has {len(weights)}.")
    weighted = weights * losses
    if len(weights) < 2 or np.var(weights, ddof=1) < 1e-12:
        return float(weighted.mean())  # constant weights: the control variate is undefined (and useless)
    eta = -np.cov(weighted, weights, ddof=1)[0, 1] / np.var(weights, ddof=1)
    return float(weighted.mean() + eta * weights.mean() - eta)
