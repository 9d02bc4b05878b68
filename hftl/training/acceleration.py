"""What makes a training step fast on a GPU: precision, TF32, ``torch.compile`` and static batch shapes.

All of it is a no-op on CPU with the defaults (``train.mixed_precision: auto`` resolves to ``no`` there,
TF32 only exists on CUDA, ``train.compile`` is off), so CPU runs compute exactly what they did before.

``torch.compile`` modes (``train.compile_mode``):

* ``default``: TorchInductor fuses the elementwise work (GELU, dropout, LayerNorm, residual adds) into
  few kernels; works with any batch shape (after the first new shape it compiles one dynamic graph).
* ``reduce-overhead``: the same plus CUDA graphs, which replay a whole step as one launch. This is what
  removes the launch overhead of small encoders (a MiniLM step is ~900 kernel launches), but a graph is
  recorded per input shape, so training batches are padded to a few lengths (:func:`pad_to_bucket`).
* ``max-autotune``: also benchmarks matmul/attention kernels while compiling (minutes), with CUDA graphs.
* ``max-autotune-no-cudagraphs``: autotuning without CUDA graphs.

Example:
    >>> pad_to_bucket({"input_ids": torch.ones(2, 5, dtype=torch.long)}, [4, 8])["input_ids"].shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hftl.errors import TrainingError
from hftl.training.config import TrainConfig

# Bucket lengths for CUDA-graph modes when `train.length_buckets` is null: steps of at most 1.5× (so at
# most a third of a padded batch is extra padding), 10 shapes up to BERT's 512 positions.
DEFAULT_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# token-aligned keys of text batches and the value that pads them: masked positions (attention_mask 0)
# never reach a real token's output, and -100 is the label cross-entropy ignores (masked-LM batches)
PAD_VALUES = {
    "input_ids": 0,
    "attention_mask": 0,
    "token_type_ids": 0,
    "labels": -100,
    "special_tokens_mask": 1,
}


def cuda_in_use(config: TrainConfig) -> bool:
    """Whether the run's Accelerator will train on a CUDA device (not forced onto the CPU)."""
    forced_cpu = config.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return torch.cuda.is_available() and not forced_cpu


def resolve_mixed_precision(config: TrainConfig) -> str:
    """``train.mixed_precision`` with ``auto`` made concrete: ``bf16`` on a CUDA GPU with bf16, else ``no``.

    GPUs without bf16 (V100, T4) stay in fp32 rather than fp16, whose loss scaling can still overflow.

    Example:
        >>> resolve_mixed_precision(TrainConfig(mixed_precision="auto", cpu=True))
        'no'
    """
    if config.mixed_precision != "auto":
        return config.mixed_precision
    return "bf16" if cuda_in_use(config) and torch.cuda.is_bf16_supported() else "no"


def resolve_num_workers(config: TrainConfig) -> int:
    """``train.num_workers`` with null made concrete: 2 on a CUDA GPU, 0 on CPU.

    On a GPU the step is short and the collate (padding, audio decoding, augmentation) runs on the host
    between steps; in two worker processes it overlaps the step instead (MiniLM, bf16 + CUDA graphs, batch
    32 on an H200: 8.8 -> 7.7 ms a step, ``benchmarks/results/gpu_profile.md``). On CPU the workers would take
    cores from the step itself, so batches are collated in the training process.

    Example:
        >>> resolve_num_workers(TrainConfig(cpu=True)), resolve_num_workers(TrainConfig(num_workers=3))
        (0, 3)
    """
    if config.num_workers is not None:
        return config.num_workers
    return 2 if cuda_in_use(config) else 0


def configure_device_math(config: TrainConfig, device: torch.device) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA (``train.tf32``); nothing on other devices.

    TF32 keeps fp32's range with a 10-bit mantissa in the tensor cores (8× the fp32 rate on an A100);
    it is process-wide, as it is in transformers' ``TrainingArguments(tf32=True)``.
    """
    if device.type != "cuda":
        return
    precision = "tf32" if config.tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.fp32_precision = precision


def buckets_for(config: TrainConfig) -> tuple[int, ...] | None:
    """The lengths training batches are padded to (``train.length_buckets``), or None: pad to the longest.

    Without explicit buckets, only a compiled model in a CUDA-graph mode gets :data:`DEFAULT_BUCKETS`.
    """
    if config.length_buckets is not None:
        return tuple(sorted({int(b) for b in config.length_buckets}))
    if config.compile and config.compile_mode in CUDA_GRAPH_MODES:
        return DEFAULT_BUCKETS
    return None


def compile_for_training(model: nn.Module, config: TrainConfig) -> nn.Module:
    """``torch.compile(model, mode=train.compile_mode)`` when ``train.compile`` is on, else ``model``.

    The compiled module shares ``model``'s parameters and buffers: optimizer, checkpoints, evaluation and
    ``hftl.load`` keep using ``model`` itself (no ``_orig_mod.`` prefix anywhere), only the training forward
    runs through the compiled graph. A DDP-wrapped model is compiled as a whole, as PyTorch recommends.
    """
    if not config.compile:
        return model
    return torch.compile(model, mode=config.compile_mode)


def pad_to_bucket(batch: Any, buckets: Sequence[int] | None) -> Any:
    """``batch`` with its token dimension padded up to the smallest bucket that holds it.

    Text batches (a dict with 2-D ``input_ids``; a ``(source, target)`` pair of them) are padded on the
    right with :data:`PAD_VALUES`; other batches, and batches longer than every bucket, come back as they
    are. Padding is one ``F.pad`` per tensor where the batch lies (no host sync).

    Raises:
        TrainingError: a token-aligned tensor of the batch has no known padding value.
    """
    if not buckets:
        return batch
    if isinstance(batch, tuple):
        return tuple(pad_to_bucket(part, buckets) for part in batch)
    ids = batch.get("input_ids") if isinstance(batch, dict) else None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return batch
    length = ids.shape[1]
    target = next((b for b in buckets if b >= length), length)
    if target == length:
        return batch
    padded = dict(batch)
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[1] != length:
            continue
        if key == "labels" and value.is_floating_point():  # multi-label targets (B, classes), not tokens
            continue
        if key not in PAD_VALUES:
            raise TrainingError(
                f"`train.length_buckets`: the batch's {key!r} has the token dimension ({length}) but no known "
                f"padding value (known: {sorted(PAD_VALUES)}). Fix: set `train.length_buckets=null`."
            )
        padded[key] = nn.functional.pad(value, (0, target - length), value=PAD_VALUES[key])
    return padded
