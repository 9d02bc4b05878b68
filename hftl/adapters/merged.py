"""Evaluation through a merged copy: LoRA/IA3 folded into a copy's base weights, never the training weights.

An unmerged LoRA layer computes ``W x + B (A x)`` on every forward: two extra small matmuls per adapted
layer (issue 17 measured +17 % on a MiniLM evaluation on CPU). Evaluation does not need the factors apart,
so :func:`evaluation_view` runs it through a copy in which peft's ``merge_and_unload`` has folded them
into the base weights. The training model is never merged or unmerged in place: its parameters, their
``requires_grad`` and the optimizer's view of them stay exactly as they were, and training continues
bit-identically (tests/test_merged_eval.py).

The copy shares every tensor except the adapted layers' base weights with the model (no second frozen
embedding table, no copied heads), and it is kept between evaluations: it is rebuilt only when a parameter
or buffer of the model changed since it was built (an optimizer step, a restored checkpoint, a move to
another device), which in-place updates record in each tensor's version counter.
"""

from __future__ import annotations

import copy
import sys
import weakref

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

__all__ = ["evaluation_view", "has_unmerged_adapters", "merged_copy"]

# model -> (its tensors' fingerprint when the copy was built, the copy); weak: a dropped model frees its copy
_VIEWS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    if "peft" not in sys.modules:  # no peft model can exist before peft is imported
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_unmerged_adapters(model: nn.Module) -> bool:
    """Whether ``model`` holds peft adapter layers (LoRA, IA3, ...) that are not merged."""
    return any(not layer.merged for layer in _tuner_layers(model))


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every peft model inside it merged and unwrapped.

    Only the adapted layers' base weights are copied (merging writes into them); every other parameter
    and buffer is shared with ``model``, so the copy follows the model's frozen and trainable tensors
    without holding a second set. ``model`` itself is left untouched.

    Example:
        >>> import peft
        >>> net = peft.get_peft_model(nn.Sequential(nn.Linear(4, 4)), peft.LoraConfig(target_modules=["0"]))
        >>> merged = merged_copy(net)
        >>> type(merged).__name__, has_unmerged_adapters(net)
        ('Sequential', True)
    """
    from peft import PeftModel

    written = {
        id(t)
        for layer in _tuner_layers(model)
        for t in layer.get_base_layer().state_dict(keep_vars=True).values()
    }
    tensors = [*model.parameters(), *model.buffers()]
    memo: dict[int, object] = {id(t): t for t in tensors if id(t) not in written}
    view = copy.deepcopy(model, memo)
    if isinstance(view, PeftModel):
        return view.merge_and_unload().eval()
    for parent in list(view.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PeftModel):
                setattr(parent, name, child.merge_and_unload())
    return view.eval()


def _fingerprint(model: nn.Module) -> tuple[tuple, list[torch.Tensor]]:
    """Each tensor's identity, storage, in-place version and ``requires_grad``, plus a copy of the
    trainable values: fused optimizers (``torch.optim.AdamW(fused=True)``) write parameters without
    bumping their version counters, so those are compared by value."""
    tensors = [*model.parameters(), *model.buffers()]
    key = tuple((id(t), t.data_ptr(), t._version, t.requires_grad) for t in tensors)
    return key, [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _unchanged(model: nn.Module, built: tuple[tuple, list[torch.Tensor]]) -> bool:
    key, values = built
    tensors = [*model.parameters(), *model.buffers()]
    if key != tuple((id(t), t.data_ptr(), t._version, t.requires_grad) for t in tensors):
        return False
    trainable = [p for p in model.parameters() if p.requires_grad]
    return all(torch.equal(p, v) for p, v in zip(trainable, values, strict=True))


def evaluation_view(model: nn.Module, accelerator: Accelerator | None = None) -> nn.Module:
    """The module to evaluate ``model`` with: its merged copy (:func:`merged_copy`) when it has unmerged
    adapters, else ``model`` itself.

    The copy is cached per model and rebuilt only when one of the model's tensors changed since it was
    built: trainable values are compared, other tensors by their in-place version counters (a write
    into a frozen tensor through ``.data`` bypasses them: call :func:`merged_copy` directly after one).

    Args:
        model: the model being trained (prepared by ``accelerator`` or not); never modified.
        accelerator: the run's Accelerator, to look through its wrapper (DDP). Under FSDP or DeepSpeed
            (sharded parameters: no whole copy) ``model`` is returned as it is.
    """
    inner = model
    if accelerator is not None:
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return model
        inner = accelerator.unwrap_model(model)
    if not has_unmerged_adapters(inner):
        return model
    cached = _VIEWS.get(inner)
    if cached is None or not _unchanged(inner, cached[0]):
        with torch.no_grad():
            cached = _VIEWS[inner] = (_fingerprint(inner), merged_copy(inner))
    return cached[1]
