"""Building and timing a smaller student from a trained encoder (used by ``hftl run distill``)."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from hftl.errors import ConfigError


def keep_layers(encoder: nn.Module, layers: list[int]) -> None:
    """Cuts a transformers encoder down to ``layers`` (in that order), updating ``num_hidden_layers``."""
    base = encoder.base_model
    n = base.config.num_hidden_layers
    stack = next((m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) == n), None)
    if stack is None or max(layers) >= n:
        raise ConfigError(
            f"`distill.student_layers` = {layers}: the student has {n} layers (indices 0..{n - 1})"
            + ("" if stack is not None else " and no layer list hftl can cut; set it to null")
        )
    kept = [stack[i] for i in layers]
    for i in range(n - 1, -1, -1):
        del stack[i]
    stack.extend(kept)
    for i, layer in enumerate(kept):  # attention caches index layers by position
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    base.config.num_hidden_layers = len(layers)


def merged_backbone(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder.backbone`` with any LoRA/IA3 weights merged in (a plain transformers model)."""
    backbone = copy.deepcopy(encoder.backbone)
    return backbone.merge_and_unload() if hasattr(backbone, "merge_and_unload") else backbone


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two text encoders turn the same text into the same input ids."""
    pa, pb = getattr(a, "processor", None), getattr(b, "processor", None)
    return (
        type(pa) is type(pb)
        and getattr(a, "max_length", None) == getattr(b, "max_length", None)
        and (not hasattr(pa, "get_vocab") or pa.get_vocab() == pb.get_vocab())
    )


@torch.no_grad()
def time_forward(runs: dict[str, tuple[nn.Module, dict]], *, repeats: int, accelerator) -> dict[str, float]:
    """Median seconds of one forward pass per ``name: (model, batch)``, after 3 warm-up passes.

    The models run in turn within each repeat, so a machine's load changing over time hits them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    cuda = any(b[next(iter(b))].is_cuda for _, b in runs.values())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with accelerator.autocast():
        for i in range(repeats + 3):
            for name, (model, batch) in runs.items():
                model.eval()
                sync()
                start = time.perf_counter()
                model(**batch)
                sync()
                if i >= 3:
                    times[name].append(time.perf_counter() - start)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}
