"""Frozen-encoder features of a split, computed once (or read from the cache) and served as batches.

Three sources share one interface (``len``, ``labels``, ``batch(indices) -> dict``):

* :class:`PooledFeatures`: one vector per example, ``{"features": (B, D)}`` (sentence level);
* :class:`TokenStates`: every layer's token/frame states, stored flat without padding and padded per
  batch, ``{"states": (B, T, K, H), "mask": (B, T)}`` (context level);
* :class:`LiveStates`: the same batches computed by the frozen encoder under ``no_grad`` at every step,
  when the states would not fit in ``cache.max_states_gb``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from hftl.data.lengths import text_lengths
from hftl.encoders.base import Encoder, hidden_size_of

logger = logging.getLogger(__name__)
Autocast = Callable[[], contextlib.AbstractContextManager]


class FeatureSource(Protocol):
    labels: torch.Tensor | None

    def __len__(self) -> int: ...
    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]: ...


def labels_of(dataset: datasets.Dataset, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The ``label`` column as a LongTensor, or ``None`` for an unlabelled split."""
    if "label" not in dataset.column_names:
        return None
    return torch.as_tensor(dataset.with_format("numpy")["label"], dtype=torch.long, device=device)


def _inputs(encoder: Encoder, dataset: datasets.Dataset) -> tuple[list[int], list[int] | None]:
    """Encoding order (texts longest first: little padding, and memory errors show at once) and token counts."""
    if encoder.modality != "text":
        return list(range(len(dataset))), None
    lengths = [min(n, encoder.max_length) for n in text_lengths(dataset, encoder.processor)]
    return sorted(range(len(dataset)), key=lambda i: -lengths[i]), lengths


def _batches(
    encoder: Encoder, dataset: datasets.Dataset, order: list[int], *, batch_size: int, num_workers: int
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    columns = [c for c in dataset.column_names if c != "label"]
    loader = DataLoader(
        dataset.select_columns(columns), batch_sampler=chunks, collate_fn=encoder.collator(train=False),
        num_workers=num_workers,
    )  # fmt: skip
    yield from zip(chunks, loader, strict=True)


@torch.no_grad()
def encode_pooled(
    encoder: Encoder,
    dataset: datasets.Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    autocast: Autocast = contextlib.nullcontext,
    num_workers: int = 0,
) -> torch.Tensor:
    """Pooled features of every example, ``(N, encoder.out_features)`` float32 on the CPU, in dataset order."""
    encoder.eval().to(device)
    order, _ = _inputs(encoder, dataset)
    out = torch.empty(len(dataset), encoder.out_features)
    for idx, inputs in _batches(encoder, dataset, order, batch_size=batch_size, num_workers=num_workers):
        with autocast():
            pooled = encoder(**{k: v.to(device) for k, v in inputs.items()}).pooled
        out[idx] = pooled.float().cpu()
    return out


@torch.no_grad()
def encode_states(
    encoder: Encoder,
    dataset: datasets.Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    autocast: Autocast = contextlib.nullcontext,
    dtype: torch.dtype = torch.float16,
    max_bytes: float = float("inf"),
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every layer's states at the real (unpadded) positions of every example.

    Args:
        encoder: a context-level encoder (has ``encode_states``).
        dataset: the split.
        device: where the encoder runs.
        batch_size: examples per forward pass.
        autocast: context manager factory for mixed precision.
        dtype: storage dtype.
        max_bytes: give up (return ``None``) when the states would exceed this size; text sizes are
            exact (from token counts), audio sizes are extrapolated from the clips seen so far.
        num_workers: DataLoader workers.

    Returns:
        ``(values, lengths)``: ``(sum of lengths, K, H)`` states in dataset order and ``(N,)`` lengths;
        or ``None`` when they do not fit in ``max_bytes``.
    """
    encoder.eval().to(device)
    order, token_counts = _inputs(encoder, dataset)
    # one position = K layers × H features, e.g. 7 × 384 × 2 bytes = 5,376 bytes for MiniLM-L6 in float16
    bytes_per_position = (
        encoder.num_states * hidden_size_of(encoder.base_model.config) * torch.finfo(dtype).bits // 8
    )
    if token_counts is not None and sum(token_counts) * bytes_per_position > max_bytes:
        return None
    chunks: dict[int, torch.Tensor] = {}
    stored = 0
    for idx, inputs in _batches(encoder, dataset, order, batch_size=batch_size, num_workers=num_workers):
        with autocast():
            states, mask = encoder.encode_states(**{k: v.to(device) for k, v in inputs.items()})
        lengths = mask.sum(dim=1).tolist() if mask is not None else [states.shape[1]] * len(idx)
        limit = torch.finfo(dtype).max
        states = states.float().clamp(-limit, limit).to(dtype).cpu()
        for row, (i, n) in enumerate(zip(idx, lengths, strict=True)):
            chunks[i] = states[row, : int(n)].clone()
            stored += chunks[i].numel() * chunks[i].element_size()
        if stored / len(chunks) * len(dataset) > max_bytes:
            logger.warning(
                "Per-layer states of %d examples would take about %.1f GB (> cache.max_states_gb); "
                "running the frozen encoder at every step instead.",
                len(dataset), stored / len(chunks) * len(dataset) / 1e9,
            )  # fmt: skip
            return None
    lengths = torch.tensor([len(chunks[i]) for i in range(len(dataset))], dtype=torch.long)
    return torch.cat([chunks.pop(i) for i in range(len(dataset))]), lengths


# --- Arrow <-> tensors ----------------------------------------------------------------------------


def pooled_to_dataset(features: torch.Tensor) -> datasets.Dataset:
    """``(N, D)`` float32 → a dataset with one fixed-size list column ``features``."""
    flat = pa.array(features.contiguous().numpy().reshape(-1))
    return datasets.Dataset.from_dict(
        {"features": pa.FixedSizeListArray.from_arrays(flat, features.shape[1])}
    )


def pooled_from_dataset(ds: datasets.Dataset) -> torch.Tensor:
    column = ds.with_format("arrow")["features"]
    values = pa.chunked_array(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(values)).reshape(len(ds), -1)  # a writable copy of the Arrow buffer


def states_to_dataset(values: torch.Tensor, lengths: torch.Tensor) -> datasets.Dataset:
    """Flat ``(S, K, H)`` states + lengths → one large-list column ``states`` (``T_i·K·H`` values per row)."""
    per_position = values.shape[1] * values.shape[2]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]) * per_position
    flat = pa.array(values.contiguous().numpy().reshape(-1))
    column = pa.LargeListArray.from_arrays(pa.array(offsets.numpy()), flat)
    return datasets.Dataset.from_dict({"states": column, "length": pa.array(lengths.numpy().astype("int32"))})


def states_from_dataset(
    ds: datasets.Dataset, *, num_layers: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    table = ds.with_format("arrow")
    values = pa.chunked_array(table["states"]).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    lengths = torch.from_numpy(pa.chunked_array(table["length"]).to_numpy().astype(np.int64))
    return torch.from_numpy(np.array(values)).reshape(-1, num_layers, width), lengths


# --- sources ---------------------------------------------------------------------------------------


class PooledFeatures:
    """Cached pooled vectors on ``device``; ``batch`` is one index operation."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor | None, *, device: Any = "cpu"):
        self.features, self.labels = features.to(device), None if labels is None else labels.to(device)

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.features[indices]}


class TokenStates:
    """Cached per-layer states ``(S, K, H)`` (flat, no padding) on ``device``, padded per batch."""

    def __init__(
        self, values: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None, *, device: Any = "cpu"
    ):
        self.values, self.lengths = values.to(device), lengths.to(device)
        self.offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]]).to(device)
        self.labels = None if labels is None else labels.to(device)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        lengths = self.lengths[indices]
        steps = torch.arange(int(lengths.max()), device=lengths.device)
        mask = steps[None, :] < lengths[:, None]  # (B, T): real positions are a prefix
        positions = (self.offsets[indices, None] + steps[None, :]).clamp(max=len(self.values) - 1)
        states = self.values[positions].float() * mask[..., None, None]  # (B, T, K, H), zeros at padding
        return {"states": states, "mask": mask.long()}


class LiveStates:
    """Per-layer states computed by the frozen encoder under ``no_grad`` for each batch (no cache)."""

    def __init__(
        self,
        encoder: Encoder,
        dataset: datasets.Dataset,
        *,
        device: Any = "cpu",
        autocast: Autocast = contextlib.nullcontext,
    ):
        self.encoder, self.device, self.autocast = encoder, device, autocast
        self.dataset = dataset.select_columns([c for c in dataset.column_names if c != "label"])
        self.collate = encoder.collator(train=False)
        self.labels = labels_of(dataset, device)

    def __len__(self) -> int:
        return len(self.dataset)

    @torch.no_grad()
    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = self.collate([self.dataset[i] for i in indices.tolist()])
        self.encoder.backbone.eval()
        with self.autocast():
            states, mask = self.encoder.encode_states(**{k: v.to(self.device) for k, v in inputs.items()})
        if mask is None:
            mask = states.new_ones(states.shape[:2], dtype=torch.long)
        return {"states": states.float(), "mask": mask.long()}
