"""A fast training loop for heads on frozen-encoder features (optionally with shallow domain adaptation).

Batches are index operations on feature tensors already on the device: no DataLoader, no collation,
no host synchronisation per step. That is where cached training beats a fine-tune epoch by orders of
magnitude (``benchmarks/embedding_transfer.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hftl.embeddings.config import HeadTrainConfig
from hftl.embeddings.features import FeatureSource
from hftl.training.best import BestRecord, BestTracker, WeightsInMemory


def split_head(head: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(bottleneck, classifier)``: a sequential head's layers before its last ``Linear``, and that layer.

    The bottleneck output is the feature a domain-adaptation loss aligns (MLPHead: the hidden layer,
    as in Ganin et al.'s shallow DANN). Any other head is its own classifier, with no bottleneck.
    """
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
        return nn.Sequential(*list(head)[:-1]), head[-1]
    return nn.Identity(), head


class EmbeddingModel(nn.Module):
    """Context pooler (or none, for pooled features) → head bottleneck → classifier.

    Args:
        head: the classifier head (e.g. ``hftl.models.MLPHead``).
        pooler: the context-level encoder's :class:`~hftl.embeddings.heads.ContextPooler`; ``None`` for
            sentence-level (pooled) features.
        method: an ``hftl.adaptation`` method whose modules (discriminator, ...) train with the head.
    """

    def __init__(self, head: nn.Module, *, pooler: nn.Module | None = None, method: nn.Module | None = None):
        super().__init__()
        self.head, self.pooler, self.method = head, pooler, method
        self._parts = split_head(head)  # a plain tuple: the same modules, not registered twice

    @property
    def bottleneck(self) -> nn.Module:
        return self._parts[0]

    @property
    def classifier(self) -> nn.Module:
        return self._parts[1]

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(features, logits)``: the bottleneck output and the class scores."""
        x = batch["features"] if self.pooler is None else self.pooler(batch["states"], batch["mask"])
        features = self.bottleneck(x)
        return features, self.classifier(features)


@dataclass
class FitResult(BestRecord):
    """What :func:`fit` did: steps, best validation point, per-epoch training time (evaluation excluded)."""

    steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_examples: list[int] = field(default_factory=list)


@torch.no_grad()
def predict(
    model: EmbeddingModel, source: FeatureSource, *, batch_size: int, indices: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, logits)`` of the examples of ``source`` (all, or ``indices``), in order, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = torch.arange(len(source), device=device) if indices is None else indices.to(device)
    feats, logits = [], []
    for start in range(0, len(order), batch_size):
        f, z = model(source.batch(order[start : start + batch_size]))
        feats.append(f.float()), logits.append(z.float())
    model.train(was_training)
    return torch.cat(feats), torch.cat(logits)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Cycle:
    """Endless shuffled batches of indices of a source (the target stream of domain adaptation)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device: torch.device):
        self.n, self.bs, self.gen, self.device = n, batch_size, generator, device
        self.perm, self.pos = torch.randperm(n, generator=generator).to(device), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.bs > self.n and self.pos > 0:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen).to(self.device), 0
        idx = self.perm[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return idx


def _loss(
    model: EmbeddingModel,
    train: FeatureSource,
    idx: torch.Tensor,
    target: FeatureSource | None,
    target_idx: torch.Tensor | None,
    progress: float,
) -> torch.Tensor:
    """Cross-entropy on the source batch, plus the method's loss against a target batch, weighted by
    ``method.weight(progress)`` (``trade_off``, ramped from 0 with the method's ``warmup: ganin``)."""
    features, logits = model(train.batch(idx))
    loss = nn.functional.cross_entropy(logits, train.labels[idx])
    method = model.method
    if target_idx is None or method is None or not method.uses_target:
        return loss
    f_t, logits_t = model(target.batch(target_idx))
    out = method(f_s=features, f_t=f_t, logits_s=logits, logits_t=logits_t, progress=progress)
    return loss + method.weight(progress) * out.loss


def _optimizer_step(
    model: nn.Module, loss: torch.Tensor, optimizer: Any, scheduler: Any, *, max_grad_norm: float | None
) -> None:
    """Backward, optional gradient clipping, one optimizer and one scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()


def fit(
    model: EmbeddingModel,
    train: FeatureSource,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: HeadTrainConfig,
    evaluate: Callable[[], dict[str, float]] | None = None,
    metric: str = "accuracy",
    higher_is_better: bool = True,
    target: FeatureSource | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Trains ``model`` on ``train`` (cross-entropy, + ``trade_off × method`` loss with ``target``).

    Validation runs every ``config.eval_every_steps`` or at each epoch end; the best weights (by
    ``metric`` of ``evaluate()``) are restored at the end when ``config.load_best_at_end``.

    Returns:
        A :class:`FitResult`; ``epoch_seconds`` times each epoch's training steps only.
    """
    if train.labels is None:
        raise ValueError("fit: the training source has no labels")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    bs, n = config.batch_size, len(train)
    steps_per_epoch = math.ceil(n / bs)
    total = config.max_steps or config.epochs * steps_per_epoch
    cycle = _Cycle(len(target), bs, gen, device) if target is not None and model.method is not None else None
    result = FitResult()
    best = BestTracker(
        WeightsInMemory(model),
        higher_is_better=higher_is_better,
        patience=config.early_stopping_patience,
        log=log,
    )

    def validate() -> bool:
        metrics = evaluate()
        model.train()
        log(f"step {result.steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        result.history.append({"step": result.steps, **metrics})
        return best.update(result, metrics[metric], step=result.steps)

    model.train()
    stop = False
    while not stop and result.steps < total:
        perm = torch.randperm(n, generator=gen).to(device)
        running, count, eval_time = torch.zeros((), device=device), 0, 0.0
        _sync(device)
        start = time.perf_counter()
        for b in range(steps_per_epoch):
            target_idx = cycle.next() if cycle is not None else None
            loss = _loss(model, train, perm[b * bs : (b + 1) * bs], target, target_idx, result.steps / total)
            _optimizer_step(model, loss, optimizer, scheduler, max_grad_norm=config.max_grad_norm)
            running += loss.detach()
            count += 1
            result.steps += 1
            if (
                evaluate is not None
                and config.eval_every_steps
                and result.steps % config.eval_every_steps == 0
            ):
                _sync(device)
                t0 = time.perf_counter()
                stop = validate()
                eval_time += time.perf_counter() - t0
            if stop or result.steps >= total:
                break
        _sync(device)
        result.epoch_seconds.append(time.perf_counter() - start - eval_time)
        result.epoch_examples.append(min(count * bs, n))
        log(f"epoch {len(result.epoch_seconds)}: loss {(running / max(count, 1)).item():.4f} "
            f"({count} steps, {result.epoch_seconds[-1]:.3f} s)")  # fmt: skip
        if evaluate is not None and not config.eval_every_steps:
            stop = validate() or stop
    if evaluate is not None and (not result.history or result.history[-1]["step"] != result.steps):
        validate()
    if config.load_best_at_end:
        best.restore(result, final_step=result.steps, metric=metric)
    return result
