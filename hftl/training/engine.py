"""The training loop every recipe uses, on Accelerate.

Gradient accumulation, mixed precision, clipping, LR schedule, periodic validation with early
stopping, atomic checkpoints with exact mid-epoch resume, trackers, and tqdm on the main process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from hftl.errors import ConfigError, TrainingError
from hftl.training.checkpoint import (
    BEST_FILENAME,
    CHECKPOINT_DIRNAME,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from hftl.training.checkpoint_manifest import sha256_file
from hftl.training.config import TrainConfig
from hftl.training.run_dir import record_output, writing

logger = logging.getLogger(__name__)

# (model, batch) -> (loss, scalar logs); the default is cross-entropy on `labels`.
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
# () -> validation metrics such as {"accuracy": 0.9, "loss": 0.3}
EvalFn = Callable[[], dict[str, float]]
# (optimizer steps done) -> None, e.g. hftl.training.layerwise.GradualUnfreezer
StepHook = Callable[[int], None]


def cross_entropy_step(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    labels = batch.pop("labels")
    loss = nn.functional.cross_entropy(model(**batch).logits, labels)
    return loss, {}


@dataclass
class TrainState:
    """Loop position and selection state; saved in every checkpoint (``hftl_state.json``)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_sha256: str | None = None  # of best_trainable.safetensors, checked before it is restored


class Engine:
    """Runs training for a prepared model/optimizer/scheduler/loader set.

    Args:
        accelerator: the run's Accelerator (the objects below must already be ``prepare``d).
        model: the model being trained.
        optimizer: its optimizer.
        scheduler: LR scheduler stepped once per optimizer step.
        train_loader: training batches; its sampler must have ``set_epoch`` (see
            :class:`hftl.data.samplers.EpochSampler`) for exact resume.
        config: the ``train:`` section.
        output_dir: where ``checkpoints/`` and the best weights go.
        evaluate: returns validation metrics; ``None`` disables validation and model selection.
        loss_fn: computes the loss of one batch (default: cross-entropy on ``labels``).
        metric: key of ``evaluate()``'s result that selects the best model (default
            ``config.metric_for_best``).
        higher_is_better: direction of ``metric`` (default: lower is better only for ``loss``).
        total_steps: optimizer steps of the whole run.
        on_step: called with the optimizer-step count before training starts (after a resume) and
            after every optimizer step; state that is a function of the step (gradual unfreezing)
            is thereby the same in a resumed and an uninterrupted run.
    """

    def __init__(
        self,
        *,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        train_loader: Any,
        config: TrainConfig,
        output_dir: str | Path,
        total_steps: int,
        evaluate: EvalFn | None = None,
        loss_fn: LossFn = cross_entropy_step,
        metric: str | None = None,
        higher_is_better: bool | None = None,
        on_step: StepHook | None = None,
    ):
        self.acc, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.train_loader, self.cfg, self.output_dir = train_loader, config, Path(output_dir)
        self.total_steps, self.evaluate, self.loss_fn = total_steps, evaluate, loss_fn
        self.metric = metric or config.metric_for_best
        self.higher_is_better = self.metric != "loss" if higher_is_better is None else higher_is_better
        self.on_step = on_step or (lambda step: None)
        self.state = TrainState()
        self.best_path = self.output_dir / CHECKPOINT_DIRNAME / BEST_FILENAME
        self._saved_step: int | None = None  # step of the newest checkpoint this run wrote or resumed from

    # -- checkpoints -------------------------------------------------------------------------------
    def maybe_resume(self) -> None:
        if not self.cfg.resume:
            return
        path = latest_checkpoint(self.output_dir, strict=True)  # hashes checked; corrupt -> the previous one
        if path is None:
            return
        self.state = TrainState(
            **{
                k: v
                for k, v in load_checkpoint(self.acc, path).items()
                if k in TrainState.__dataclass_fields__
            }
        )
        self.acc.print(
            f"Resumed from {path} (step {self.state.step}, epoch {self.state.epoch}, batch {self.state.batch_in_epoch})"
        )
        self._saved_step = self.state.step

    def save(self) -> None:
        save_checkpoint(
            self.acc,
            self.output_dir,
            step=self.state.step,
            state=asdict(self.state),
            keep_last=self.cfg.keep_last,
        )
        self._saved_step = self.state.step

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        model = self.acc.unwrap_model(self.model)
        # what the optimizer may change, including parameters frozen for now (gradual unfreezing)
        optimized = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        names = {n for n, p in model.named_parameters() if p.requires_grad or id(p) in optimized}
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}

    def _save_best(self) -> None:
        if self.acc.is_main_process:
            with writing("the best weights", self.best_path):
                self.best_path.parent.mkdir(parents=True, exist_ok=True)
                record_output(self.best_path.parent)
                tmp = self.best_path.with_suffix(".tmp")
                save_file(self._trainable_state(), str(tmp), metadata={"step": str(self.state.step)})
                tmp.replace(self.best_path)  # atomic: resume never sees half a file
        self.acc.wait_for_everyone()
        # every process hashes the file: all of them must agree on whether it is restored at the end
        self.state.best_sha256 = sha256_file(self.best_path)

    def _restore_best(self) -> None:
        state = self.state
        if not self.best_path.exists():
            logger.warning(
                "Cannot restore the best weights: %s is missing; keeping the final weights.", self.best_path
            )
            return
        if state.best_sha256 is not None and sha256_file(self.best_path) != state.best_sha256:
            logger.warning(
                "Not restoring %s: its content does not match the sha256 recorded when it was saved (changed "
                "or corrupt); keeping the final weights.", self.best_path,
            )  # fmt: skip
            return
        with safe_open(str(self.best_path), framework="pt") as f:
            written_at = (f.metadata() or {}).get("step")
        if written_at != str(state.best_step):
            # e.g. a later run wrote it, then this one resumed from an older checkpoint and never beat it
            logger.warning(
                "Not restoring %s: it holds step %s, but the best validation step is %s; keeping the final weights.",
                self.best_path, written_at, state.best_step,
            )  # fmt: skip
            return
        self.acc.print(
            f"Restoring the best validation weights (step {state.best_step}, {self.metric} {state.best_metric:.4f})"
        )
        self.acc.unwrap_model(self.model).load_state_dict(load_file(str(self.best_path)), strict=False)

    # -- loop --------------------------------------------------------------------------------------
    def _validate(self, progress: tqdm) -> bool:
        """Evaluates, tracks the best model; returns True when early stopping triggers."""
        if self.evaluate is None:
            return False
        metrics = self.evaluate()
        self.model.train()
        value = metrics[self.metric]
        self.state.history.append({"step": self.state.step, **{f"eval_{k}": v for k, v in metrics.items()}})
        self.acc.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.state.step)
        lower_better = not self.higher_is_better
        best = self.state.best_metric
        if best is None or (value < best if lower_better else value > best):
            self.state.best_metric, self.state.best_step, self.state.bad_evals = value, self.state.step, 0
            self._save_best()
        else:
            self.state.bad_evals += 1
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        progress.write(
            f"step {self.state.step}: validation {shown} (best {self.state.best_metric:.4f} @ {self.state.best_step})"
        )
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.state.bad_evals >= patience

    def _check_finite(self, mean_loss: float) -> None:
        """Stops a diverged run before anything of it is saved (checked where the loss reaches the host)."""
        if math.isfinite(mean_loss):
            return
        lr = max(group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups)
        what = "NaN" if math.isnan(mean_loss) else "infinite"
        raise TrainingError(
            f"the training loss became {what} by step {self.state.step} (peak learning rate {lr:.3g}); nothing "
            "from the diverged steps was saved. Fix: lower `optimizer.lr`, keep `train.max_grad_norm` set "
            "(gradient clipping), or use `train.mixed_precision=bf16` instead of fp16."
        )

    def _optimizer_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        with self.acc.accumulate(self.model):
            loss, logs = self.loss_fn(self.model, batch)
            self.acc.backward(loss)
            if self.acc.sync_gradients and self.cfg.max_grad_norm is not None:
                self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), logs

    def _epoch_loader(self, epoch: int, *, skip: int) -> Any:
        """The training batches of ``epoch``, without its first ``skip`` (already trained on before a resume)."""
        loader = self.train_loader
        if hasattr(loader, "set_epoch"):
            # accelerate's DataLoaderShard re-applies its own epoch counter to the sampler in __iter__ (and a
            # fresh process starts it at 0): set the counter, which also sets the sampler's epoch.
            loader.set_epoch(epoch)
        else:
            sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None) or getattr(
                loader, "sampler", None
            )
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        if skip and hasattr(loader, "skip_first_batches"):  # e.g. hftl.data.paired.PairedLoader
            loader = loader.skip_first_batches(skip)
        elif (
            skip
        ):  # skip_first_batches copies the epoch counter and skips indices, so nothing is collated twice
            loader = self.acc.skip_first_batches(loader, skip)
        return loader

    def fit(self) -> TrainState:
        """Trains to ``total_steps`` (or early stop), restores the best weights, returns the final state."""
        self.maybe_resume()
        cfg, state = self.cfg, self.state
        self.on_step(state.step)
        self.model.train()
        progress = tqdm(
            total=self.total_steps,
            initial=state.step,
            desc="train",
            disable=not self.acc.is_local_main_process,
            dynamic_ncols=True,
        )
        try:
            self._train_loop(progress)
        finally:
            progress.close()  # before any error message, so it starts on its own line
        self.acc.wait_for_everyone()
        if cfg.load_best_at_end and state.best_step is not None and state.best_step != state.step:
            self._restore_best()
        return state

    def _train_loop(self, progress: tqdm) -> None:
        """Optimizer steps with logging, validation and checkpoints until ``total_steps`` or early stop."""
        cfg, state = self.cfg, self.state
        patience = cfg.early_stopping_patience
        early_stopped = self.evaluate is not None and patience is not None and state.bad_evals >= patience
        running, count, stop = (
            torch.zeros((), device=self.acc.device),
            0,
            state.step >= self.total_steps or early_stopped,
        )
        while not stop:
            for batch in self._epoch_loader(state.epoch, skip=state.batch_in_epoch):
                loss, logs = self._optimizer_step(batch)
                state.batch_in_epoch += 1
                running += loss  # stays on device: no host sync per step
                count += 1
                if not self.acc.sync_gradients:
                    continue
                state.step += 1
                self.on_step(state.step)
                progress.update(1)
                if state.step % cfg.log_every_steps == 0:
                    mean_loss = (running / count).item()
                    self._check_finite(mean_loss)
                    lr = self.scheduler.get_last_lr()[0]
                    progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", epoch=state.epoch)
                    self.acc.log(
                        {
                            "train/loss": mean_loss,
                            "train/lr": lr,
                            **{f"train/{k}": v for k, v in logs.items()},
                        },
                        step=state.step,
                    )
                    running, count = torch.zeros((), device=self.acc.device), 0
                stop = state.step >= self.total_steps
                if stop and not cfg.eval_every_steps:
                    break  # final validation and checkpoint happen after the loop
                evaluated = False
                due = cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0
                if due or (cfg.save_every_steps and state.step % cfg.save_every_steps == 0):
                    self._check_finite((running / max(count, 1)).item())  # never save diverged weights
                if due:
                    stop, evaluated = self._validate(progress) or stop, True
                if (cfg.save_every_steps and state.step % cfg.save_every_steps == 0) or (
                    evaluated and not cfg.save_every_steps
                ):
                    self.save()
                if stop:
                    break
            else:  # epoch finished
                self._check_finite((running / max(count, 1)).item())
                state.epoch += 1
                state.batch_in_epoch = 0
                if not cfg.eval_every_steps:
                    stop = self._validate(progress) or stop
                    if not cfg.save_every_steps:
                        self.save()
                stop = stop or state.step >= self.total_steps
        self._check_finite((running / max(count, 1)).item())
        if self.evaluate is not None and (not state.history or state.history[-1]["step"] != state.step):
            self._validate(progress)  # the run ended between validations: score the final weights too
        if self._saved_step != state.step:
            self.save()  # the final state, so re-running the same command finds the run finished


def steps_for(config: TrainConfig, batches_per_epoch: int | None) -> int:
    """Optimizer steps of a run: ``max_steps`` or ``epochs × ceil(batches / accumulation)``.

    Raises:
        ConfigError: when ``batches_per_epoch`` is None (streamed data) and ``max_steps`` is not set.
    """
    if config.max_steps:
        return config.max_steps
    if batches_per_epoch is None:
        raise ConfigError(
            "`train.max_steps` is required when the training data is streamed (`data.streaming: true`): a "
            "stream's length is unknown, so `train.epochs` cannot size the run (or the LR schedule). Fix: set "
            "e.g. `train.max_steps=10000`."
        )
    return config.epochs * math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
