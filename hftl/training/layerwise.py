"""Layer-wise (discriminative) learning rates and gradual unfreezing, for any encoder.

Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification" (ULMFiT,
arXiv:1801.06146): lower layers hold more general features, so they should change less. Parameters are
grouped by depth from the top::

    depth 0        the head and every trainable module outside the encoder backbone
                   (attention pooling, an adaptation method's discriminator)
    depth 1        the backbone's top numbered layer, plus backbone parameters after it (BERT's
                   pooler, ViT's final layer norm)
    depth k        the k-th numbered layer from the top
    depth L + 1    backbone parameters before the first layer (embeddings, wav2vec2's convolutional
                   feature extractor)

and depth ``d`` trains at ``lr × decay ** d``. A layer is any parameter path through a numbered child of
a container named in :data:`LAYER_CONTAINERS` (``encoder.layer.3.…`` in BERT/ViT, ``encoder.layers.3.…`` in
wav2vec2/HuBERT/Whisper, ``stages.1.layers.2.…`` in ConvNeXt/ResNet), so peft-wrapped backbones work as
they are: a LoRA matrix sits under its layer's path and joins that layer's group.

Example:
    >>> groups = layer_groups(model, backbone=model.encoder.backbone, lr_decay=0.8)  # doctest: +SKIP
    >>> optimizer = torch.optim.AdamW(groups, lr=5e-4)  # doctest: +SKIP
    >>> scale_group_lrs(optimizer)  # each group's lr = 5e-4 × its lr_scale  # doctest: +SKIP
    >>> unfreezer = GradualUnfreezer(optimizer, every_steps=100)  # doctest: +SKIP
    >>> unfreezer(step)  # depths <= step // 100 train  # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from hftl.errors import ConfigError

# Module-list names whose numbered children are layers, in the naming of transformers models.
LAYER_CONTAINERS = ("layer", "layers", "block", "blocks", "h", "stages")
_LAYER = re.compile(rf"(?:^|\.)(?:{'|'.join(LAYER_CONTAINERS)})\.(\d+)(?=\.)")


def layer_key(name: str) -> tuple[int, ...] | None:
    """The layer position in a parameter name: ``"encoder.layer.3.attention.self.query.weight"`` → ``(3,)``.

    Nested containers give one index each (``"stages.1.layers.2.conv.weight"`` → ``(1, 2)``), which sort
    bottom to top; ``None`` means the parameter is in no numbered layer.
    """
    key = tuple(int(m.group(1)) for m in _LAYER.finditer(name))
    return key or None


def backbone_depths(backbone: nn.Module) -> dict[int, int]:
    """Depth from the top of every backbone parameter, by ``id(param)`` (see the module docstring).

    Raises:
        ConfigError: the backbone has no numbered layers, so there is nothing to decay or unfreeze.
    """
    named = list(backbone.named_parameters())
    keys = [layer_key(n) for n, _ in named]
    ranks = {k: r for r, k in enumerate(sorted({k for k in keys if k is not None}, reverse=True))}
    if not ranks:
        shown = ", ".join(n for n, _ in named[:4])
        raise ConfigError(
            f"`train.layerwise`: found no numbered layers ({', '.join(f'{c}.N' for c in LAYER_CONTAINERS)}) in "
            f"the encoder backbone {type(backbone).__name__} (parameters look like {shown}, ...). Use an encoder "
            "with numbered layers, or remove `train.layerwise` (lr_decay: 1, no unfreezing)."
        )
    positions = [i for i, k in enumerate(keys) if k is not None]
    first, last, bottom = positions[0], positions[-1], len(ranks) + 1
    depths = {}
    for i, ((_, param), key) in enumerate(zip(named, keys, strict=True)):
        if key is not None:
            depths[id(param)] = 1 + ranks[key]
        else:  # before the first layer: embeddings; after the last: pooler/final norm, with the top layer
            depths[id(param)] = bottom if i < first else 1 if i > last else _between(named, keys, i, ranks)
    return depths


def _between(named: list, keys: list, i: int, ranks: dict) -> int:
    """A parameter between numbered layers (rare: e.g. a downsampling module) joins the layer below it."""
    below = next(keys[j] for j in range(i - 1, -1, -1) if keys[j] is not None)
    return 1 + ranks[below]


def layer_groups(
    model: nn.Module, *, backbone: nn.Module, lr_decay: float, params: list[nn.Parameter] | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups by depth, top first, each with ``depth`` and ``lr_scale = lr_decay**depth``.

    Args:
        model: the whole trainable model (encoder, head, and any extra modules).
        backbone: the encoder's transformers model inside ``model`` (``encoder.backbone``, peft-wrapped or not).
        lr_decay: learning-rate factor per depth, in (0, 1].
        params: the parameters to optimize (default: those of ``model`` with ``requires_grad``).

    Returns:
        ``[{"params": [...], "name": "head" | "layer 5" | "embeddings", "depth": d, "lr_scale": s}, ...]``
        for every depth that holds a parameter; usable as the ``params`` of any torch optimizer.
    """
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    depths = backbone_depths(backbone)
    bottom = max(depths.values())
    by_depth: dict[int, list[nn.Parameter]] = {}
    for p in params:
        by_depth.setdefault(depths.get(id(p), 0), []).append(p)

    def name(d: int) -> str:
        return "head" if d == 0 else "embeddings" if d == bottom else f"layer {bottom - 1 - d}"

    return [
        {"params": by_depth[d], "name": name(d), "depth": d, "lr_scale": lr_decay**d}
        for d in sorted(by_depth)
    ]


def scale_group_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Sets each group's ``lr`` to the optimizer's default ``lr`` × the group's ``lr_scale``.

    Call it right after building the optimizer and before the LR scheduler (which records each group's
    starting ``lr`` as its ``initial_lr``).
    """
    base = optimizer.defaults["lr"]
    for group in optimizer.param_groups:
        group["lr"] = base * group.get("lr_scale", 1.0)


class GradualUnfreezer:
    """Top-down gradual unfreezing as a function of the optimizer step (so a resumed run recomputes it).

    At step ``s`` the groups of depth ``<= d0 + s // every_steps`` train (``d0``: the top group's depth, 0 for
    a head); the others have ``requires_grad``
    off (their optimizer state and weight decay are untouched, as AdamW skips parameters without a
    gradient). Only parameters of the optimizer's groups are touched, so weights an adapter froze (LoRA's
    base weights) stay frozen. Call it with the current step before the first step and after each.

    Under DDP, build the model with everything trainable, wrap it, then let this freeze: DDP only
    synchronizes parameters that required a gradient when it was wrapped, and
    ``find_unused_parameters=True`` (set by :func:`hftl.training.builders.build_accelerator`) lets it
    skip the frozen ones.

    Args:
        optimizer: an optimizer whose param groups carry ``depth`` (see :func:`layer_groups`).
        every_steps: optimizer steps between two unfreezings.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, every_steps: int):
        if every_steps < 1:
            raise ConfigError(f"`train.layerwise.unfreeze_every_steps` must be >= 1; got {every_steps}")
        missing = [i for i, g in enumerate(optimizer.param_groups) if "depth" not in g]
        if missing:
            raise ConfigError(
                f"gradual unfreezing needs param groups with a `depth` (from layer_groups); groups {missing} have none"
            )
        self.groups, self.every_steps = optimizer.param_groups, every_steps
        # the top group present trains from the start: the head (depth 0), or the top encoder layer when the
        # optimizer holds no head (e.g. the contrastive stage of the few-shot recipe)
        self.min_depth = min(g["depth"] for g in self.groups)
        self.max_depth = max(g["depth"] for g in self.groups)
        self.applied: int | None = None  # depth applied last, so unchanged steps cost nothing

    def depth_at(self, step: int) -> int:
        """Deepest trainable depth at optimizer step ``step``."""
        return min(self.min_depth + step // self.every_steps, self.max_depth)

    @property
    def fully_unfrozen_at(self) -> int:
        """The first step at which every group trains."""
        return (self.max_depth - self.min_depth) * self.every_steps

    def __call__(self, step: int) -> None:
        depth = self.depth_at(step)
        if depth == self.applied:
            return
        for group in self.groups:
            for p in group["params"]:
                p.requires_grad_(group["depth"] <= depth)
        self.applied = depth
