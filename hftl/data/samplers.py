"""Epoch-seeded samplers, so a resumed run sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffles with ``seed + epoch``; optionally groups examples of similar length.

    Length grouping (as in transformers' ``LengthGroupedSampler``): shuffle, cut into mega-batches
    of ``50 × batch_size``, sort each by length (longest first), so a batch pads to a similar
    length and little compute goes to padding. The order depends only on ``(seed, epoch)``:
    call :meth:`set_epoch` before each epoch.

    Args:
        num_samples: size of the dataset.
        seed: base seed.
        shuffle: ``False`` keeps dataset order (evaluation).
        lengths: per-example lengths; enables grouping when given with ``batch_size``.
        batch_size: batch size used to size mega-batches.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
    ):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.lengths, self.batch_size = lengths, batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=gen).tolist()
        if self.lengths is None or not self.batch_size:
            return iter(order)
        mega = 50 * self.batch_size
        groups = [
            sorted(order[i : i + mega], key=lambda j: -self.lengths[j]) for i in range(0, len(order), mega)
        ]
        return iter([j for group in groups for j in group])
