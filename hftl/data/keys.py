"""Example keys: each training example carries ``(index, epoch)``, the seed of its random choices.

Collators that draw random numbers per example (audio crops and augmentation, masked-LM masks) seed each
example's generator from its key instead of from a counter, so the draws are a function of ``(seed,
index, epoch)`` only: the same with any batch size, number of DataLoader workers or processes, and after an
exact resume. The key travels in the example dict under :data:`EXAMPLE_KEY`.

* In-memory data: :func:`with_example_keys` pairs a :class:`KeyedDataset` with an
  :class:`EpochKeySampler`, which hands the dataset ``(index, epoch)`` instead of ``index``.
* Streamed data: :class:`KeyedStream` numbers the rows of each epoch's stream.

Example:
    >>> sampler = EpochSampler(len(ds), seed=0, shuffle=True)  # doctest: +SKIP
    >>> ds, sampler = with_example_keys(ds, sampler)  # doctest: +SKIP
    >>> loader = DataLoader(ds, sampler=sampler, batch_size=8, collate_fn=collator)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import Dataset, IterableDataset, Sampler

# Example field added by KeyedDataset / KeyedStream: (dataset index, sampler epoch).
EXAMPLE_KEY = "_example_key"


class EpochKeySampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` for each index of an epoch-seeded sampler (see :class:`KeyedDataset`).

    The epoch travels with the index, so DataLoader workers (which hold stale copies of the collator
    and dataset) still see the sampler's current epoch.

    Args:
        sampler: a sampler with ``epoch`` and ``set_epoch`` (:class:`hftl.data.samplers.EpochSampler`).
    """

    def __init__(self, sampler: Sampler[int]):
        self.sampler = sampler

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((i, epoch) for i in self.sampler)


class KeyedDataset(Dataset):
    """Reads ``(index, epoch)`` keys from :class:`EpochKeySampler` and adds them to each example.

    The collator seeds each example's random choices from the key (``EXAMPLE_KEY`` field), which makes
    augmentation a function of ``(seed, index, epoch)``: exact under resume and any worker count.

    Example:
        >>> sampler = EpochKeySampler(EpochSampler(len(ds), seed=0))  # doctest: +SKIP
        >>> loader = DataLoader(KeyedDataset(ds), sampler=sampler, batch_size=8, collate_fn=collator)  # doctest: +SKIP
    """

    def __init__(self, dataset: Sequence[dict]):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        return {**self.dataset[int(key[0])], EXAMPLE_KEY: (int(key[0]), int(key[1]))}

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[dict]:
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None:
            return [self[k] for k in keys]
        rows = getitems([int(k[0]) for k in keys])  # one Arrow read for the batch
        return [{**row, EXAMPLE_KEY: (int(k[0]), int(k[1]))} for row, k in zip(rows, keys, strict=True)]


def with_example_keys(dataset: Sequence[dict], sampler: Sampler[int]) -> tuple[KeyedDataset, EpochKeySampler]:
    """The ``(dataset, sampler)`` pair that gives each example its ``(index, epoch)`` key.

    Wire it where the training loader is built, when the collator asks for keys
    (``getattr(collate_fn, "uses_example_keys", False)``)::

        sampler = EpochSampler(len(dataset), seed=seed, shuffle=True)
        dataset, sampler = with_example_keys(dataset, sampler)
    """
    return KeyedDataset(dataset), EpochKeySampler(sampler)


class KeyedStream(IterableDataset):
    """Adds each row's ``(position in the epoch's stream, epoch)`` key (:data:`EXAMPLE_KEY`).

    The streamed counterpart of :class:`KeyedDataset`: augmentation seeded from the key is then the same
    in a resumed and an uninterrupted run (which re-reads the skipped rows in order). Positions count
    rows per DataLoader worker, so keys are reproducible for a fixed ``num_workers``.

    Args:
        stream: the train stream (``datasets.IterableDataset`` with ``set_epoch``).
    """

    def __init__(self, stream: IterableDataset):
        self.stream, self.epoch = stream, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        for position, row in enumerate(self.stream):
            yield {**row, EXAMPLE_KEY: (position, epoch)}
