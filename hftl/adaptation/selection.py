"""Label-free model selection for unsupervised domain adaptation.

Domain adaptation trains on labelled source and *unlabelled* target data, so the checkpoint, the
``trade_off`` or the method has to be chosen without target labels. Each criterion here scores one
candidate (a checkpoint, a hyper-parameter setting) from what the recipe can compute without target
labels; :func:`select` picks the best candidate by name from :data:`CRITERIA`.

=================== ====================================== ============== ==========================
name                function                               better         reads (candidate keys)
=================== ====================================== ============== ==========================
``source_val_acc``  :func:`source_validation_accuracy`     higher         probs_s_val, labels_s_val
``im``              :func:`information_maximization`       higher         probs_t
``snd``             :func:`soft_neighborhood_density`      higher         probs_t
``dev``             :func:`deep_embedded_validation`       lower          features_s_train,
                                                                          features_s_val,
                                                                          losses_s_val, features_t
=================== ====================================== ============== ==========================

Every function takes numpy arrays or torch tensors and returns a python ``float``.

Example::

    >>> candidates = [{"probs_t": p} for p in (probs_epoch1, probs_epoch2)]
    >>> best = select(candidates, "im")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from scipy.special import entr, log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from hftl.errors import ConfigError, DataError, HftlError

__all__ = [
    "CRITERIA",
    "Criterion",
    "deep_embedded_validation",
    "importance_weights",
    "information_maximization",
    "score",
    "select",
    "soft_neighborhood_density",
    "source_validation_accuracy",
]


def as_numpy(x: Any, *, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or nested list) as a float64 numpy array.

    Raises:
        DataError: if ``x`` does not have ``ndim`` dimensions or holds no rows.
    """
    if hasattr(x, "detach"):  # torch tensor, without importing torch here (bfloat16 has no numpy dtype)
        x = x.detach().cpu().float().numpy()
    array = np.asarray(x, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise DataError(f"`{name}` must be a {ndim}-D array; got shape {array.shape}.")
    if array.shape[0] == 0:
        raise DataError(f"`{name}` is empty; pass at least one row.")
    return array


def _check_probs(probs: np.ndarray, name: str) -> None:
    if np.any(probs < -1e-6) or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-2):
        raise DataError(
            f"`{name}` must hold probabilities (non-negative rows summing to 1), but its rows sum to "
            f"{probs.sum(axis=1).min():.3g}..{probs.sum(axis=1).max():.3g}; "
            "pass softmax(logits), not the logits."
        )


def source_validation_accuracy(probs_s_val: Any, labels_s_val: Any) -> float:
    """Accuracy on held-out *source* data: the baseline criterion, blind to the domain shift.

    Higher is better. ``acc = mean_i [argmax_c p_ic == y_i]``.

    Args:
        probs_s_val: class probabilities or logits (argmax is the same), shape ``(N, C)``.
        labels_s_val: integer labels, shape ``(N,)``.

    Returns:
        The accuracy in [0, 1].
    """
    probs = as_numpy(probs_s_val, name="probs_s_val", ndim=2)
    labels = as_numpy(labels_s_val, name="labels_s_val", ndim=1)
    if len(labels) != len(probs):
        raise DataError(f"`labels_s_val` has {len(labels)} rows but `probs_s_val` has {len(probs)}.")
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
    """
    probs = as_numpy(probs_t, name="probs_t", ndim=2)
    _check_probs(probs, "probs_t")
    probs = np.clip(probs, 0.0, None)
    probs = probs / probs.sum(axis=1, keepdims=True)  # undo half-precision rounding
    marginal_entropy = entr(probs.mean(axis=0)).sum()
    mean_entropy = entr(probs).sum(axis=1).mean()
    return float(marginal_entropy - mean_entropy)


def soft_neighborhood_density(
    features_t: Any, *, temperature: float = 0.05, max_samples: int = 2000, seed: int = 0
) -> float:
    """Soft Neighborhood Density (Saito et al., "Tune it the Right Way", ICCV 2021).

    Higher is better: a good adapted model puts each target sample in a dense neighbourhood of
    similar samples, so its soft neighbour distribution has high entropy. With ``f`` the L2-normalised
    rows of ``features_t``::

        S = f f^T,  S_ii = -inf,   P = softmax(S / temperature, axis=1),
        SND = mean_i H(P_i) = -mean_i sum_j P_ij log P_ij

    The paper scores the classifier's softmax outputs (what :data:`CRITERIA` ``"snd"`` reads:
    ``probs_t``); middle-layer features work too: the function scores whatever is passed. The
    diagonal is excluded exactly (-inf) where the reference code fills it with ``-1 / temperature``.
    Scaling the rows does not change the score (they are L2-normalised). Beware that a model mapping
    every target sample to one point reaches the maximum ``log(N - 1)``: pair SND with IM or inspect
    the prediction histogram.

    Args:
        features_t: target softmax outputs or features, shape ``(N, D)``, ``N >= 2``.
        temperature: softmax temperature of the similarities (paper: 0.05).
        max_samples: at most this many rows are scored (a fixed-seed random subset): the
            similarity matrix takes ``O(N^2)`` memory (2,000 rows: 32 MB).
        seed: seed of that subset.

    Returns:
        The score in nats, in ``[0, log(N - 1)]``.
    """
    features = as_numpy(features_t, name="features_t", ndim=2)
    if temperature <= 0:
        raise ConfigError(f"`temperature` must be > 0; got {temperature}.")
    if len(features) > max_samples:
        rows = np.random.default_rng(seed).choice(len(features), size=max_samples, replace=False)
        features = features[rows]
    if len(features) < 2:
        raise DataError(f"`features_t` needs at least 2 rows for neighbourhoods; got {len(features)}.")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    features = features / np.maximum(norms, 1e-12)
    similarity = features @ features.T / temperature
    np.fill_diagonal(similarity, -np.inf)
    log_p = log_softmax(similarity, axis=1)
    entropy = -np.sum(np.exp(log_p) * np.where(np.isfinite(log_p), log_p, 0.0), axis=1)
    return float(entropy.mean())


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
