"""The run plumbing recipes share (hftl/training/run.py): trackers, evaluation loop, loaders, pre-tokenizing."""

from __future__ import annotations

import datasets
import pytest
import torch
from helpers import (
    adapt_config,
    base_config,
    distill_config,
    dump,
    fewshot_config,
    fewshot_csv,
    multitask_config,
    spy_on_trackers,
    text_encoder,
    text_files,
)
from torch import nn
from transformers import AutoTokenizer

from hftl.cli import main as hftl
from hftl.errors import ConfigError
from hftl.training import TrainConfig
from hftl.training.builders import build_accelerator
from hftl.training.run import eval_loader, gather_outputs, init_trackers, pretokenized


class Probe(nn.Module):
    """A linear layer with dropout that records, per call, its mode and the dtype its matmul ran in."""

    def __init__(self):
        super().__init__()
        self.linear, self.dropout = nn.Linear(3, 2), nn.Dropout(0.5)
        self.calls: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(self.dropout(x))
        self.calls.append((self.training, y.dtype))
        return y


def _rows(n: int = 5) -> torch.Tensor:
    return torch.arange(3 * n, dtype=torch.float32).reshape(n, 3)


def test_gather_outputs_runs_in_eval_mode_under_autocast_and_restores_the_mode(tmp_path):
    acc = build_accelerator(TrainConfig(mixed_precision="bf16", cpu=True), tmp_path)
    model = Probe().train()
    loader = acc.prepare(torch.utils.data.DataLoader(_rows(), batch_size=2))
    out = gather_outputs(acc, model, loader, lambda m, x: {"logits": m(x).float(), "rows": x})
    assert model.training  # restored
    assert model.calls == [(False, torch.bfloat16)] * 3  # eval mode (no dropout), inside autocast
    assert torch.equal(out["rows"], _rows())  # every example once, in the loader's order
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(out["logits"], model.eval()(_rows()).float())


def test_gather_outputs_restores_the_mode_after_an_error(tmp_path):
    acc = build_accelerator(TrainConfig(cpu=True), tmp_path)
    model = Probe().train()

    def broken(m, x):
        m(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        gather_outputs(acc, model, acc.prepare(torch.utils.data.DataLoader(_rows(), batch_size=2)), broken)
    assert model.training and model.calls == [(False, torch.float32)]


def test_eval_loader_uses_the_evaluation_batch_size(tmp_path):
    acc = build_accelerator(TrainConfig(cpu=True), tmp_path)
    assert TrainConfig(batch_size=3).evaluation_batch_size == 6  # default: twice batch_size
    assert TrainConfig(batch_size=3, eval_batch_size=4).evaluation_batch_size == 4
    loader = eval_loader(acc, list(range(10)), collate_fn=torch.tensor, config=TrainConfig(batch_size=2))
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # in order, 4 per batch


def test_pretokenized_only_when_the_encoder_asks(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    acc = build_accelerator(TrainConfig(cpu=True), tmp_path)
    split = datasets.Dataset.from_dict({"text": ["a good film", "bad"], "label": [1, 0]})

    class Encoder:
        pretokenize, max_length = True, 4
        processor = AutoTokenizer.from_pretrained(tiny_models["bert"])

    splits = pretokenized(acc, Encoder(), datasets.DatasetDict({"train": split}))
    assert (
        splits["train"].column_names[:2] == ["label", "input_ids"]
        and len(splits["train"][0]["input_ids"]) == 4
    )
    assert "input_ids" in pretokenized(acc, Encoder(), split).column_names  # one split
    Encoder.pretokenize = False
    assert pretokenized(acc, Encoder(), split) is split  # unchanged: audio, vision, pretokenize=false


def test_init_trackers_starts_report_to_with_the_run_settings(tmp_path, monkeypatch):
    spy_trackers = spy_on_trackers(monkeypatch)
    config = TrainConfig(cpu=True, batch_size=8, report_to=["tensorboard"])
    acc = build_accelerator(config, tmp_path)
    init_trackers(acc, config, method="dann", skipped=[1])
    acc.log({"train/loss": 0.5}, step=3)
    acc.end_training()
    [spy] = spy_trackers
    assert spy.run_name == "hftl" and spy.config["batch_size"] == 8 and spy.config["method"] == "dann"
    assert "skipped" not in spy.config and "report_to" not in spy.config  # scalars only
    assert spy.logs == [(3, {"train/loss": 0.5})]


def test_no_tracker_without_report_to(tmp_path, monkeypatch):
    spy_trackers = spy_on_trackers(monkeypatch)
    acc = build_accelerator(TrainConfig(cpu=True), tmp_path)
    init_trackers(acc, TrainConfig(cpu=True))
    acc.log({"train/loss": 0.5}, step=1)
    assert spy_trackers == []


def _finetune(tmp_path, model):
    return base_config(
        text_encoder(model), {"path": "csv", "data_files": text_files(tmp_path)}, tmp_path / "out"
    )


def _fewshot(tmp_path, model):
    files = {
        "train": fewshot_csv(tmp_path / "train.csv", 40, 0),
        "test": fewshot_csv(tmp_path / "test.csv", 12, 1),
    }
    return fewshot_config(tmp_path, text_encoder(model), {"path": "csv", "data_files": files})


CONFIGS = {
    "adapt": lambda tmp_path, model: adapt_config(
        tmp_path, model, "hftl.adaptation.DANN", hidden_features=16
    ),
    "finetune": _finetune,
    "fewshot": _fewshot,
    "multitask": multitask_config,
    "distill": distill_config,
}


@pytest.mark.parametrize("recipe", CONFIGS)
def test_every_recipe_reports_to_the_trackers_of_train_report_to(recipe, tmp_path, tiny_models, monkeypatch):
    """`train.report_to` was silently ignored by every recipe but finetune (no `init_trackers` call)."""
    spy_trackers = spy_on_trackers(monkeypatch)
    config = dump(CONFIGS[recipe](tmp_path, tiny_models["bert"]), tmp_path / "cfg.yaml")
    overrides = ["train.report_to=[tensorboard]", "train.max_steps=2", "train.log_every_steps=1"]
    assert hftl(["run", recipe, "--config", config, *overrides]) == 0
    [spy] = [s for s in spy_trackers if s.config is not None]  # a distill teacher run reports nowhere
    assert spy.run_name == "hftl" and spy.config["max_steps"] == 2
    # steps with a training loss (adapt names it per method: dann/train/loss)
    logged = {step for step, values in spy.logs for key in values if key.endswith("train/loss")}
    assert {1, 2} <= logged


# -- loss and LR schedule as components ---------------------------------------------------------------------
def _logged(spy, key: str) -> dict[int, float]:
    return {step: values[key] for step, values in spy.logs if key in values}


def test_lr_scheduler_component_steps_once_per_optimizer_step(tmp_path, tiny_models, monkeypatch):
    spy_trackers = spy_on_trackers(monkeypatch)
    cfg = _finetune(tmp_path, tiny_models["bert"])
    cfg["lr_scheduler"] = {"_component_": "torch.optim.lr_scheduler.StepLR", "step_size": 1, "gamma": 0.5}
    cfg["train"] |= {"report_to": ["tensorboard"], "max_steps": 3, "log_every_steps": 1}
    cfg["train"]["gradient_accumulation_steps"] = 2  # two micro-batches per optimizer step
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 0
    lrs = _logged(spy_trackers[-1], "train/lr")
    assert lrs == pytest.approx({1: 3e-3 / 2, 2: 3e-3 / 4, 3: 3e-3 / 8})  # halved at every optimizer step


def test_loss_component_replaces_cross_entropy(tmp_path, tiny_models, monkeypatch, capsys):
    spy_trackers = spy_on_trackers(monkeypatch)
    cfg = _finetune(tmp_path, tiny_models["bert"])
    cfg["loss"] = {"_component_": "torch.nn.MultiMarginLoss"}  # (C - 1) / C = 0.5 at near-zero logits
    cfg["head"]["_component_"] = "hftl.models.LinearHead"
    cfg["train"] |= {"report_to": ["tensorboard"], "max_steps": 1, "log_every_steps": 1}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 0
    assert "MultiMarginLoss" in capsys.readouterr().out  # the run summary names it
    first = _logged(spy_trackers[-1], "train/loss")[1]
    assert abs(first - 0.5) < 0.05  # cross-entropy would be about log 2 = 0.69


def test_schedule_given_twice_and_runtime_arguments_are_refused(tmp_path, tiny_models, capsys):
    cfg = _finetune(tmp_path, tiny_models["bert"])
    cfg["lr_scheduler"] = {"_component_": "hftl.training.WarmupSchedule", "name": "cosine"}
    path = dump(cfg, tmp_path / "cfg.yaml")
    assert hftl(["validate", "--config", path]) == 0
    assert hftl(["validate", "--config", path, "train.lr_scheduler=linear"]) == 2
    assert "both choose the learning-rate schedule" in capsys.readouterr().err
    assert hftl(["validate", "--config", path, "lr_scheduler.num_training_steps=5"]) == 2
    assert "`lr_scheduler.num_training_steps`: set by the recipe at run time" in capsys.readouterr().err


def test_warmup_schedule_follows_transformers(tmp_path):
    from transformers import get_cosine_with_hard_restarts_schedule_with_warmup

    from hftl.training import WarmupSchedule

    def lrs(make):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule, out = make(opt), []
        for _ in range(20):
            out.append(opt.param_groups[0]["lr"])
            opt.step(), schedule.step()
        return out

    ours = lrs(lambda o: WarmupSchedule(o, num_training_steps=20, name="cosine_with_restarts", warmup_ratio=0.1,
                                        options={"num_cycles": 2}))  # fmt: skip
    theirs = lrs(lambda o: get_cosine_with_hard_restarts_schedule_with_warmup(o, 2, 20, num_cycles=2))
    assert ours == pytest.approx(theirs)
    with pytest.raises(ConfigError, match="lr_scheduler"):
        WarmupSchedule(
            torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), num_training_steps=5, name="x"
        )
