"""Source and target batches side by side, the shorter stream cycling (domain adaptation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from accelerate.data_loader import skip_first_batches


def _set_epoch(loader: Any, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):  # accelerate's DataLoaderShard forwards it to the sampler
        loader.set_epoch(epoch)
    else:
        loader.sampler.set_epoch(epoch)


class PairedLoader:
    """Yields ``(source_batch, target_batch)``; an epoch is as long as the longer loader.

    The shorter loader restarts (with a new shuffle) when it runs out. Every position is a
    function of ``(epoch, index)``: cycle ``k`` of epoch ``e`` shuffles with sampler epoch
    ``e * 1000 + k``, so :meth:`skip_first_batches` resumes exactly where a killed run stopped.

    Args:
        source: loader of labelled source batches.
        target: loader of target batches (unlabelled for adaptation methods).
    """

    def __init__(self, source: Any, target: Any):
        self.source, self.target = source, target
        self.epoch, self._skip = 0, 0

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_first_batches(self, num_batches: int) -> PairedLoader:
        """A view of this loader whose next iteration starts at pair ``num_batches``."""
        view = PairedLoader(self.source, self.target)
        view.epoch, view._skip = self.epoch, num_batches
        return view

    def _stream(self, loader: Any, start: int) -> Iterator[Any]:
        cycle, offset = divmod(start, len(loader))
        while True:
            _set_epoch(loader, self.epoch * 1000 + cycle)
            yield from skip_first_batches(loader, offset) if offset else loader
            cycle, offset = cycle + 1, 0

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        source, target = self._stream(self.source, self._skip), self._stream(self.target, self._skip)
        for _ in range(self._skip, len(self)):
            yield next(source), next(target)
