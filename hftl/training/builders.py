"""Small builders shared by recipes: accelerator, loaders, optimizer, LR schedule, run summary."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from hftl.config import get_component, instantiate
from hftl.data.keys import KeyedStream, with_example_keys
from hftl.data.lengths import audio_lengths, text_lengths
from hftl.data.samplers import EpochSampler
from hftl.data.streaming import is_stream, length_or_none
from hftl.errors import ConfigError, HftlError
from hftl.training.config import LayerwiseConfig, TrainConfig


def build_accelerator(config: TrainConfig, output_dir: str | Path) -> Accelerator:
    """An Accelerator for ``config`` (precision, accumulation, trackers) logging under ``output_dir``.

    accelerate keeps its state in a process-wide singleton that refuses a second, different precision;
    a recipe owns its run, so the previous run's state (e.g. an earlier run in the same notebook or test
    session) is dropped first. The distributed process group (``PartialState``) is kept.

    ``train.mixed_precision: auto`` (bf16 on a CUDA GPU with bf16, else no) and ``train.num_workers: null``
    (2 on a CUDA GPU, else 0) are resolved here and written back into ``config``, so the loaders, the run
    summary and saved metadata see what runs; on CUDA, ``train.tf32`` is applied
    (:mod:`hftl.training.acceleration`).
    """
    from accelerate.state import AcceleratorState

    from hftl.training.acceleration import (
        configure_device_math,
        resolve_mixed_precision,
        resolve_num_workers,
    )

    _refuse_backend_without_cuda(config)
    AcceleratorState._reset_state(reset_partial_state=False)
    config.mixed_precision = resolve_mixed_precision(config)
    config.num_workers = resolve_num_workers(config)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=config.cpu,
        log_with=config.report_to or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")
        ),
        # dispatch_batches=False: a streamed train split is read by every process (accelerate's
        # IterableDatasetShard keeps each one's slice) instead of read on rank 0 and broadcast, whose loader
        # drops the DataLoader's generator and so draws from the global RNG when an epoch starts (a resumed
        # run would then see other dropout masks). Map-style loaders are sharded either way.
        dataloader_config=DataLoaderConfiguration(non_blocking=True, dispatch_batches=False),
        # Encoders carry modules a recipe may not use (BERT's pooler under mean pooling, a discriminator
        # outside its stage): DDP must not wait for their gradients. No effect in a single process.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    _check_requested_backend(accelerator)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        # `accelerate launch --multi_gpu` on a machine without GPUs starts N independent runs that would
        # all write to the same output_dir.
        raise HftlError(
            f"{launched} processes were launched but each runs alone (no GPU and no CPU process group). "
            "Fix: set ACCELERATE_USE_CPU=1 (or `train.cpu=true`) for multi-process CPU runs, "
            "or use `hftl run ... --num-processes N`, which sets it."
        )
    configure_device_math(config, accelerator.device)
    return accelerator


_BACKEND_FLAGS = (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"))


def _requested_backends() -> list[tuple[str, str]]:
    return [(flag, name) for flag, name in _BACKEND_FLAGS if os.environ.get(flag, "false").lower() == "true"]


def _backend_refused(flag: str, name: str, setup: str) -> HftlError:
    return HftlError(
        f"the launch config asks for {name} ({flag}=true) but {setup} ({name} needs CUDA devices; "
        "accelerate does not run it on CPU). Fix: launch on GPUs, or use configs/accelerate/cpu_2proc.yaml "
        "/ `hftl run --num-processes N` for multi-process CPU runs."
    )


def _refuse_backend_without_cuda(config: TrainConfig) -> None:
    """Before accelerate starts (it would fail on a missing DeepSpeed install, or fall back silently)."""
    from hftl.training.acceleration import cuda_in_use

    if not cuda_in_use(config):
        for flag, name in _requested_backends():
            raise _backend_refused(flag, name, "this run is on the CPU")


def _check_requested_backend(accelerator: Accelerator) -> None:
    """Refuses a run whose launch config asked for FSDP or DeepSpeed that accelerate did not set up.

    accelerate turns FSDP and DeepSpeed on only for GPU-like devices: under ``ACCELERATE_USE_CPU=1`` it
    silently trains plain DDP (MULTI_CPU) instead, and on a CPU-only machine without it DeepSpeed starts
    its process group while accelerate counts one process in each (accelerate 1.15; docs/scaling.md).
    """
    from accelerate.utils import DistributedType

    kinds = {"FSDP": DistributedType.FSDP, "DeepSpeed": DistributedType.DEEPSPEED}
    for flag, name in _requested_backends():
        if accelerator.distributed_type != kinds[name] or accelerator.device.type == "cpu":
            setup = f"accelerate set up {accelerator.distributed_type.value} on {accelerator.device}"
            raise _backend_refused(flag, name, setup)


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
    """A DataLoader with an epoch-seeded sampler (length-grouped when ``lengths`` is given).

    A streamed ``dataset`` (:mod:`hftl.data.streaming`) is already shuffled by its seeded buffer, which
    the engine reseeds every epoch through the loader's ``set_epoch``; it gets a plain batching loader.
    """
    if is_stream(dataset):
        if getattr(collate_fn, "uses_example_keys", False):
            dataset = KeyedStream(dataset)
        return DataLoader(
            dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),  # as below: resume draws no global RNG
            pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        )  # fmt: skip
    sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle, lengths=lengths, batch_size=batch_size)
    if getattr(collate_fn, "uses_example_keys", False):  # per-example (index, epoch) seeds: exact resume
        dataset, sampler = with_example_keys(dataset, sampler)
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


def build_optimizer(
    make: Callable[..., torch.optim.Optimizer],
    model: torch.nn.Module,
    *,
    backbone: torch.nn.Module,
    layerwise: LayerwiseConfig,
) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s trainable parameters, in layer-wise groups when ``layerwise`` is active.

    Args:
        make: builds the optimizer from ``params=`` (the recipe's ``optimizer:`` node, e.g.
            ``lambda params: instantiate(cfg.optimizer, params=params)``).
        model: the model to train; its parameters with ``requires_grad`` are optimized.
        backbone: the encoder's transformers model inside ``model`` (depths are counted in it).
        layerwise: the ``train.layerwise`` section.

    Returns:
        With ``layerwise`` off, ``make(params=trainable)`` (one group). Otherwise one group per depth, top
        first (so logs show the head's learning rate), each at ``lr × lr_decay ** depth``; see
        :mod:`hftl.training.layerwise`.
    """
    from hftl.training.layerwise import layer_groups, scale_group_lrs

    params = [p for p in model.parameters() if p.requires_grad]
    if not layerwise.active:
        return make(params=params)
    optimizer = make(
        params=layer_groups(model, backbone=backbone, lr_decay=layerwise.lr_decay, params=params)
    )
    scale_group_lrs(optimizer)
    return optimizer


def build_unfreezer(
    config: TrainConfig, optimizer: torch.optim.Optimizer, *, batches_per_epoch: int | None
) -> Callable[[int], None] | None:
    """The gradual-unfreezing hook of ``config.layerwise`` for :class:`~hftl.training.Engine`'s ``on_step``.

    Args:
        config: the ``train:`` section.
        optimizer: built by :func:`build_optimizer`.
        batches_per_epoch: ``len(train_loader)`` (per process), to turn epochs into optimizer steps; None
            for streamed data (then the interval must be given in steps).

    Returns:
        ``None`` when gradual unfreezing is off. The hook freezes on its first call, which the engine makes
        after ``accelerator.prepare`` wrapped the model, so DDP registers every parameter that will train.
    """
    from hftl.training.layerwise import GradualUnfreezer

    if batches_per_epoch is None and config.layerwise.unfreeze_every_epochs is not None:
        raise ConfigError(
            "`train.layerwise.unfreeze_every_epochs` needs the epoch length, which streamed data "
            "(`data.streaming: true`) does not have; use `train.layerwise.unfreeze_every_steps` instead."
        )
    steps_per_epoch = math.ceil((batches_per_epoch or 0) / config.gradient_accumulation_steps)
    every = config.layerwise.unfreeze_interval(steps_per_epoch)
    return None if every is None else GradualUnfreezer(optimizer, every_steps=every)


def describe_layerwise(optimizer: torch.optim.Optimizer, unfreezer: Any) -> dict[str, str]:
    """Lines for the run summary: learning rate per depth and the unfreezing schedule."""
    groups = optimizer.param_groups
    if len(groups) < 2 and unfreezer is None:
        return {}
    lrs = ", ".join(f"{g.get('name', i)} {g['lr']:.2e}" for i, g in enumerate(groups))
    lines = {"Layer-wise learning rates": lrs}
    if unfreezer is not None:
        lines["Gradual unfreezing"] = (
            f"one depth every {unfreezer.every_steps} steps, all {unfreezer.max_depth + 1} depths train from "
            f"step {unfreezer.fully_unfrozen_at}"
        )
    return lines


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


def build_lr_scheduler(
    node: DictConfig | None,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    *,
    total_steps: int,
    allow_any: bool = False,
) -> Any:
    """The run's prepared LR scheduler: the ``lr_scheduler:`` component, else ``train.lr_scheduler``.

    Args:
        node: the config's ``lr_scheduler:`` node, or None.
        config: the ``train:`` section (``lr_scheduler``, ``warmup_ratio``).
        optimizer: the prepared optimizer.
        accelerator: the run's Accelerator (it prepares the scheduler, which checkpoints then save).
        total_steps: optimizer steps of the run.
        allow_any: the user's ``--allow-any-component``.
    """
    if node is None:  # accelerate steps a prepared scheduler once per process: the counts are scaled
        made = build_scheduler(
            config, optimizer, total_steps=total_steps, num_processes=accelerator.num_processes
        )
        return accelerator.prepare(made)
    params = inspect.signature(get_component(str(node.get("_component_")), allow_any=allow_any)).parameters
    steps = {"num_training_steps": total_steps, "num_warmup_steps": round(config.warmup_ratio * total_steps)}
    runtime = {k: v for k, v in steps.items() if k in params}
    scheduler = accelerator.prepare(instantiate(node, allow_any=allow_any, optimizer=optimizer, **runtime))
    scheduler.split_batches = True  # one scheduler step per optimizer step, whatever the number of processes
    return scheduler


def print_summary(accelerator: Accelerator, title: str, items: dict[str, Any]) -> None:
    """The "***** Running training *****" block of transformers examples."""
    width = max(len(k) for k in items)
    lines = [f"***** {title} *****", *(f"  {k:<{width}} = {v}" for k, v in items.items())]
    accelerator.print("\n".join(lines))


def train_lengths(dataset: Any, encoder: Any, config: TrainConfig) -> list[int] | None:
    """Per-example lengths for length-grouped batches (``train.group_by_length``), or None.

    Text: token counts of a pre-tokenized split (:mod:`hftl.data.tokenized`), else word counts (same
    order, no tokenizing). Audio: frames at the encoder's rate, read from file headers without decoding. Other modalities: None (fixed-size inputs).
    """
    if not config.group_by_length or is_stream(dataset):  # a stream is grouped by nothing but its buffer
        return None
    if encoder.modality == "text":
        return text_lengths(dataset)
    if encoder.modality == "audio":
        return audio_lengths(dataset, sampling_rate=encoder.sampling_rate)
    return None


def batches_per_epoch(loader: Any) -> int | None:
    """``len(loader)``, or None for a loader over streamed data (its length is unknown)."""
    return length_or_none(loader)


def describe_splits(splits: dict[str, Any]) -> str:
    """``"train 6,920, validation 872"`` for the run summary; a streamed split shows as ``streamed``."""
    return ", ".join(f"{k} {'streamed' if is_stream(v) else f'{len(v):,}'}" for k, v in splits.items())
