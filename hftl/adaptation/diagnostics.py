"""Diagnostics of a domain shift: how far apart are source and target features, and what do they look like.

* :func:`proxy_a_distance` - one number, 0 (indistinguishable) to 2 (perfectly separable); compare
  it before and after adaptation on the same features layer.
* :func:`plot_domains` - a t-SNE or PCA scatter of source vs target features, written as a PNG
  (needs ``pip install matplotlib``, or ``pip install 'hftl[plots]'``).

Example::

    >>> pad_before = proxy_a_distance(feats_s_source_only, feats_t_source_only)
    >>> pad_after = proxy_a_distance(feats_s_dann, feats_t_dann)  # lower: better aligned
    >>> plot_domains(feats_s_dann, feats_t_dann, "runs/dann/tsne.png", labels_s=y_s)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from hftl.adaptation.selection import as_numpy
from hftl.errors import ConfigError, DataError, HftlError

__all__ = ["plot_domains", "proxy_a_distance"]

_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
_METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA"}


def _paired(features_s: Any, features_t: Any, *, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
    source = as_numpy(features_s, name="features_s", ndim=2)
    target = as_numpy(features_t, name="features_t", ndim=2)
    if source.shape[1] != target.shape[1]:
        raise DataError(
            f"`features_s` has {source.shape[1]} columns but `features_t` has {target.shape[1]}; "
            "pass features from the same layer for both domains."
        )
    if min(len(source), len(target)) < min_rows:
        raise DataError(
            f"need at least {min_rows} rows per domain; got {len(source)} source and {len(target)} target."
        )
    return source, target


def _subsample(rng: np.random.Generator, array: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.sort(rng.choice(len(array), size=n, replace=False)) if len(array) > n else np.arange(len(array))
    return array[rows], rows


def proxy_a_distance(features_s: Any, features_t: Any, *, seed: int = 0, max_samples: int = 2000) -> float:
    """Proxy A-distance between two feature sets (Ben-David et al., NeurIPS 2007; Ganin et al., JMLR 2016).

    Lower means the domains are harder to tell apart (better aligned). Both domains are subsampled to
    the same size ``n = min(n_s, n_t, max_samples)`` and split in half (stratified); on the first half
    the features are standardised and a logistic regression learns to separate the domains, its ``C``
    picked from ``{0.001, ..., 10}`` by error on a quarter held out of that half; its error ``eps`` on
    the second half gives::

        PAD = 2 * (1 - 2 * eps),   clipped to [0, 2]

    0: a linear classifier does no better than chance; 2: it separates the domains perfectly.

    Args:
        features_s: source features, shape ``(N_s, D)``.
        features_t: target features, shape ``(N_t, D)``.
        seed: seed of the subsampling and the splits; the result is deterministic given it.
        max_samples: at most this many rows per domain.

    Returns:
        The proxy A-distance in ``[0, 2]``.

    Raises:
        DataError: fewer than 8 rows in a domain, or different feature widths.
    """
    source, target = _paired(features_s, features_t, min_rows=8)
    rng = np.random.default_rng(seed)
    n = min(len(source), len(target), max_samples)
    source, _ = _subsample(rng, source, n)
    target, _ = _subsample(rng, target, n)
    x = np.concatenate([source, target])
    y = np.concatenate([np.zeros(n, dtype=int), np.ones(n, dtype=int)])
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)

    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=0.25, random_state=seed, stratify=y_train
    )
    errors = [
        np.mean(LogisticRegression(C=c, max_iter=1000).fit(x_fit, y_fit).predict(x_val) != y_val)
        for c in _C_GRID
    ]
    best_c = _C_GRID[int(np.argmin(errors))]  # ties: the strongest regularisation
    clf = LogisticRegression(C=best_c, max_iter=1000).fit(x_train, y_train)
    eps = float(np.mean(clf.predict(x_test) != y_test))
    return float(np.clip(2.0 * (1.0 - 2.0 * eps), 0.0, 2.0))


def _embed(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        coords = PCA(n_components=min(2, x.shape[1], len(x)), random_state=seed).fit_transform(x)
    else:
        from sklearn.manifold import TSNE

        coords = TSNE(
            n_components=2, init="pca", random_state=seed, perplexity=float(min(30, len(x) - 1))
        ).fit_transform(x)
    if coords.shape[1] < 2:  # 1-D features: plot them on a line
        coords = np.column_stack([coords, np.zeros(len(coords))])
    return coords


def _draw(ax: Any, domains: list[tuple], classes: list) -> None:
    """Scatter each domain in its colour, one marker per class when it has labels."""
    for name, color, xy, lab, rows in domains:
        if lab is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=8, c=color, alpha=0.6, label=name)
            continue
        lab = lab[rows]
        for k, cls in enumerate(classes):
            mask = lab == cls
            if mask.any():
                label = f"{name} / {cls}" if len(classes) <= len(_MARKERS) else None
                marker = _MARKERS[k % len(_MARKERS)]
                ax.scatter(xy[mask, 0], xy[mask, 1], s=10, c=color, marker=marker, alpha=0.6, label=label)
        if len(classes) > len(_MARKERS):  # too many classes for a legend: one entry for the domain
            ax.scatter([], [], s=10, c=color, label=name)
    ax.legend(loc="best", fontsize=7, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_domains(
    features_s: Any,
    features_t: Any,
    path: str | os.PathLike,
    *,
    labels_s: Any | None = None,
    labels_t: Any | None = None,
    method: Literal["tsne", "pca"] = "tsne",
    title: str | None = None,
    max_samples: int = 1000,
    seed: int = 0,
) -> Path:
    """Scatter source vs target features in 2-D (t-SNE or PCA) and write the figure as a PNG.

    Source points are blue, target points orange; when labels are given each class gets its own
    marker (classes beyond 10 reuse markers). Both domains are embedded together, so their relative
    position is meaningful: well-aligned domains overlap, with classes in separate clusters.

    Args:
        features_s: source features, shape ``(N_s, D)``.
        features_t: target features, shape ``(N_t, D)``.
        path: the PNG to write (parent folders are created); written atomically.
        labels_s: optional source class labels, shape ``(N_s,)`` (ints or strings).
        labels_t: optional target class labels (e.g. ground truth, or predictions), ``(N_t,)``.
        method: ``"tsne"`` (sklearn TSNE, ``init="pca"``, ``perplexity=min(30, n - 1)``) or ``"pca"``.
        title: figure title; default names the method and the sample counts.
        max_samples: at most this many points per domain (fixed-seed random subset): t-SNE is slow.
        seed: seed of the subset and of the embedding.

    Returns:
        The path written.

    Raises:
        HftlError: matplotlib is not installed.
        ConfigError: unknown ``method``.
        DataError: mismatched shapes or label counts.
    """
    if method not in ("tsne", "pca"):
        raise ConfigError(f"`method` must be 'tsne' or 'pca'; got {method!r}.")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise HftlError(
            "plot_domains needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'hftl[plots]')."
        ) from err
    source, target = _paired(features_s, features_t, min_rows=2)
    labels = {"labels_s": labels_s, "labels_t": labels_t}
    for name, rows in (("labels_s", len(source)), ("labels_t", len(target))):
        if labels[name] is not None:
            labels[name] = np.asarray(labels[name].cpu() if hasattr(labels[name], "cpu") else labels[name])
            if labels[name].shape != (rows,):
                raise DataError(f"`{name}` has shape {labels[name].shape}; expected ({rows},), one per row.")

    rng = np.random.default_rng(seed)
    source, rows_s = _subsample(rng, source, max_samples)
    target, rows_t = _subsample(rng, target, max_samples)
    coords = _embed(np.concatenate([source, target]), method, seed)
    domains = [
        ("source", "tab:blue", coords[: len(source)], labels["labels_s"], rows_s),
        ("target", "tab:orange", coords[len(source) :], labels["labels_t"], rows_t),
    ]
    present = [lab[rows] for _, _, _, lab, rows in domains if lab is not None]
    classes = list(np.unique(np.concatenate(present))) if present else []

    fig = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw(ax, domains, classes)
    ax.set_title(title or f"{_METHOD_NAMES[method]} of features: {len(source)} source, {len(target)} target")
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
