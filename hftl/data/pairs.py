"""Few-shot training sets for metric learning: a seeded K-per-class pick, then pairs or triplets from it.

SetFit (Tunstall et al. 2022, arXiv:2209.11055) turns a handful of labelled examples into many
contrastive pairs: in each of ``num_iterations`` rounds, every example is paired once with another example
of its class (target 1) and once with an example of another class (target 0). :func:`build_pairs` does
exactly that (balanced 50/50, never an example with itself); :func:`build_triplets` draws one
(anchor, positive, negative) triplet per example and round; :func:`build_repeats` shuffles the examples
``num_iterations`` times for losses that mine their own triplets. :class:`TupleDataset` and
:class:`TupleCollator` turn the index rows into one encoder batch.

Example:
    >>> labels = [0, 0, 1, 1]
    >>> pairs = build_pairs(labels, num_iterations=1, seed=0)  # (8, 3): index a, index b, target
    >>> int(pairs[:, 2].sum())  # 4 same-class pairs, 4 different-class pairs
    4
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from hftl.errors import DataError

TupleKind = Literal["pairs", "triplets", "labeled"]


def _by_class(labels: Sequence[int]) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def sample_per_class(
    labels: Sequence[int], shots: int, *, seed: int, num_classes: int | None = None, source: str = "train"
) -> np.ndarray:
    """Picks ``shots`` examples of every class at random (seeded, without replacement).

    Args:
        labels: class id of every example of the pool.
        shots: examples per class.
        seed: seed of the pick; the same seed and labels give the same indices.
        num_classes: classes that must all be present (ids ``0..num_classes-1``); None: those found.
        source: the pool's name, for error messages.

    Returns:
        Sorted indices into ``labels``, ``shots`` per class.

    Raises:
        DataError: a class has fewer than ``shots`` examples (or none), or ``shots`` < 1.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise DataError(f"`fewshot.shots_per_class` is {shots!r}; allowed: a positive integer.")
    groups = _by_class(labels)
    classes = range(num_classes) if num_classes is not None else sorted(groups)
    short = {c: len(groups.get(c, ())) for c in classes if len(groups.get(c, ())) < shots}
    if short:
        raise DataError(
            f"`fewshot.shots_per_class` is {shots}, but the {source} split has fewer examples of class "
            f"id(s) {short} (class: count). Lower `fewshot.shots_per_class` or add examples."
        )
    rng = np.random.default_rng(seed)
    picked = [rng.choice(groups[c], size=shots, replace=False) for c in classes]
    return np.sort(np.concatenate(picked))


def _check_pool(groups: dict[int, np.ndarray], num_iterations: int) -> None:
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
        raise DataError(f"`fewshot.num_iterations` is {num_iterations!r}; allowed: a positive integer.")
    if len(groups) < 2:
        raise DataError(
            f"Pairs and triplets need at least 2 classes; the few-shot set has {len(groups)} "
            f"({sorted(groups)}). Give labelled examples of 2 or more classes."
        )
    small = {c: len(idx) for c, idx in groups.items() if len(idx) < 2}
    if small:
        raise DataError(
            f"Every class needs at least 2 examples to form a positive pair without pairing an example "
            f"with itself; class id(s) {small} (class: count). Set `fewshot.shots_per_class` >= 2."
        )


def _draw(rng: np.random.Generator, labels: np.ndarray, groups: dict[int, np.ndarray], i: int, same: bool):
    """A random partner of example ``i``: another example of its class, or one of another class."""
    if same:
        pool = groups[int(labels[i])]
        pool = pool[pool != i]
    else:
        pool = np.flatnonzero(labels != labels[i])
    return int(rng.choice(pool))


def build_pairs(labels: Sequence[int], *, num_iterations: int = 20, seed: int = 0) -> np.ndarray:
    """SetFit's pair generation: per round, each example gets one positive and one negative partner.

    Args:
        labels: class id of each few-shot example (at least 2 classes, 2 examples each).
        num_iterations: rounds; the result has ``2 × num_iterations × len(labels)`` pairs.
        seed: seed of the partners and of the final shuffle.

    Returns:
        ``(M, 3)`` int64 rows ``(index a, index b, target)``, target 1 for same class, 0 otherwise;
        shuffled, exactly half positive, ``a != b`` in every row.

    Raises:
        DataError: fewer than 2 classes, a class with fewer than 2 examples, or ``num_iterations`` < 1.
    """
    groups, labels = _by_class(labels), np.asarray(labels)
    _check_pool(groups, num_iterations)
    rng = np.random.default_rng(seed)
    rows = [
        (i, _draw(rng, labels, groups, i, same), int(same))
        for _ in range(num_iterations)
        for i in range(len(labels))
        for same in (True, False)
    ]
    return rng.permutation(np.asarray(rows, dtype=np.int64))


def build_triplets(labels: Sequence[int], *, num_iterations: int = 20, seed: int = 0) -> np.ndarray:
    """Per round, each example anchors one triplet with a random positive and a random negative.

    Args:
        labels: class id of each few-shot example (at least 2 classes, 2 examples each).
        num_iterations: rounds; the result has ``num_iterations × len(labels)`` triplets.
        seed: seed of the draws and of the final shuffle.

    Returns:
        ``(M, 3)`` int64 rows ``(anchor, positive, negative)``: positive of the anchor's class and not the
        anchor, negative of another class.

    Raises:
        DataError: as :func:`build_pairs`.
    """
    groups, labels = _by_class(labels), np.asarray(labels)
    _check_pool(groups, num_iterations)
    rng = np.random.default_rng(seed)
    rows = [
        (i, _draw(rng, labels, groups, i, True), _draw(rng, labels, groups, i, False))
        for _ in range(num_iterations)
        for i in range(len(labels))
    ]
    return rng.permutation(np.asarray(rows, dtype=np.int64))


def build_repeats(labels: Sequence[int], *, num_iterations: int = 20, seed: int = 0) -> np.ndarray:
    """``num_iterations`` shuffled passes over the examples, as ``(M, 1)`` index rows, for losses that mine
    their own triplets inside a batch (:class:`hftl.losses.BatchHardTripletLoss`).

    Raises:
        DataError: as :func:`build_pairs`.
    """
    groups = _by_class(labels)
    _check_pool(groups, num_iterations)
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(len(labels)) for _ in range(num_iterations)])[:, None]


BUILDERS: dict[str, Callable[..., np.ndarray]] = {
    "pairs": build_pairs,
    "triplets": build_triplets,
    "labeled": build_repeats,
}


class TupleDataset(Dataset):
    """Rows of example indices (pairs, triplets or single examples) over a few-shot set.

    Args:
        examples: the few-shot examples (a ``datasets.Dataset`` split or a list of dicts).
        rows: ``(M, k)`` example indices; for ``pairs`` a third column holds the 0/1 target.
        kind: ``pairs`` (``rows`` is ``(M, 3)``: a, b, target), ``triplets`` (anchor, positive,
            negative) or ``labeled`` (``(M, 1)``).
    """

    def __init__(self, examples: Any, rows: np.ndarray, kind: TupleKind):
        self.examples, self.kind = examples, kind
        self.indices = rows[:, :2] if kind == "pairs" else rows
        self.targets = rows[:, 2] if kind == "pairs" else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"examples": [self.examples[int(j)] for j in self.indices[i]]}
        if self.targets is not None:
            item["target"] = int(self.targets[i])
        return item


class TupleCollator:
    """Collates B rows of k examples into one encoder batch of ``k × B`` examples, position-major.

    The flat order is every row's first example, then every row's second, ...: ``pooled.chunk(k)`` of the
    encoder output gives back (anchors, positives, negatives) or (u, v), one encoder pass for all.

    Args:
        collate_fn: the encoder's collator (``encoder.collator(train=True)``).

    Returns (on call):
        ``{"inputs": collate_fn(flat examples)}`` (with the examples' ``labels``, shape ``(k·B,)``) plus
        ``target`` ``(B,)`` float for pairs.
    """

    def __init__(self, collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]]):
        self.collate_fn = collate_fn

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        k = len(items[0]["examples"])
        flat = [item["examples"][j] for j in range(k) for item in items]
        batch: dict[str, Any] = {"inputs": self.collate_fn(flat)}
        if "target" in items[0]:
            batch["target"] = torch.tensor([item["target"] for item in items], dtype=torch.float32)
        return batch
