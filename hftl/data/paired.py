"""Source and target batches side by side, the shorter stream cycling (domain adaptation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from accelerate.data_loader import skip_first_batches

from hftl.data.streaming import length_or_none
from hftl.errors import DataError


def _set_epoch(loader: Any, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):  # accelerate's DataLoaderShard forwards it to the sampler
        loader.set_epoch(epoch)
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    else:  # a plain DataLoader over a stream (unprepared): the stream reshuffles itself
        loader.dataset.set_epoch(epoch)


def _sized(loader: Any) -> bool:
    return length_or_none(loader) is not None  # None: a loader over streamed data


def cycle_batches(loader: Any, *, epoch: int, start: int = 0) -> Iterator[Any]:
    """``loader``'s batches from position ``start`` on, restarting (with a new shuffle) when it runs out.

    Cycle ``k`` of ``epoch`` sets sampler epoch ``epoch * 1000 + k``, so every position is a function of
    ``(epoch, position)`` and a resumed run continues exactly where a killed one stopped: a sized loader
    skips the indices of the first ``start`` batches (nothing is collated twice), a stream (no length)
    reads them and drops them. The loaders of :class:`PairedLoader` and of the multi-task recipe cycle so.

    Args:
        loader: an accelerate-prepared or plain DataLoader whose sampler (or stream) has ``set_epoch``.
        epoch: the training epoch of the loader that cycles this one.
        start: batches to skip, counted over the cycles (e.g. 7 with 5 batches per cycle: cycle 1, batch 2).

    Raises:
        DataError: a stream yielded no batch in a whole cycle (it would cycle forever).
    """
    if _sized(loader):
        cycle, offset = divmod(start, len(loader))
        while True:
            _set_epoch(loader, epoch * 1000 + cycle)
            yield from skip_first_batches(loader, offset) if offset else loader
            cycle, offset = cycle + 1, 0
    cycle, position = 0, 0
    while True:
        _set_epoch(loader, epoch * 1000 + cycle)
        before = position
        for batch in loader:  # a stream's length is unknown: skipped batches are read and dropped
            position += 1
            if position > start:
                yield batch
        if position == before:
            raise DataError("A streamed training split yielded no rows; check its files and filters.")
        cycle += 1


class PairedLoader:
    """Yields ``(source_batch, target_batch)``; an epoch is as long as the longer loader.

    The shorter loader restarts (with a new shuffle) when it runs out (:func:`cycle_batches`): every
    position is a function of ``(epoch, index)``, so :meth:`skip_first_batches` resumes exactly where a
    killed run stopped.

    With streamed data (:mod:`hftl.data.streaming`, loaders without a length) an epoch is one pass over
    the source (the target cycles), and resuming re-reads the skipped batches of a stream.

    Args:
        source: loader of labelled source batches.
        target: loader of target batches (unlabelled for adaptation methods).
    """

    def __init__(self, source: Any, target: Any):
        self.source, self.target = source, target
        self.epoch, self._skip = 0, 0

    def __len__(self) -> int:
        """Batches per epoch; a TypeError (no length) when the source is streamed."""
        if not _sized(self.source):
            raise TypeError("a PairedLoader over a streamed source has no length")
        return max(len(self.source), len(self.target)) if _sized(self.target) else len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first_batches(self, num_batches: int) -> PairedLoader:
        """A view of this loader whose next iteration starts at pair ``num_batches``."""
        view = PairedLoader(self.source, self.target)
        view.epoch, view._skip = self.epoch, num_batches
        return view

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        target = cycle_batches(self.target, epoch=self.epoch, start=self._skip)
        if _sized(self.source):
            source = cycle_batches(self.source, epoch=self.epoch, start=self._skip)
            for _ in range(self._skip, len(self)):
                yield next(source), next(target)
            return
        _set_epoch(self.source, self.epoch * 1000)  # one pass over the source stream: cycle 0
        for position, batch in enumerate(self.source):
            if position >= self._skip:
                yield batch, next(target)
