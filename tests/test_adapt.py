"""Adaptation: the method contract on a toy classifier (each method's own term trains the weights it should,
``trade_off`` is applied once, ADDA's stages), the cycling loader, then the adapt recipe end to end on tiny
models (every method, baselines, leak-proof target data)."""

from __future__ import annotations

import copy
import json
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import TARGET_WORDS, adapt_config, spy_on_trackers, write_domain_csv
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from hftl import adaptation
from hftl.adaptation import AdaptationLoss, AdaptBatch, AdaptModel
from hftl.cli import main as hftl
from hftl.data.paired import PairedLoader, cycle_batches
from hftl.data.samplers import EpochSampler
from hftl.training import Progress

# --- the method contract on a toy classifier -----------------------------------------------------------

IN, FEAT, CLASSES = 5, 6, 3


class ToyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(IN, FEAT)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(pooled=torch.tanh(self.linear(x)))


class ToyClassifier(nn.Module):
    """``encoder`` + ``head`` with the outputs of :class:`hftl.models.Classifier` (features, logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = ToyEncoder(), nn.Linear(FEAT, CLASSES)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        features = self.encoder(x=x).pooled
        return SimpleNamespace(features=features, logits=self.head(features))


# method, constructor arguments, and the parameter groups its transfer term must train (the others get none)
CONTRACT = {
    "DANN": ({"hidden_features": 8}, {"encoder", "method"}),
    "CDAN": ({"hidden_features": 8, "entropy": True}, {"encoder", "method"}),  # predictions detached
    "MDD": ({"hidden_features": 8}, {"encoder", "method"}),  # the main head only gives argmax labels
    "MCC": ({}, {"encoder", "head"}),
    "DAN": ({}, {"encoder"}),
    "JAN": ({}, {"encoder", "head"}),
    "CORAL": ({}, {"encoder"}),
    "SelfTraining": ({"threshold": 0.01}, {"encoder", "head"}),
    "ADDA": (
        {"hidden_features": 8},
        {"encoder"},
    ),  # stage 2: the target encoder against a fixed discriminator
}
PROGRESS = Progress(step=6, total_steps=10)  # past ADDA's stage 1 (5 steps), GRL coefficients well above 0


def toy_model(name: str, **overrides) -> AdaptModel:
    args, _ = CONTRACT.get(name, ({}, set()))
    torch.manual_seed(0)
    classifier = ToyClassifier()
    method = getattr(adaptation, name)(in_features=FEAT, num_classes=CLASSES, **{**args, **overrides})
    return AdaptModel(classifier, method).double()


def toy_batch() -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(1)
    x_s, x_t = torch.randn(8, IN, generator=gen), torch.randn(8, IN, generator=gen) * 2 + 1
    labels = torch.randint(0, CLASSES, (8,), generator=gen)
    return {"x": x_s.double(), "labels": labels}, {"x": x_t.double(), "labels": labels.flip(0)}


def groups(model: AdaptModel) -> dict[str, list[nn.Parameter]]:
    c = model.classifier
    method = [p for n, p in model.method.named_parameters() if not n.startswith("source_encoder.")]
    return {"encoder": list(c.encoder.parameters()), "head": list(c.head.parameters()), "method": method}


def gradients(model: AdaptModel) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()
    }


@pytest.mark.parametrize("name", list(CONTRACT))
def test_the_transfer_term_alone_trains_the_methods_parameters(name):
    """Source cross-entropy left out: the method's own term must reach (and move) the weights it adapts."""
    model = toy_model(name)
    trained = CONTRACT[name][1]
    step = model.method.training_step(model, AdaptBatch.from_loader(toy_batch()), PROGRESS)
    assert step.transfer is not None and step.transfer.loss.requires_grad
    step.transfer.loss.backward()
    for group, params in groups(model).items():
        norm = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
        assert (norm > 0) == (group in trained), (group, norm)
    before = {g: [p.detach().clone() for p in params] for g, params in groups(model).items()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    moved = {
        g
        for g, params in groups(model).items()
        if any(not torch.equal(b, p) for b, p in zip(before[g], params, strict=True))
    }
    assert moved == trained


def test_adda_discriminator_term_trains_only_the_discriminator():
    model = toy_model("ADDA")
    step = model.method.training_step(model, AdaptBatch.from_loader(toy_batch()), PROGRESS)
    step.base.backward()  # ADDA's base term in stage 2: the discriminator's own loss
    grads = {
        g: sum(float(p.grad.abs().sum()) for p in ps if p.grad is not None) for g, ps in groups(model).items()
    }
    assert grads["method"] > 0 and grads["encoder"] == grads["head"] == 0


@pytest.mark.parametrize("name", list(CONTRACT))
def test_trade_off_is_applied_exactly_once(name):
    """The step's gradient is base + trade_off × transfer: 0 gives the source-only step, 2 doubles the term."""
    grads = {}
    for trade_off in (0.0, 1.0, 2.0):
        model = toy_model(name, trade_off=trade_off)
        torch.manual_seed(2)  # the same dropout masks in every run
        loss, _ = AdaptationLoss(model.method)(model, toy_batch(), PROGRESS)
        loss.backward()
        grads[trade_off] = gradients(model)
    for key, g0 in grads[0.0].items():
        torch.testing.assert_close(grads[2.0][key] - g0, 2 * (grads[1.0][key] - g0), rtol=1e-9, atol=1e-12)
    assert any(not torch.equal(grads[1.0][k], g0) for k, g0 in grads[0.0].items())  # the term is not empty
    if name == "ADDA":
        return  # its base term in stage 2 is the discriminator's loss, not the source cross-entropy
    source_only = toy_model("SourceOnly")
    loss, logs = AdaptationLoss(source_only.method)(source_only, toy_batch()[0], PROGRESS)
    loss.backward()
    assert logs == {}
    reference = gradients(source_only)
    for key, value in reference.items():  # the classifier's step with trade_off 0 is the source-only step
        torch.testing.assert_close(grads[0.0][key], value, rtol=0, atol=0)


def test_target_labels_never_reach_a_method():
    source, target = toy_batch()
    batch = AdaptBatch.from_loader((source, target))
    assert "labels" not in batch.target and "labels" not in batch.source
    assert (
        torch.equal(batch.labels, source["labels"]) and "labels" in source
    )  # the loader's batch is not changed


def test_adda_keeps_its_stage_and_source_encoder_in_the_state_dict():
    """Resume: the source encoder copy and the stage flag travel with the model's state; the copy is taken once."""
    model = toy_model("ADDA")
    encoder = model.classifier.encoder
    with torch.no_grad():  # "stage 1 training"
        encoder.linear.weight.add_(1.0)
    stage1 = copy.deepcopy(encoder.state_dict())
    loss, logs = AdaptationLoss(model.method)(model, toy_batch(), PROGRESS)
    assert set(logs) == {"domain_acc"} and logs["domain_acc"].dim() == 0
    assert bool(model.method.stage2_started) and not any(
        p.requires_grad for p in model.classifier.head.parameters()
    )
    with torch.no_grad():  # "stage 2 training" moves the target encoder only
        encoder.linear.weight.add_(1.0)
    model.method.start_stage2()  # idempotent: the copy stays at the stage-1 weights
    source_encoder = model.method.source_encoder.state_dict()
    assert all(torch.equal(source_encoder[k], v) for k, v in stage1.items())

    resumed = toy_model("ADDA")
    resumed.load_state_dict(model.state_dict())
    assert bool(resumed.method.stage2_started)
    resumed.method.start_stage2()
    assert all(torch.equal(resumed.method.source_encoder.state_dict()[k], v) for k, v in stage1.items())


def test_adda_trains_stage1_on_source_labels_only():
    model = toy_model("ADDA")
    step = model.method.training_step(
        model, AdaptBatch.from_loader(toy_batch()), Progress(step=4, total_steps=10)
    )
    assert step.transfer is None and not bool(model.method.stage2_started)
    expected = nn.functional.cross_entropy(model(x=toy_batch()[0]["x"]).logits, toy_batch()[0]["labels"])
    torch.testing.assert_close(step.base, expected)


# --- the cycling loader ---------------------------------------------------------------------------------


def _numbers_loader(n: int, *, batch_size: int = 2, seed: int = 0) -> DataLoader:
    return DataLoader(list(range(n)), batch_size=batch_size, sampler=EpochSampler(n, shuffle=True, seed=seed))


def test_cycled_batches_are_a_function_of_epoch_and_position():
    loader = _numbers_loader(6)  # 3 batches per cycle
    first = [b.tolist() for b in islice(cycle_batches(loader, epoch=2), 10)]
    assert sorted(sum(first[:3], [])) == list(range(6)) and first[:3] != first[3:6]  # each cycle reshuffles
    resumed = [b.tolist() for b in islice(cycle_batches(loader, epoch=2, start=7), 3)]
    assert resumed == first[7:10]
    assert [b.tolist() for b in islice(cycle_batches(loader, epoch=3), 3)] != first[:3]


def test_paired_loader_resumes_exactly_and_cycles_the_shorter_side():
    paired = PairedLoader(_numbers_loader(10, seed=0), _numbers_loader(4, seed=1))  # 5 pairs, target cycles
    paired.set_epoch(1)
    full = [(s.tolist(), t.tolist()) for s, t in paired]
    assert len(full) == len(paired) == 5
    assert [(s.tolist(), t.tolist()) for s, t in paired.skip_first_batches(3)] == full[3:]


# --- the recipe end to end --------------------------------------------------------------------------------


def run(cfg: dict, path: Path) -> dict:
    path.write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(path)]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


METHODS = [
    ("hftl.adaptation.DANN", {"hidden_features": 16}),
    ("hftl.adaptation.CDAN", {"hidden_features": 16, "entropy": True}),
    ("hftl.adaptation.MDD", {"hidden_features": 16}),
    ("hftl.adaptation.MCC", {}),
    ("hftl.adaptation.DAN", {}),
    ("hftl.adaptation.JAN", {}),
    ("hftl.adaptation.CORAL", {}),
    ("hftl.adaptation.SelfTraining", {"threshold": 0.6}),
    ("hftl.adaptation.ADDA", {"hidden_features": 16}),
]


@pytest.mark.parametrize("method,args", METHODS, ids=[m.rsplit(".", 1)[-1] for m, _ in METHODS])
def test_each_method_trains_and_lowers_source_loss(tmp_path, tiny_models, method, args):
    metrics = run(adapt_config(tmp_path, tiny_models["bert"], method, **args), tmp_path / "cfg.yaml")
    result = metrics["results"][metrics["method"]]
    assert result["steps"] == 2 * 5  # 36 source train rows / batch 8 = 5 pairs per epoch (target cycles)
    history = result["history"]
    if method.endswith("ADDA"):  # stage 2 trains only the target encoder against the discriminator
        assert "eval_train_domain_acc" in history[-1]
    assert {"im", "snd", "bnm", "source_val_acc"} <= {k[5:] for k in history[0] if k.startswith("eval_")}
    assert "dev" in result["final_scores"]  # periodically only for `dev` or selection.score_all
    assert "eval_target_test_acc" not in history[0]  # only at the selected step (report.target_curve)
    assert history[-1]["eval_source_val_acc"] >= 0.75  # the source task is learnt while adapting


def test_baselines_run_beside_the_method_and_report(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["report"] = {"baselines": ["source_only", "target_oracle"], "diagnostics": True, "plot": "pca"}
    metrics = run(cfg, tmp_path / "cfg.yaml")
    assert list(metrics["results"]) == ["source_only", "target_oracle", "dann"]
    out = capsys.readouterr().out
    assert "Adaptation report" in out and "source_only" in out and "target_oracle" in out
    pad = {name: r.get("proxy_a_distance") for name, r in metrics["results"].items()}
    # source-only's trained features are the reference: nothing computed before training, no oracle PAD
    assert set(pad["source_only"]) == set(pad["dann"]) == {"after"} and pad["target_oracle"] is None
    assert 0.0 <= pad["source_only"]["after"] <= 2.0 and 0.0 <= pad["dann"]["after"] <= 2.0
    assert (Path(cfg["output_dir"]) / "features_dann.png").stat().st_size > 1000
    assert metrics["selection_criterion"] == "im"


def test_target_training_labels_cannot_change_the_model(tmp_path, tiny_models):
    """Leak test: flip every target *training* label; the trained weights must be bit-identical."""
    weights = []
    for flip in (False, True):
        sub = tmp_path / f"flip{flip}"
        sub.mkdir()
        train = write_domain_csv(sub / "target_train.csv", 32, TARGET_WORDS, 1, flip_labels=flip)
        cfg = adapt_config(
            sub, tiny_models["bert"], "hftl.adaptation.DANN", target_train=train, hidden_features=16
        )
        run(cfg, sub / "cfg.yaml")
        model_dir = Path(cfg["output_dir"]) / "model"
        weights.append(
            {
                **load_file(model_dir / "head.safetensors"),
                **load_file(model_dir / "encoder" / "model.safetensors"),
            }
        )
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert (weights[0][name] == weights[1][name]).all(), name


def test_target_with_labels_in_config_is_refused(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.CORAL")
    cfg["target"]["unlabeled_splits"] = []  # trying to keep target training labels
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "`target.unlabeled_splits`: set by the recipe at run time" in capsys.readouterr().err


def test_every_run_reports_to_the_trackers_under_its_name(tmp_path, tiny_models, monkeypatch):
    """`train.report_to` was ignored by the adapt recipe; its runs (baselines, method) share the trackers."""
    spy_trackers = spy_on_trackers(monkeypatch)
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["report"]["baselines"] = ["source_only"]
    cfg["train"].update({"report_to": ["tensorboard"], "max_steps": 2, "eval_every_steps": 2})
    run(cfg, tmp_path / "cfg.yaml")
    [spy] = spy_trackers
    assert spy.run_name == "hftl" and spy.config["method"] == "dann" and spy.config["max_steps"] == 2
    logged = {(step, key) for step, values in spy.logs for key in values}
    for name in ("source_only", "dann"):
        assert {(1, f"{name}/train/loss"), (2, f"{name}/train/loss"), (2, f"{name}/eval/im")} <= logged
    assert (1, "dann/train/domain_acc") in logged  # the transfer term's metrics, read at log steps
