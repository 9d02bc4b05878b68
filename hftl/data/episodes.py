"""N-way K-shot episodes over a labelled pool, for meta-learning (``hftl run meta``).

An *episode* (a few-shot task) draws ``n_way`` classes from the allowed classes of a pool, then
``k_shot + q_queries`` distinct examples of each: the first ``k_shot`` form the **support** set (what a
model adapts on), the other ``q_queries`` the **query** set (what it is scored on). Labels are
remapped to ``0..n_way-1`` in the episode's (random) class order, so no class keeps a fixed output.

Episode ``i`` depends only on ``(seed, i)``: the test episodes of two methods are the same episodes
(paired comparison), and episodes can be built in any order, in DataLoader workers.

Held-out evaluation comes in two forms (see :class:`EpisodeConfig`):

- **held-out classes**: meta-train episodes use some classes, meta-test episodes the others
  (``episodes.test_classes``);
- **held-out groups** (e.g. speakers): meta-train and meta-test pools are different data nodes that
  keep different groups with ``filters`` (``data`` vs ``test_data``), over the same classes.

Example:
    >>> sampler = EpisodeSampler([0, 0, 1, 1, 2, 2], n_way=2, k_shot=1, q_queries=1, seed=0)
    >>> ep = sampler.episode(0)
    >>> len(ep.support), len(ep.query), sorted(set(ep.support_labels))
    (2, 2, [0, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from hftl.data.labels import canonical_name
from hftl.errors import ConfigError, DataError


@dataclass
class EpisodeConfig:
    """How few-shot episodes are drawn (``episodes:`` of the meta recipe)."""

    n_way: int = field(default=5, metadata={"help": "Classes per episode (N)."})
    k_shot: int = field(default=1, metadata={"help": "Support examples per class (K)."})
    q_queries: int = field(
        default=15, metadata={"help": "Query examples per class (Q), scored after adapting."}
    )
    test_classes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Held-out class names: meta-test episodes use only these, meta-training only the others. "
            "null = every class in both (then `test_data` must hold other groups, e.g. other speakers)."
        },
    )
    train_splits: list[str] = field(
        default_factory=lambda: ["train"], metadata={"help": "Splits of `data` pooled for meta-training."}
    )
    test_splits: list[str] = field(
        default_factory=lambda: ["test"],
        metadata={"help": "Splits of `test_data` (else `data`) pooled for meta-test episodes."},
    )
    test_episodes: int = field(
        default=600, metadata={"help": "Meta-test episodes scored (mean ± 95 % CI over them)."}
    )
    num_workers: int = field(
        default=0,
        metadata={"help": "DataLoader workers that decode and collate episodes ahead of the model."},
    )

    def __post_init__(self) -> None:
        problems = [
            f"`episodes.{name}` is {getattr(self, name)!r}; allowed: a positive integer."
            for name in ("n_way", "k_shot", "q_queries", "test_episodes")
            if getattr(self, name) < 1
        ]
        if self.n_way < 2 and not problems:
            problems.append(f"`episodes.n_way` is {self.n_way}; allowed: 2 or more classes per episode.")
        if self.num_workers < 0:
            problems.append(f"`episodes.num_workers` is {self.num_workers}; allowed: 0 or more.")
        for name in ("train_splits", "test_splits"):
            if not getattr(self, name):
                problems.append(f"`episodes.{name}` is empty; list at least one split, e.g. [train].")
        if self.test_classes is not None and len(set(self.test_classes)) != len(self.test_classes):
            problems.append(f"`episodes.test_classes` {self.test_classes} repeats a class; list each once.")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class Episode:
    """One few-shot task: row indices into the pool and episode labels ``0..n_way-1``.

    Attributes:
        classes: the pool's class ids; episode label ``i`` is class ``classes[i]``.
        support: ``n_way * k_shot`` row indices, class-major (``k_shot`` rows of label 0, then 1, ...).
        support_labels: episode label of each support row.
        query: ``n_way * q_queries`` row indices, class-major, disjoint from ``support``.
        query_labels: episode label of each query row.
    """

    classes: tuple[int, ...]
    support: tuple[int, ...]
    support_labels: tuple[int, ...]
    query: tuple[int, ...]
    query_labels: tuple[int, ...]


class EpisodeSampler:
    """Draws N-way K-shot episodes (with Q queries per class) from a labelled pool.

    Args:
        labels: class id of every row of the pool.
        n_way: classes per episode.
        k_shot: support rows per class.
        q_queries: query rows per class.
        classes: the class ids episodes may use (None: every class present in ``labels``).
        seed: episode ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.

    Raises:
        DataError: if fewer than ``n_way`` allowed classes exist, or an allowed class has fewer than
            ``k_shot + q_queries`` rows.
    """

    def __init__(
        self,
        labels: Sequence[int],
        *,
        n_way: int,
        k_shot: int,
        q_queries: int,
        classes: Sequence[int] | None = None,
        seed: int = 0,
    ):
        labels = np.asarray(labels, dtype=np.int64)
        allowed = sorted(set(labels.tolist()) if classes is None else {int(c) for c in classes})
        self.n_way, self.k_shot, self.q_queries, self.seed = n_way, k_shot, q_queries, seed
        self.rows = {c: np.flatnonzero(labels == c) for c in allowed}
        need = k_shot + q_queries
        short = {c: len(r) for c, r in self.rows.items() if len(r) < need}
        if short:
            raise DataError(
                f"Episodes need k_shot + q_queries = {need} rows per class, but classes {short} (class id: "
                "rows) have fewer in the pool; lower `episodes.q_queries`/`episodes.k_shot` or add data."
            )
        if len(allowed) < n_way:
            raise DataError(
                f"`episodes.n_way` = {n_way} but the pool allows only {len(allowed)} classes {allowed}; "
                "lower `episodes.n_way` or allow more classes (`episodes.test_classes`)."
            )
        self.classes = allowed

    def episode(self, index: int) -> Episode:
        """Episode number ``index`` (the same for the same ``(seed, index)``)."""
        rng = np.random.default_rng([self.seed, index])
        chosen = rng.choice(self.classes, size=self.n_way, replace=False)
        support, query = [], []
        for c in chosen:
            rows = rng.choice(self.rows[int(c)], size=self.k_shot + self.q_queries, replace=False)
            support.append(rows[: self.k_shot])
            query.append(rows[self.k_shot :])
        return Episode(
            classes=tuple(int(c) for c in chosen),
            support=tuple(int(i) for i in np.concatenate(support)),
            support_labels=tuple(np.repeat(np.arange(self.n_way), self.k_shot).tolist()),
            query=tuple(int(i) for i in np.concatenate(query)),
            query_labels=tuple(np.repeat(np.arange(self.n_way), self.q_queries).tolist()),
        )


class EpisodeDataset(Dataset):
    """Episodes as collated batches, so a ``DataLoader(batch_size=None, num_workers=...)`` prefetches them.

    Args:
        pool: the rows (a ``datasets.Dataset`` or any sequence of example dicts).
        sampler: draws the episodes.
        collate: an encoder's collator (``encoder.collator(train=...)``).
        length: number of episodes.
        mode: ``split`` gives ``{"support": batch, "query": batch}``; ``joint`` gives ``{"task": batch}``,
            support and query rows in one batch (Reptile trains on the whole task).

    Each batch holds the collator's tensors and ``labels`` = the episode labels ``0..n_way-1``.
    """

    def __init__(
        self,
        pool: Any,
        sampler: EpisodeSampler,
        *,
        collate: Callable[[list[dict]], dict[str, torch.Tensor]],
        length: int,
        mode: Literal["split", "joint"] = "split",
    ):
        self.pool, self.sampler, self.collate, self.length, self.mode = pool, sampler, collate, length, mode

    def __len__(self) -> int:
        return self.length

    def _batch(self, rows: Sequence[int], labels: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = self.collate([self.pool[i] for i in rows])
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def __getitem__(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        ep = self.sampler.episode(index)
        if self.mode == "joint":
            return {"task": self._batch(ep.support + ep.query, ep.support_labels + ep.query_labels)}
        return {
            "support": self._batch(ep.support, ep.support_labels),
            "query": self._batch(ep.query, ep.query_labels),
        }


def class_ids(label_names: Sequence[str], names: Sequence[str], *, key: str) -> list[int]:
    """Class ids of ``names`` in ``label_names`` (compared as labels are: NFC, without outer spaces).

    Raises:
        ConfigError: naming ``key`` and the unknown names.
    """
    index = {canonical_name(n): i for i, n in enumerate(label_names)}
    unknown = [n for n in names if canonical_name(n) not in index]
    if unknown:
        raise ConfigError(
            f"`{key}` names unknown classes {unknown}; the data's classes are {list(label_names)}."
        )
    return [index[canonical_name(n)] for n in names]
