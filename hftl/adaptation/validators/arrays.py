"""Array checks shared by the validators: every validator takes numpy arrays or torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from hftl.errors import DataError


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


def as_probs(x: Any, *, name: str) -> np.ndarray:
    """``x`` as an ``(N, C)`` array of probabilities, renormalised (undoes half-precision rounding).

    Raises:
        DataError: if the rows are not probabilities (e.g. logits were passed).
    """
    probs = as_numpy(x, name=name, ndim=2)
    sums = probs.sum(axis=1)
    if np.any(probs < -1e-6) or not np.allclose(sums, 1.0, atol=1e-2):
        raise DataError(
            f"`{name}` must hold probabilities (non-negative rows summing to 1), but its rows sum to "
            f"{sums.min():.3g}..{sums.max():.3g}; pass softmax(logits), not the logits."
        )
    probs = np.clip(probs, 0.0, None)
    return probs / probs.sum(axis=1, keepdims=True)


def as_labels(x: Any, *, name: str, rows: int, rows_name: str) -> np.ndarray:
    """``x`` as a 1-D integer label array with ``rows`` entries (the rows of ``rows_name``).

    Raises:
        DataError: wrong shape, row count or non-integer labels.
    """
    labels = as_numpy(x, name=name, ndim=1)
    if len(labels) != rows:
        raise DataError(
            f"`{name}` has {len(labels)} rows but `{rows_name}` has {rows}; pass one label per row."
        )
    if not np.all(labels == np.round(labels)):
        raise DataError(
            f"`{name}` must hold integer class ids; got e.g. {labels[labels != np.round(labels)][0]}."
        )
    return labels.astype(np.int64)


def subset_rows(num_rows: int, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most ``max_rows`` of ``num_rows`` rows: all of them, or a random subset."""
    if num_rows <= max_rows:
        return np.arange(num_rows)
    return np.sort(rng.choice(num_rows, size=max_rows, replace=False))
