"""Transitive transfer: source → intermediate → target (the ``transitive:`` section of the adapt recipe).

When the source and target domains are far apart, adapting to a domain in between first can help (Tan et
al., "Transitive Transfer Learning", KDD 2015; Gadermayr et al. 2018 on gradual domain adaptation). The
adapt recipe then runs two stages with the configured method:

1. **source → intermediate**: labelled source, unlabelled ``intermediate`` data (its labels, if any, are
   dropped at load time, as for the target);
2. **→ target**: the model starts from the stage-1 weights (encoder, adapter and head; the method's own
   modules start fresh) and adapts to the target, from the labelled source plus, with
   ``pseudo_labels: true``, the intermediate examples the stage-1 model labels confidently.

The report shows the direct source → target run of the same method beside the transitive result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import numpy as np

from hftl.errors import ConfigError


@dataclass
class TransitiveConfig:
    """Options of transitive transfer (``transitive:``); used only when the config has ``intermediate:``."""

    pseudo_labels: bool = field(
        default=True,
        metadata={
            "help": "Stage 2 trains on the source plus intermediate examples pseudo-labelled by the stage-1 "
            "model (those above `threshold`); false = source labels only."
        },
    )
    threshold: float = field(
        default=0.9,
        metadata={"help": "Minimum stage-1 softmax confidence for an intermediate pseudo-label, in [0, 1)."},
    )
    balance: bool = field(
        default=True,
        metadata={
            "help": "Keep as many pseudo-labels per class as the rarest class has (the most confident ones), "
            "so a biased stage-1 model cannot tilt the stage-2 label distribution (Zou et al. 2018, CBST)."
        },
    )
    direct: bool = field(
        default=True,
        metadata={"help": "Also run the method directly source → target, for the comparison in the report."},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(
                f"`transitive.threshold` must be in [0, 1); got {self.threshold}. E.g. 0.9 keeps the "
                "intermediate examples the stage-1 model labels with at least 90 % confidence."
            )


def select_pseudo_labels(
    probs: np.ndarray, *, threshold: float, balance: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose top class probability reaches ``threshold``, and their predicted classes.

    Args:
        probs: ``(N, C)`` class probabilities.
        threshold: minimum top probability.
        balance: keep only the ``k`` most confident rows of every class, ``k`` = the count of the rarest
            predicted class among the confident rows (a class with no confident row gives ``k = 0``).

    Returns:
        ``(rows, labels)``: sorted row indices and the pseudo-label of each.
    """
    confidence, labels = probs.max(-1), probs.argmax(-1)
    keep = np.flatnonzero(confidence >= threshold)
    if balance and keep.size:
        per_class = [keep[labels[keep] == c] for c in range(probs.shape[1])]
        k = min(len(rows) for rows in per_class)
        keep = np.sort(
            np.concatenate([rows[np.argsort(-confidence[rows], kind="stable")[:k]] for rows in per_class])
        )
    return keep, labels[keep]


def pseudo_labelled(
    unlabelled: datasets.Dataset,
    probs: np.ndarray,
    *,
    like: datasets.Dataset,
    threshold: float,
    balance: bool,
) -> datasets.Dataset:
    """The confidently predicted rows of ``unlabelled`` with a ``label`` column, in the columns of ``like``.

    Args:
        unlabelled: intermediate training data (no ``label`` column).
        probs: ``(len(unlabelled), C)`` stage-1 probabilities, in row order.
        like: the labelled source split it will be concatenated with (same columns and ``ClassLabel``).
        threshold: see :class:`TransitiveConfig`.
        balance: see :class:`TransitiveConfig`.
    """
    if len(probs) != len(unlabelled):
        raise ValueError(f"{len(probs)} predictions for {len(unlabelled)} intermediate examples")
    rows, labels = select_pseudo_labels(probs, threshold=threshold, balance=balance)
    inputs = [c for c in like.column_names if c != "label"]
    missing = [c for c in inputs if c not in unlabelled.column_names]
    if missing:
        raise ConfigError(
            f"`intermediate` data lacks the column(s) {missing} that `source` has; give both the same input "
            "column (e.g. `input_column`)"
        )
    subset = unlabelled.select(rows).select_columns(inputs)
    subset = subset.add_column("label", labels.tolist(), feature=like.features["label"])
    return subset.cast(like.features)


def label_counts(dataset: datasets.Dataset, names: list[str]) -> dict[str, int]:
    """Examples per class name in a labelled ``dataset``."""
    counts = np.bincount(np.asarray(dataset["label"], dtype=int), minlength=len(names))
    return dict(zip(names, counts.tolist(), strict=True))
