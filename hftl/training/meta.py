"""First-order MAML and Reptile over any hftl :class:`~hftl.models.Classifier`.

Both learn an *initialization* θ of the encoder that adapts to a new N-way task in a few SGD steps.
The N-way linear head is **not** meta-learned: every episode starts it at zero (the "zeroing trick" of
Kao et al., "MAML is a Noisy Contrastive Learner in Classification", ICLR 2022), so no class owns a
fixed output and the learnt θ does not depend on the episode's label order. With a zero head the first
inner step only moves the head (the feature gradient is ``Wᵀ(p − y) = 0``); the encoder moves from
the second step on.

- **Inner loop** (both): ``steps`` plain SGD steps, ``φ ← φ − α ∇L(φ)``, computed with
  ``torch.func.functional_call`` on a dict of tensors, so the module's own weights are untouched.
- **FOMAML** (Finn et al., 2017, first-order variant): adapt on the support set, then the outer
  gradient is the query-loss gradient *at the adapted weights*, ``g = ∇_φ L_query(φ')``, applied to
  θ (second-order terms dropped), averaged over ``meta_batch_size`` tasks.
- **Reptile** (Nichol et al., 2018): adapt on the whole task (support ∪ query), then move θ toward the
  adapted weights. The pseudo-gradient ``g = θ − θ'`` goes to the outer optimizer, so plain SGD with
  learning rate ε gives exactly ``θ ← θ + ε (θ' − θ)``.

The outer optimizer is any ``torch.optim`` optimizer prepared by accelerate; the meta-gradient is
averaged over processes with ``accelerator.reduce`` (each process draws its own episodes).

Example:
    >>> learner = MetaLearner(model=clf, optimizer=opt, accelerator=acc, config=MetaConfig())
    >>> logs = learner.outer_step([{"support": s, "query": q}])
    >>> accuracy = learner.adapt_and_score(s, q)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.func import functional_call

from hftl.errors import ConfigError

Batch = dict[str, torch.Tensor]
Params = dict[str, torch.Tensor]
Algorithm = Literal["fomaml", "reptile", "pretrain", "scratch"]


@dataclass
class MetaConfig:
    """Meta-learning loops (``meta:`` of the meta recipe)."""

    algorithm: Algorithm = field(
        default="fomaml",
        metadata={
            "help": "fomaml: first-order MAML; reptile: Reptile; pretrain: plain supervised training on the "
            "meta-training classes; scratch: no training (random init). All are scored the same way."
        },
    )
    baselines: list[Algorithm] = field(
        default_factory=list,
        metadata={"help": "Other algorithms run in the same job and scored on the same test episodes."},
    )
    outer_steps: int = field(
        default=1000, metadata={"help": "Outer (meta) optimizer steps; pretrain steps too."}
    )
    meta_batch_size: int = field(
        default=4, metadata={"help": "Episodes averaged per outer step (per process)."}
    )
    inner_steps: int = field(default=5, metadata={"help": "SGD steps of the inner loop in meta-training."})
    inner_lr: float = field(default=0.05, metadata={"help": "SGD learning rate α of the inner loop."})
    eval_inner_steps: int | None = field(
        default=None, metadata={"help": "SGD steps on each test episode's support set; null = `inner_steps`."}
    )
    eval_inner_lr: float | None = field(
        default=None, metadata={"help": "SGD learning rate on test episodes; null = `inner_lr`."}
    )
    pretrain_batch_size: int = field(default=64, metadata={"help": "Batch size of the `pretrain` algorithm."})
    lr_scheduler: Literal["constant", "linear", "cosine"] = field(
        default="constant",
        metadata={"help": "Outer learning-rate schedule (linear: annealed to 0, as Reptile)."},
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Fraction of outer steps with linear warm-up."}
    )
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "Clip the outer gradient; null = off."}
    )
    mixed_precision: Literal["no", "bf16"] = field(
        default="no", metadata={"help": "Autocast precision of every forward (bf16 on recent GPUs)."}
    )
    cpu: bool = field(default=False, metadata={"help": "Run on CPU even when a GPU is present."})
    log_every: int = field(default=50, metadata={"help": "Outer steps between logged training averages."})

    def __post_init__(self) -> None:
        names = ("outer_steps", "meta_batch_size", "pretrain_batch_size", "log_every")
        problems = [
            f"`meta.{n}` is {getattr(self, n)!r}; allowed: a positive integer."
            for n in names
            if getattr(self, n) < 1
        ]
        if self.inner_steps < 0 or (self.eval_inner_steps is not None and self.eval_inner_steps < 0):
            problems.append("`meta.inner_steps` / `meta.eval_inner_steps` must be >= 0.")
        if self.inner_lr <= 0 or (self.eval_inner_lr is not None and self.eval_inner_lr <= 0):
            problems.append(
                f"`meta.inner_lr` / `meta.eval_inner_lr` must be > 0; got {self.inner_lr}, {self.eval_inner_lr}."
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"`meta.warmup_ratio` is {self.warmup_ratio}; allowed: [0, 1).")
        if self.algorithm in self.baselines:
            problems.append(f"`meta.baselines` lists the main algorithm {self.algorithm!r}; remove it.")
        if problems:
            raise ConfigError(problems)


def logits_at(model: nn.Module, params: Params, batch: Batch) -> torch.Tensor:
    """Float logits of ``model`` run with ``params`` in place of its own weights (others unchanged)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return functional_call(model, params, args=(), kwargs=inputs).logits.float()


def initial_params(model: nn.Module) -> Params:
    """θ (the encoder's trainable weights, the module's own tensors) plus a zero N-way head."""
    params: Params = {n: p for n, p in model.encoder.named_parameters(prefix="encoder") if p.requires_grad}
    for n, p in model.head.named_parameters(prefix="head"):
        params[n] = torch.zeros_like(p, requires_grad=True)
    return params


def sgd_adapt(
    model: nn.Module, params: Params, batch: Batch, *, steps: int, lr: float, autocast: Any = None
) -> tuple[Params, list[torch.Tensor]]:
    """The inner loop: ``steps`` first-order SGD steps ``φ ← φ − lr ∇L(φ)`` on one batch.

    Args:
        model: the classifier (its own weights are not changed).
        params: the starting weights φ₀ (e.g. :func:`initial_params`).
        batch: inputs and ``labels``.
        steps: SGD steps; 0 returns ``params`` unchanged.
        lr: SGD learning rate.
        autocast: a context-manager factory for the forward pass (``accelerator.autocast``).

    Returns:
        The adapted weights (new leaf tensors that require grad) and each step's loss (detached).
    """
    losses = []
    for _ in range(steps):
        with autocast() if autocast else torch.enable_grad():
            logits = logits_at(model, params, batch)
        loss = F.cross_entropy(logits, batch["labels"])
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        params = {
            n: (p if g is None else p - lr * g).detach().requires_grad_()
            for (n, p), g in zip(params.items(), grads, strict=True)
        }
        losses.append(loss.detach())
    return params, losses


def fomaml_gradients(
    model: nn.Module, support: Batch, query: Batch, *, steps: int, lr: float, autocast: Any = None
) -> tuple[Params, dict[str, torch.Tensor]]:
    """First-order MAML for one task: ``∇_φ L_query(φ')`` at the support-adapted weights φ'.

    Returns:
        The gradient for every meta-learned (encoder) weight, and ``query_loss`` / ``query_acc``.
    """
    init = initial_params(model)
    adapted, _ = sgd_adapt(model, init, support, steps=steps, lr=lr, autocast=autocast)
    with autocast() if autocast else torch.enable_grad():
        logits = logits_at(model, adapted, query)
    loss = F.cross_entropy(logits, query["labels"])
    names = [n for n in init if not n.startswith("head.")]
    grads = torch.autograd.grad(loss, [adapted[n] for n in names], allow_unused=True)
    out = {n: torch.zeros_like(adapted[n]) if g is None else g for n, g in zip(names, grads, strict=True)}
    acc = (logits.argmax(-1) == query["labels"]).float().mean()
    return out, {"query_loss": loss.detach(), "query_acc": acc.detach()}


def reptile_delta(
    model: nn.Module, task: Batch, *, steps: int, lr: float, autocast: Any = None
) -> tuple[Params, dict[str, torch.Tensor]]:
    """Reptile for one task: the pseudo-gradient ``θ − θ'`` after ``steps`` SGD steps on the task.

    Returns:
        ``θ − θ'`` for every meta-learned (encoder) weight, and ``task_loss`` (the last inner step's).
    """
    init = initial_params(model)
    adapted, losses = sgd_adapt(model, init, task, steps=steps, lr=lr, autocast=autocast)
    delta = {n: (p.detach() - adapted[n].detach()) for n, p in init.items() if not n.startswith("head.")}
    return delta, ({"task_loss": losses[-1]} if losses else {})


class MetaLearner:
    """The outer loop: averages per-task meta-gradients and steps the outer optimizer.

    Args:
        model: the classifier; ``model.head`` is an N-way linear head (zeroed per episode).
        optimizer: the outer optimizer over the encoder's trainable weights (``accelerator.prepare``d).
        accelerator: the run's Accelerator (device, autocast, cross-process reduce, clipping).
        config: the ``meta:`` section.
        scheduler: outer learning-rate schedule (prepared), or None.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        accelerator: Accelerator,
        config: MetaConfig,
        scheduler: Any = None,
    ):
        self.model, self.optimizer, self.acc, self.cfg = model, optimizer, accelerator, config
        self.scheduler = scheduler
        self.meta_params = {
            n: p for n, p in model.encoder.named_parameters(prefix="encoder") if p.requires_grad
        }
        self._autocast = accelerator.autocast if accelerator.mixed_precision != "no" else None

    def outer_step(self, tasks: list[dict[str, Batch]]) -> dict[str, float]:
        """One meta-update from ``tasks`` (``{"support", "query"}`` for FOMAML, ``{"task"}`` for Reptile)."""
        if self.cfg.algorithm not in ("fomaml", "reptile"):
            raise ConfigError(
                f"`meta.algorithm` {self.cfg.algorithm!r} has no outer step; use fomaml or reptile."
            )
        self.model.train()
        total = {n: torch.zeros_like(p) for n, p in self.meta_params.items()}
        logs: dict[str, list[torch.Tensor]] = {}
        for task in tasks:
            if self.cfg.algorithm == "fomaml":
                grads, metrics = fomaml_gradients(
                    self.model, task["support"], task["query"], steps=self.cfg.inner_steps,
                    lr=self.cfg.inner_lr, autocast=self._autocast,
                )  # fmt: skip
            else:
                grads, metrics = reptile_delta(
                    self.model, task["task"], steps=self.cfg.inner_steps, lr=self.cfg.inner_lr,
                    autocast=self._autocast,
                )  # fmt: skip
            for n, g in grads.items():
                total[n] += g / len(tasks)
            for k, v in metrics.items():
                logs.setdefault(k, []).append(v)
        self.apply(total)
        return {k: float(torch.stack(v).mean()) for k, v in logs.items()}

    def apply(self, gradients: Params) -> None:
        """Sets ``p.grad`` (averaged over processes), clips, steps the optimizer and the schedule."""
        for n, p in self.meta_params.items():
            g = gradients[n]
            p.grad = self.acc.reduce(g, reduction="mean") if self.acc.num_processes > 1 else g
        if self.cfg.max_grad_norm is not None:
            self.acc.clip_grad_norm_(list(self.meta_params.values()), self.cfg.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def adapt_and_score(self, support: Batch, query: Batch) -> float:
        """Adapts a copy of θ + zero head on ``support`` (eval mode) and returns the query accuracy."""
        steps = self.cfg.inner_steps if self.cfg.eval_inner_steps is None else self.cfg.eval_inner_steps
        lr = self.cfg.inner_lr if self.cfg.eval_inner_lr is None else self.cfg.eval_inner_lr
        self.model.eval()
        adapted, _ = sgd_adapt(
            self.model, initial_params(self.model), support, steps=steps, lr=lr, autocast=self._autocast
        )
        with torch.no_grad(), self._autocast() if self._autocast else torch.enable_grad():
            logits = logits_at(self.model, adapted, query)
        self.model.train()
        return float((logits.argmax(-1) == query["labels"]).float().mean())


def supervised_step(
    model: nn.Module,
    batch: Batch,
    *,
    optimizer: Any,
    accelerator: Accelerator,
    config: MetaConfig,
    scheduler: Any = None,
) -> float:
    """One step of plain pretraining (cross-entropy on the meta-training classes, the model's own head)."""
    model.train()
    with accelerator.autocast():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    loss = F.cross_entropy(logits, batch["labels"])
    accelerator.backward(loss)
    if config.max_grad_norm is not None:
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95 % confidence interval, ``1.96 · s / √n``."""
    t = torch.tensor(values, dtype=torch.float64)
    half = 1.96 * float(t.std(unbiased=True)) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return float(t.mean()), half
