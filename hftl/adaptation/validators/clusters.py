"""Validators that read the geometry of features: SND and ClassAMI."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score

from hftl.adaptation.validators.arrays import as_labels, as_numpy, subset_rows
from hftl.errors import ConfigError, DataError


def soft_neighborhood_density(
    features_t: Any, *, temperature: float = 0.05, max_samples: int = 2000, seed: int = 0
) -> float:
    """Soft Neighborhood Density (Saito et al., "Tune it the Right Way", ICCV 2021).

    Higher is better: a good adapted model puts each target sample in a dense neighbourhood of
    similar samples, so its soft neighbour distribution has high entropy. With ``f`` the L2-normalised
    rows of ``features_t``::

        S = f f^T,  S_ii = -inf,   P = softmax(S / temperature, axis=1),
        SND = mean_i H(P_i) = -mean_i sum_j P_ij log P_ij

    The paper scores the classifier's softmax outputs (what :data:`~hftl.adaptation.selection.CRITERIA`
    ``"snd"`` reads: ``probs_t``); middle-layer features work too: the function scores whatever is
    passed. The diagonal is excluded exactly (-inf) where the reference code fills it with
    ``-1 / temperature``. Scaling the rows does not change the score (they are L2-normalised). Beware
    that a model mapping every target sample to one point reaches the maximum ``log(N - 1)``: pair SND
    with IM or inspect the prediction histogram.

    Args:
        features_t: target softmax outputs or features, shape ``(N, D)``, ``N >= 2``.
        temperature: softmax temperature of the similarities (paper: 0.05).
        max_samples: at most this many rows are scored (a fixed-seed random subset): the
            similarity matrix takes ``O(N^2)`` memory (2,000 rows: 32 MB).
        seed: seed of that subset.

    Returns:
        The score in nats, in ``[0, log(N - 1)]``.

    Example:
        >>> round(soft_neighborhood_density(np.ones((5, 3))), 4)  # all alike: uniform over 4 others, log 4
        1.3863
    """
    features = as_numpy(features_t, name="features_t", ndim=2)
    if temperature <= 0:
        raise ConfigError(f"`temperature` must be > 0; got {temperature}.")
    features = features[subset_rows(len(features), max_samples, np.random.default_rng(seed))]
    if len(features) < 2:
        raise DataError(f"`features_t` needs at least 2 rows for neighbourhoods; got {len(features)}.")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    features = features / np.maximum(norms, 1e-12)
    similarity = features @ features.T / temperature
    np.fill_diagonal(similarity, -np.inf)
    log_p = log_softmax(similarity, axis=1)
    entropy = -np.sum(np.exp(log_p) * np.where(np.isfinite(log_p), log_p, 0.0), axis=1)
    return float(entropy.mean())


def class_centroids(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean feature of each class, shape ``(num_classes, D)``; a class without rows gets the zero
    vector (as in ABAS, Robbiano et al. 2021, and pytorch-adapt's ``ClassClusterValidator``)."""
    centroids = np.zeros((num_classes, features.shape[1]))
    for c in np.unique(labels):
        centroids[c] = features[labels == c].mean(axis=0)
    return centroids


def class_ami(
    features_s_val: Any, labels_s_val: Any, features_t: Any, probs_t: Any, *, max_samples: int = 2000,
    seed: int = 0,
) -> float:  # fmt: skip
    """ClassAMI validator (Musgrave, Belongie & Lim, "Three New Validators and a Large-Scale Benchmark
    Ranking for Unsupervised Domain Adaptation", 2022): do the features cluster the way the classifier
    labels them?

    Higher is better. Source-validation features with their true labels and target features with the
    classifier's predicted labels are stacked; k-means with ``k = C`` clusters starts at the class
    centroids of those labels; the score is the adjusted mutual information between the labels and
    the k-means clusters::

        X = [f_s; f_t],  y = [y_s; argmax_c p_t],  mu_c = mean{x in X : y = c}
        clusters = KMeans(k=C, init=mu).fit(X),   ClassAMI = AMI(y, clusters)

    AMI is 1 when k-means keeps every class as its own cluster (the classes are compact, separated
    clusters of the features, and the target predictions follow them), about 0 when the labels are
    unrelated to the clusters. This is the paper's best variant ("Source + Target Features",
    ``ClassAMICentroidInit``, features not L2-normalised), except that the source part is the held-out
    validation split (Musgrave's code stacks a *training* split): held-out features show whether the
    classes separate on data the model was not fitted to, and every hftl recipe that scores
    candidates already computes them. Pooling source with target also gives every class a centroid
    when the target predictions miss some classes.

    Args:
        features_s_val: source validation features, shape ``(N_s, D)``.
        labels_s_val: their integer labels, shape ``(N_s,)``.
        features_t: target features, shape ``(N_t, D)``.
        probs_t: target class probabilities or logits (only the argmax is read), shape ``(N_t, C)``.
        max_samples: at most this many rows of each domain are clustered (a fixed-seed subset).
        seed: seed of the subsets and of k-means.

    Returns:
        The AMI, at most 1 (0 in expectation for random labels; slightly negative values occur).

    Raises:
        DataError: mismatched shapes, or fewer rows than classes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> centres = 10 * np.eye(3)  # three well-separated classes in 3-D
        >>> y = np.repeat([0, 1, 2], 20)
        >>> f_s, f_t = centres[y] + rng.normal(size=(60, 3)), centres[y] + rng.normal(size=(60, 3))
        >>> right, shuffled = np.eye(3)[y], np.eye(3)[rng.permutation(y)]
        >>> class_ami(f_s, y, f_t, right)
        1.0
        >>> class_ami(f_s, y, f_t, shuffled) < 0.7
        True
    """
    source = as_numpy(features_s_val, name="features_s_val", ndim=2)
    target = as_numpy(features_t, name="features_t", ndim=2)
    probs = as_numpy(probs_t, name="probs_t", ndim=2)
    labels_s = as_labels(labels_s_val, name="labels_s_val", rows=len(source), rows_name="features_s_val")
    if source.shape[1] != target.shape[1]:
        raise DataError(
            f"feature widths differ: features_s_val {source.shape[1]}, features_t {target.shape[1]}; "
            "pass features from the same layer."
        )
    if len(probs) != len(target):
        raise DataError(f"`probs_t` has {len(probs)} rows but `features_t` has {len(target)}.")
    num_classes = probs.shape[1]
    if labels_s.min() < 0 or labels_s.max() >= num_classes:
        raise DataError(f"`labels_s_val` holds ids outside 0..{num_classes - 1} (the columns of `probs_t`).")
    rng = np.random.default_rng(seed)
    rows_s, rows_t = subset_rows(len(source), max_samples, rng), subset_rows(len(target), max_samples, rng)
    features = np.concatenate([source[rows_s], target[rows_t]])
    labels = np.concatenate([labels_s[rows_s], probs[rows_t].argmax(axis=1)])
    if len(features) < num_classes:
        raise DataError(
            f"ClassAMI needs at least as many rows as classes ({num_classes}); got {len(features)}."
        )
    init = class_centroids(features, labels, num_classes)
    clusters = KMeans(n_clusters=num_classes, init=init, n_init=1, random_state=seed).fit_predict(features)
    return float(adjusted_mutual_info_score(labels, clusters))
