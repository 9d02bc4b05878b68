"""Small builders shared by recipes: accelerator, loaders, LR schedule, run summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration
from torch.utils.data import DataLoader

from hftl.data.samplers import EpochSampler
from hftl.training.config import TrainConfig


def build_accelerator(config: TrainConfig, output_dir: str | Path) -> Accelerator:
    """An Accelerator for ``config`` (precision, accumulation, trackers) logging under ``output_dir``.

    accelerate keeps its state in a process-wide singleton that refuses a second, different precision;
    a recipe owns its run, so the previous run's state (e.g. an earlier run in the same notebook or test
    session) is dropped first. The distributed process group (``PartialState``) is kept.
    """
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=config.cpu,
        log_with=config.report_to or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        # Encoders carry modules a recipe may not use (BERT's pooler under mean pooling, a discriminator
        # outside its stage): DDP must not wait for their gradients. No effect in a single process.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def build_loader(
    dataset: Any,
    *,
    collate_fn: Callable,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    lengths: Sequence[int] | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader with an epoch-seeded sampler (length-grouped when ``lengths`` is given)."""
    sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle, lengths=lengths, batch_size=batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        # Each `iter(loader)` draws a base seed (for worker seeding) from this generator; without one it
        # draws from the global torch RNG, so a resumed run, which starts one more iterator after restoring
        # the RNG state, would see different dropout masks than an uninterrupted run.
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, *, total_steps: int, num_processes: int
):
    """``transformers.get_scheduler`` with warm-up; counts are scaled because accelerate steps the
    prepared scheduler once per process."""
    from transformers import get_scheduler

    warmup = round(config.warmup_ratio * total_steps)
    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=warmup * num_processes,
        num_training_steps=total_steps * num_processes,
    )


def print_summary(accelerator: Accelerator, title: str, items: dict[str, Any]) -> None:
    """The "***** Running training *****" block of transformers examples."""
    width = max(len(k) for k in items)
    lines = [f"***** {title} *****", *(f"  {k:<{width}} = {v}" for k, v in items.items())]
    accelerator.print("\n".join(lines))
