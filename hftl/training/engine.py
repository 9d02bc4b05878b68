"""The training loop every recipe uses, on Accelerate.

Gradient accumulation, mixed precision, clipping, LR schedule, periodic validation with early
stopping, atomic checkpoints with exact mid-epoch resume, trackers, and tqdm on the main process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from hftl.errors import ConfigError, TrainingError
from hftl.training.acceleration import buckets_for, compile_for_training, pad_to_bucket
from hftl.training.best import BestRecord, BestTracker, WeightsFile
from hftl.training.checkpoint import (
    BEST_FILENAME,
    CHECKPOINT_DIRNAME,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from hftl.training.checkpoint_weights import TrainableSubset
from hftl.training.config import TrainConfig
from hftl.training.running import Logs, RunningMeans


@dataclass(frozen=True)
class Progress:
    """Where training stands when the loss of a batch is computed; the Engine passes it to ``loss_fn``.

    Example:
        >>> Progress(step=25, total_steps=100).fraction
        0.25
    """

    step: int  # optimizer steps done before this batch
    total_steps: int  # optimizer steps of the whole run

    @property
    def fraction(self) -> float:
        """``step / total_steps`` in ``[0, 1)``, e.g. for a warm-up schedule of a loss weight."""
        return self.step / self.total_steps


# (model, batch, progress) -> (loss, logs); the default is cross-entropy on `labels`.
LossFn = Callable[[nn.Module, Any, Progress], tuple[torch.Tensor, Logs]]
# () -> validation metrics such as {"accuracy": 0.9, "loss": 0.3}
EvalFn = Callable[[], dict[str, float]]
# Keys an `evaluate()` result may carry to steer the loop (read and removed, never logged): SELECTABLE 0.0
# keeps this evaluation from becoming the best checkpoint (e.g. a collapsed adaptation run,
# hftl.adaptation.collapse), counting it as not improving; STOP_TRAINING 1.0 ends training after it.
SELECTABLE, STOP_TRAINING = "selectable", "stop_training"
# (optimizer steps done) -> None, e.g. hftl.training.layerwise.GradualUnfreezer
StepHook = Callable[[int], None]


def cross_entropy_step(
    model: nn.Module, batch: dict[str, torch.Tensor], progress: Progress | None = None
) -> tuple[torch.Tensor, Logs]:
    labels = batch.pop("labels")
    loss = nn.functional.cross_entropy(model(**batch).logits, labels)
    return loss, {}


@dataclass
class TrainState(BestRecord):
    """Loop position and selection state; saved in every checkpoint (``hftl_state.json``).

    The best validation point (``best_metric``, ``best_step``, ``bad_evals``, ``best_sha256``) comes from
    :class:`~hftl.training.best.BestRecord`.
    """

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    history: list[dict[str, float]] = field(default_factory=list)


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
        evaluate: returns validation metrics; ``None`` disables validation and model selection. The result
            may veto this evaluation as the best one (:data:`SELECTABLE`) or stop training (:data:`STOP_TRAINING`).
        loss_fn: ``loss_fn(model, batch, progress)`` gives the loss of one batch and scalar logs (detached
            tensors, read to the host only at log steps); ``progress`` is a :class:`Progress`. Default:
            cross-entropy on ``labels``. With ``train.compile`` it gets the compiled module (same weights), and
            with length buckets (``train.length_buckets``) the padded batch (:mod:`hftl.training.acceleration`).
        metric: key of ``evaluate()``'s result that selects the best model (default
            ``config.metric_for_best``).
        higher_is_better: direction of ``metric`` (default: lower is better only for ``loss``).
        total_steps: optimizer steps of the whole run.
        on_step: called with the optimizer-step count before training starts (after a resume) and
            after every optimizer step; state that is a function of the step (gradual unfreezing)
            is thereby the same in a resumed and an uninterrupted run.
        log_prefix: put before every tracker key (``train/loss`` → ``dann/train/loss``) when one run trains
            several models into the same trackers.
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
        log_prefix: str = "",
    ):
        self.acc, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.train_loader, self.cfg, self.output_dir = train_loader, config, Path(output_dir)
        self.total_steps, self.evaluate, self.loss_fn = total_steps, evaluate, loss_fn
        self.metric = metric or config.metric_for_best
        self.higher_is_better = self.metric != "loss" if higher_is_better is None else higher_is_better
        self.on_step = on_step or (lambda step: None)
        self.log_prefix = log_prefix
        self.state = TrainState()
        self.best_path = self.output_dir / CHECKPOINT_DIRNAME / BEST_FILENAME
        self.best = BestTracker(
            WeightsFile(accelerator, model, optimizer, self.best_path),
            higher_is_better=self.higher_is_better, patience=config.early_stopping_patience, log=accelerator.print,
        )  # fmt: skip
        self._saved_step: int | None = None  # step of the newest checkpoint this run wrote or resumed from
        # checkpoints hold what training can change (not a frozen base); captured before any step is taken
        self.weights = TrainableSubset.capture(accelerator)
        # `train.compile`: the training forward runs through a compiled module sharing `model`'s weights;
        # everything else (evaluation, checkpoints, clipping) keeps `model` itself
        self.step_model = compile_for_training(model, config)
        self.buckets = buckets_for(config)  # token lengths batches are padded to (static shapes), or None
        self.timings = {"evaluation": 0.0, "checkpoints": 0.0}  # wall seconds of this process, see fit()

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
        start = time.perf_counter()
        save_checkpoint(
            self.acc,
            self.output_dir,
            step=self.state.step,
            state=asdict(self.state),
            keep_last=self.cfg.keep_last,
            weights=self.weights,
        )
        self._saved_step = self.state.step
        self.timings["checkpoints"] += time.perf_counter() - start

    def _timed_validate(self, progress: tqdm) -> bool:
        start = time.perf_counter()
        try:
            return self._validate(progress)
        finally:
            self.timings["evaluation"] += time.perf_counter() - start

    # -- loop --------------------------------------------------------------------------------------
    def _validate(self, progress: tqdm) -> bool:
        """Evaluates, tracks the best model; returns True when early stopping triggers."""
        if self.evaluate is None:
            return False
        metrics = self.evaluate()
        self.model.train()
        selectable, halt = metrics.pop(SELECTABLE, 1.0), metrics.pop(STOP_TRAINING, 0.0)
        state = self.state
        state.history.append({"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}})
        self.acc.log({f"{self.log_prefix}eval/{k}": v for k, v in metrics.items()}, step=state.step)
        stop = self.best.update(state, metrics[self.metric], step=state.step, selectable=bool(selectable))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        best = "none yet" if state.best_metric is None else f"{state.best_metric:.4f} @ {state.best_step}"
        progress.write(f"step {state.step}: validation {shown} (best {best})")
        return stop or bool(halt)

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

    def _optimizer_step(self, batch: Any) -> tuple[torch.Tensor, Logs]:
        with self.acc.accumulate(self.model):
            batch = pad_to_bucket(batch, self.buckets)
            loss, logs = self.loss_fn(self.step_model, batch, Progress(self.state.step, self.total_steps))
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

    def _log(self, running: RunningMeans, progress: tqdm) -> None:
        """Means since the last log step to the trackers and the progress bar (the one host sync of a step)."""
        mean_loss, logs = running.read()
        running.reset()
        self._check_finite(mean_loss)
        lr = self.scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", epoch=self.state.epoch)
        train_logs = {"loss": mean_loss, "lr": lr, **logs}
        self.acc.log({f"{self.log_prefix}train/{k}": v for k, v in train_logs.items()}, step=self.state.step)

    def fit(self) -> TrainState:
        """Trains to ``total_steps`` (or early stop), restores the best weights, returns the final state.

        ``self.timings`` then holds the wall seconds of this call spent in ``train`` (the steps, the loop's
        logging, resuming), ``evaluation`` (the periodic validations) and ``checkpoints`` (saves).
        """
        start = time.perf_counter()
        self.timings = {"evaluation": 0.0, "checkpoints": 0.0}
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
        if cfg.load_best_at_end:
            self.best.restore(state, final_step=state.step, metric=self.metric)
        self.timings["train"] = time.perf_counter() - start - sum(self.timings.values())
        return state

    def _train_loop(self, progress: tqdm) -> None:
        """Optimizer steps with logging, validation and checkpoints until ``total_steps`` or early stop."""
        cfg, state = self.cfg, self.state
        early_stopped = self.evaluate is not None and self.best.exhausted(state)
        running, stop = RunningMeans(self.acc.device), state.step >= self.total_steps or early_stopped
        while not stop:
            for batch in self._epoch_loader(state.epoch, skip=state.batch_in_epoch):
                loss, logs = self._optimizer_step(batch)
                state.batch_in_epoch += 1
                running.add(loss, logs)
                if not self.acc.sync_gradients:
                    continue
                state.step += 1
                self.on_step(state.step)
                progress.update(1)
                if state.step % cfg.log_every_steps == 0:
                    self._log(running, progress)
                stop = state.step >= self.total_steps
                if stop and not cfg.eval_every_steps:
                    break  # final validation and checkpoint happen after the loop
                evaluated = False
                due = cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0
                if due or (cfg.save_every_steps and state.step % cfg.save_every_steps == 0):
                    self._check_finite(running.mean_loss().item())  # never save diverged weights
                if due:
                    stop, evaluated = self._timed_validate(progress) or stop, True
                if (cfg.save_every_steps and state.step % cfg.save_every_steps == 0) or (
                    evaluated and not cfg.save_every_steps
                ):
                    self.save()
                if stop:
                    break
            else:  # epoch finished
                self._check_finite(running.mean_loss().item())
                state.epoch += 1
                state.batch_in_epoch = 0
                if not cfg.eval_every_steps:
                    stop = self._timed_validate(progress) or stop
                    if not cfg.save_every_steps:
                        self.save()
                stop = stop or state.step >= self.total_steps
        self._check_finite(running.mean_loss().item())
        if self.evaluate is not None and (not state.history or state.history[-1]["step"] != state.step):
            self._timed_validate(progress)  # the run ended between validations: score the final weights too
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
