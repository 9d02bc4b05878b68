"""The training Engine on a toy linear classifier: accumulation, clipping, schedule, early stopping, logs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import default_collate

from hftl.training import (
    BestRecord,
    BestTracker,
    Engine,
    Progress,
    TrainConfig,
    WeightsInMemory,
    cross_entropy_step,
    steps_for,
)
from hftl.training.builders import build_accelerator, build_loader, build_scheduler
from hftl.training.engine import RunningMeans

os.environ["HF_HUB_OFFLINE"] = "1"

IN, CLASSES = 6, 3


class ToyClassifier(nn.Module):
    """``forward(**batch)`` -> an object with ``.logits``, like :class:`hftl.models.Classifier`."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(IN, CLASSES)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.linear(self.dropout(x)))


def toy_dataset(n: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def make_engine(
    output_dir: Path,
    *,
    evaluate: Callable[[], dict[str, float]] | None = None,
    n: int = 32,
    lr: float = 0.1,
    hook: Callable | None = None,
    dropout: float = 0.0,
    loss_fn: Callable = cross_entropy_step,
    **train: object,
) -> Engine:
    """A prepared toy setup; ``train`` overrides TrainConfig (default: constant LR, no clipping, CPU)."""
    defaults = dict(lr_scheduler="constant", warmup_ratio=0.0, max_grad_norm=None, cpu=True, batch_size=8)
    config = TrainConfig(**{**defaults, **train})
    accelerator = build_accelerator(config, output_dir)
    torch.manual_seed(0)  # same initial weights in every engine
    model = ToyClassifier(dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if hook is not None:
        optimizer.register_step_pre_hook(hook)  # fires only on real optimizer steps
    loader = build_loader(
        toy_dataset(n), collate_fn=default_collate, batch_size=config.batch_size, shuffle=True
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    total = steps_for(config, len(loader))
    scheduler = accelerator.prepare(build_scheduler(config, optimizer, total_steps=total, num_processes=1))
    return Engine(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=loader,
        config=config,
        output_dir=output_dir,
        total_steps=total,
        evaluate=evaluate,
        loss_fn=loss_fn,
    )


def weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.acc.unwrap_model(engine.model).state_dict().items()}


def scripted_evaluate(
    values: Sequence[float], key: str, snapshots: dict[int, dict], engine_box: list
) -> Callable:
    """An evaluate() returning ``values`` in turn and recording the weights it scored, by step."""
    calls = iter(values)

    def evaluate() -> dict[str, float]:
        engine = engine_box[0]
        snapshots[engine.state.step] = weights(engine)
        return {key: next(calls)}

    return evaluate


@pytest.mark.parametrize(
    ("overrides", "batches", "expected"),
    [
        ({"epochs": 3, "gradient_accumulation_steps": 2}, 7, 12),  # 3 × ceil(7 / 2)
        ({"epochs": 2, "gradient_accumulation_steps": 1}, 7, 14),
        ({"epochs": 1, "gradient_accumulation_steps": 4}, 8, 2),
        ({"epochs": 3, "gradient_accumulation_steps": 2, "max_steps": 5}, 7, 5),  # max_steps wins
        ({"epochs": 1, "max_steps": 50}, 7, 50),
    ],
)
def test_steps_for(overrides: dict, batches: int, expected: int) -> None:
    assert steps_for(TrainConfig(**overrides), batches) == expected


def test_accumulation_equals_the_large_batch(tmp_path: Path) -> None:
    small = make_engine(tmp_path / "a", batch_size=4, gradient_accumulation_steps=2, epochs=2)
    small_state = small.fit()
    small_weights = weights(small)
    large = make_engine(tmp_path / "b", batch_size=8, gradient_accumulation_steps=1, epochs=2)
    large_state = large.fit()
    # 32 examples: 8 micro-batches of 4 -> 4 optimizer steps per epoch, like 4 batches of 8
    assert small_state.step == large_state.step == 8
    assert small_state.epoch == large_state.epoch
    initial = ToyClassifier()
    for name, value in weights(large).items():
        assert not torch.allclose(value, initial.state_dict()[name])  # training moved the weights
        torch.testing.assert_close(small_weights[name], value, atol=1e-6, rtol=0)


def test_grad_norm_is_clipped(tmp_path: Path) -> None:
    norms: list[float] = []

    def record(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    make_engine(tmp_path / "free", hook=record, epochs=1).fit()
    assert min(norms) > 0.05  # the raw gradients are larger than the clip below
    norms.clear()
    make_engine(tmp_path / "clip", hook=record, epochs=1, max_grad_norm=0.05).fit()
    assert len(norms) == 4
    assert norms == pytest.approx([0.05] * 4, rel=1e-4)


def test_lr_warms_up_then_decays(tmp_path: Path) -> None:
    lrs: list[float] = []
    engine = make_engine(
        tmp_path,
        hook=lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]),
        lr=1.0,
        epochs=2,
        batch_size=4,
        gradient_accumulation_steps=2,  # the schedule counts optimizer steps, not micro-batches
        lr_scheduler="linear",
        warmup_ratio=0.25,
    )
    engine.fit()
    # 8 optimizer steps, 2 of warm-up: lr(k) = k / 2 for k < 2, then (8 - k) / 6
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert engine.scheduler.get_last_lr()[0] == pytest.approx(0.0)


def test_early_stopping_restores_the_best_step(tmp_path: Path) -> None:
    box: list[Engine] = []
    snapshots: dict[int, dict] = {}
    accuracies = [0.5, 0.7, 0.6, 0.65, 0.69, 0.95, 0.99]
    engine = make_engine(
        tmp_path,
        evaluate=scripted_evaluate(accuracies, "accuracy", snapshots, box),
        epochs=10,
        eval_every_steps=1,
        early_stopping_patience=3,
    )
    box.append(engine)
    state = engine.fit()
    # best at step 2, then 3 evaluations without improvement: stop at step 5 (0.95 never seen)
    assert state.step == 5
    assert [h["eval_accuracy"] for h in state.history] == accuracies[:5]
    assert (state.best_step, state.best_metric, state.bad_evals) == (2, 0.7, 3)
    final = weights(engine)
    for name, value in snapshots[2].items():
        assert torch.equal(final[name], value)
        assert not torch.equal(snapshots[5][name], value)

    # re-running the finished command resumes from the final checkpoint and trains no further
    box[0] = rerun = make_engine(
        tmp_path, evaluate=lambda: pytest.fail("no evaluation expected"), epochs=10, eval_every_steps=1,
        early_stopping_patience=3,
    )  # fmt: skip
    assert rerun.fit().step == 5
    for name, value in weights(rerun).items():
        assert torch.equal(value, snapshots[2][name])


@pytest.mark.parametrize(
    ("key", "values", "best"), [("loss", [0.9, 0.5, 0.7, 0.6], 2), ("accuracy", [0.9, 0.5, 0.7, 0.6], 1)]
)
def test_metric_for_best_direction(tmp_path: Path, key: str, values: list[float], best: int) -> None:
    box: list[Engine] = []
    snapshots: dict[int, dict] = {}
    engine = make_engine(
        tmp_path, evaluate=scripted_evaluate(values, key, snapshots, box), max_steps=4, eval_every_steps=1,
        metric_for_best=key,
    )  # fmt: skip
    box.append(engine)
    state = engine.fit()
    assert (state.step, state.best_step, state.best_metric) == (4, best, values[best - 1])
    final = weights(engine)
    assert all(torch.equal(final[k], v) for k, v in snapshots[best].items())


def test_load_best_at_end_false_keeps_the_final_weights(tmp_path: Path) -> None:
    box: list[Engine] = []
    snapshots: dict[int, dict] = {}
    engine = make_engine(
        tmp_path, evaluate=scripted_evaluate([0.9, 0.1, 0.1], "accuracy", snapshots, box), max_steps=3,
        eval_every_steps=1, load_best_at_end=False,
    )  # fmt: skip
    box.append(engine)
    assert engine.fit().best_step == 1
    final = weights(engine)
    assert all(torch.equal(final[k], v) for k, v in snapshots[3].items())


def test_best_file_from_another_step_is_not_restored(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, max_steps=2)
    engine.fit()
    before = weights(engine)
    # a best file left by a run that got further than the checkpoint this run resumed from
    stale = {k: torch.zeros_like(v) for k, v in before.items()}
    engine.best_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(stale, str(engine.best_path), metadata={"step": "7"})
    engine.state.best_step, engine.state.best_metric, engine.state.best_sha256 = 1, 0.5, None
    engine.best.restore(engine.state, final_step=2, metric="accuracy")
    assert all(torch.equal(weights(engine)[k], v) for k, v in before.items())
    save_file(stale, str(engine.best_path), metadata={"step": "1"})
    engine.best.restore(engine.state, final_step=2, metric="accuracy")
    assert all(torch.equal(weights(engine)[k], v) for k, v in stale.items())


class Interrupted(Exception):
    pass


def test_mid_epoch_resume_is_exact(tmp_path: Path) -> None:
    """Dropout RNG, data order, optimizer and schedule all come back: an interrupted run ends bit-exact."""
    train = dict(epochs=3, save_every_steps=5, lr_scheduler="linear", warmup_ratio=0.2, dropout=0.3, lr=0.5)
    reference = make_engine(tmp_path / "reference", **train)
    reference.fit()

    calls = 0

    def crash_at_step_7(model: nn.Module, batch: dict[str, torch.Tensor], progress: Progress):
        nonlocal calls
        calls += 1
        if calls == 7:  # 4 batches per epoch: the checkpoint at step 5 is mid-epoch 1
            raise Interrupted
        return cross_entropy_step(model, batch, progress)

    with pytest.raises(Interrupted):
        make_engine(tmp_path / "resumed", loss_fn=crash_at_step_7, **train).fit()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.manual_seed(123)  # the restored RNG state, not this, must drive dropout
    resumed = make_engine(tmp_path / "resumed", **train)
    state = resumed.fit()
    assert state.step == 12
    for name, value in weights(reference).items():
        assert torch.equal(weights(resumed)[name], value), name


def test_loss_fn_gets_the_progress_and_its_logs_are_averaged_at_log_steps(
    tmp_path: Path, monkeypatch
) -> None:
    """Logs stay on the device between log steps; the Engine reads their window means once per log step."""
    seen: list[Progress] = []

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], progress: Progress):
        seen.append(progress)
        loss, _ = cross_entropy_step(model, batch, progress)
        odd = torch.tensor(1.0 if len(seen) % 2 else float("nan"))  # nan: nothing measured in this batch
        return loss, {"step": torch.tensor(float(progress.step)), "odd": odd, "host": 2.0}

    engine = make_engine(tmp_path, loss_fn=loss_fn, epochs=1, batch_size=4, gradient_accumulation_steps=2,
                         log_every_steps=2)  # fmt: skip
    logged, reads = [], []
    monkeypatch.setattr(engine.acc, "log", lambda values, step: logged.append((step, values)))
    read = RunningMeans.read
    monkeypatch.setattr(RunningMeans, "read", lambda self: reads.append(1) or read(self))
    engine.fit()
    # 8 micro-batches, 2 per optimizer step: both micro-batches of a step see the same progress
    assert [(p.step, p.total_steps) for p in seen] == [(s, 4) for s in (0, 0, 1, 1, 2, 2, 3, 3)]
    assert seen[2].fraction == 0.25
    assert [step for step, _ in logged] == [2, 4] and len(reads) == 2
    for (_, values), mean_step in zip(logged, (0.5, 2.5), strict=True):
        assert values["train/step"] == mean_step  # the window's mean, not the last batch's value
        assert values["train/odd"] == 1.0 and values["train/host"] == 2.0
        assert math.isfinite(values["train/loss"])


def test_running_means_leave_out_nan_and_never_measured_logs() -> None:
    running = RunningMeans(torch.device("cpu"))
    running.add(torch.tensor(1.0), {"a": torch.tensor(float("nan")), "b": torch.tensor(4.0)})
    running.add(torch.tensor(3.0), {"a": torch.tensor(float("nan"))})
    assert running.read() == (2.0, {"b": 4.0})  # "a" was never measured: not logged
    running.reset()
    assert running.read() == (0.0, {})


def test_best_tracker_restores_in_memory_weights_unless_the_last_step_was_best() -> None:
    model = nn.Linear(2, 1)
    tracker, record = BestTracker(WeightsInMemory(model), higher_is_better=False, patience=None), BestRecord()
    tracker.update(record, 0.5, step=1)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not tracker.update(record, 0.7, step=2)  # a loss: lower is better; no patience, no stop
    tracker.restore(record, final_step=2, metric="loss")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
    with torch.no_grad():
        model.weight.add_(1.0)
    tracker.update(record, 0.1, step=3)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    tracker.restore(record, final_step=3, metric="loss")  # the final step is the best: nothing to do
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())
    assert (record.best_step, record.best_metric, record.bad_evals) == (3, 0.1, 0)
