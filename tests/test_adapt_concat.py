"""One concatenated source + target forward in the adapt step gives the losses and gradients of two."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hftl.adaptation import (
    CORAL,
    DAN,
    DANN,
    MCC,
    AdaptationLoss,
    AdaptBatch,
    AdaptModel,
    Consistency,
    SourceOnly,
)
from hftl.adaptation.training import concat_applies, concatenated
from hftl.encoders import TextEncoder
from hftl.errors import ConfigError
from hftl.models import Classifier
from hftl.models.heads import LinearHead
from hftl.training import Progress

CPU = torch.device("cpu")


def tiny_classifier(tiny_bert: str) -> Classifier:
    """A LayerNorm encoder (tiny BERT) without dropout, so both paths draw no random masks."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    encoder = TextEncoder(config, processor=AutoTokenizer.from_pretrained(tiny_bert), pooling="mean")
    return Classifier(encoder, LinearHead(encoder.out_features, 2, dropout=0.0), ["neg", "pos"])


def paired_batch(tokenizer) -> tuple[dict, dict]:
    """Source texts shorter than target texts, so the concatenation pads the source."""
    source = tokenizer(
        ["good film", "bad", "a very good book", "not great"], padding=True, return_tensors="pt"
    )
    target = tokenizer(["the movie was not very good at all", "great", "bad book", "a film"], padding=True,
                       return_tensors="pt")  # fmt: skip
    source["labels"] = torch.tensor([1, 0, 1, 0])
    assert source["input_ids"].shape[1] < target["input_ids"].shape[1]
    return dict(source), dict(target)


def loss_and_grads(model: nn.Module, loss_fn: AdaptationLoss, batch: tuple) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss, _ = loss_fn(model, tuple(dict(part) for part in batch), Progress(step=5, total_steps=10))
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method_cls", [DANN, MCC, CORAL, DAN])
def test_concatenated_forward_matches_two_forwards(tiny_models: dict[str, str], method_cls: type) -> None:
    classifier = tiny_classifier(tiny_models["bert"])
    method = method_cls(in_features=classifier.encoder.out_features, num_classes=2)
    model = AdaptModel(classifier, method).train()
    batch = paired_batch(classifier.encoder.processor)
    two = AdaptationLoss(method, concat_domains="off")
    one = AdaptationLoss(method, concat_domains="on")
    calls = []
    hook = classifier.register_forward_hook(lambda m, args, kwargs_out: calls.append(1))
    loss_two, grads_two = loss_and_grads(model, two, batch)
    assert len(calls) == 2
    loss_one, grads_one = loss_and_grads(model, one, batch)
    assert len(calls) == 3  # one forward for both domains
    hook.remove()
    assert loss_one == pytest.approx(loss_two, abs=1e-5)
    assert grads_one.keys() == grads_two.keys()
    for key, grad in grads_two.items():
        torch.testing.assert_close(grads_one[key], grad, atol=1e-5, rtol=1e-4, msg=key)


def test_concatenation_pads_text_and_refuses_what_it_cannot_stack() -> None:
    source = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
    }
    target = {
        "input_ids": torch.ones(1, 5, dtype=torch.long),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
    }
    joined = concatenated(AdaptBatch(source, torch.zeros(2), target))
    assert joined["input_ids"].shape == (3, 5)
    assert joined["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    clips = AdaptBatch(
        {"input_values": torch.ones(2, 16000)}, torch.zeros(2), {"input_values": torch.ones(2, 8000)}
    )
    assert concatenated(clips) is None  # audio of other lengths: two forwards
    images = AdaptBatch(
        {"pixel_values": torch.ones(2, 3, 4, 4)}, torch.zeros(2), {"pixel_values": torch.ones(3, 3, 4, 4)}
    )
    assert concatenated(images)["pixel_values"].shape == (5, 3, 4, 4)


def test_concat_applies_only_where_numerics_hold(tiny_models: dict[str, str]) -> None:
    classifier = tiny_classifier(tiny_models["bert"])
    dann = DANN(in_features=classifier.encoder.out_features, num_classes=2)
    model = AdaptModel(classifier, dann)
    assert not concat_applies("auto", dann, model, CPU)  # auto: CUDA only, CPU results unchanged
    assert concat_applies("auto", dann, model, torch.device("cuda"))
    assert concat_applies("on", dann, model, CPU) and not concat_applies("off", dann, model, CPU)
    assert not concat_applies("on", SourceOnly(), model, CPU)  # one domain per batch
    consistency = Consistency(in_features=classifier.encoder.out_features, num_classes=2)
    assert not concat_applies("on", consistency, model, CPU)  # a training step of its own
    width = classifier.encoder.out_features
    bn_head = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, 2))
    bn_model = AdaptModel(Classifier(classifier.encoder, bn_head, ["neg", "pos"]), dann)
    assert not concat_applies("auto", dann, bn_model, torch.device("cuda"))
    with pytest.raises(ConfigError, match="BatchNorm.*concat_domains=auto"):
        concat_applies("on", dann, bn_model, CPU)


def test_adapt_recipe_with_one_forward_matches_two(tmp_path, tiny_models, monkeypatch) -> None:
    """`hftl run adapt` (DANN, tiny BERT without dropout) with `train.concat_domains=on` reports what `off` does."""
    import json

    from helpers import adapt_config, dump
    from transformers import AutoModel, AutoTokenizer

    from hftl.cli import main as hftl

    model = tmp_path / "bert_no_dropout"
    AutoModel.from_pretrained(
        tiny_models["bert"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    ).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(model)
    calls, concatenated_step = [], AdaptationLoss._concatenated_step
    monkeypatch.setattr(
        AdaptationLoss, "_concatenated_step", lambda *a: calls.append(1) or concatenated_step(*a)
    )
    results, steps = {}, {}
    for mode in ("off", "on"):
        (tmp_path / mode).mkdir()
        cfg = adapt_config(tmp_path / mode, str(model), "hftl.adaptation.DANN", hidden_features=16)
        cfg["train"]["concat_domains"] = mode
        assert hftl(["run", "adapt", "--config", dump(cfg, tmp_path / f"{mode}.yaml")]) == 0
        results[mode] = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())["results"]["dann"]
        steps[mode] = len(calls)
    assert steps == {"off": 0, "on": results["on"]["steps"]}  # the recipe passes train.concat_domains
    off, on = results["off"], results["on"]
    for key in ("target_test_acc", "source_val_acc", "selected_step"):
        assert on[key] == off[key], key
    assert len(on["history"]) == len(off["history"]) == 2
    for got, want in zip(on["history"], off["history"], strict=True):  # criteria, domain accuracy, ...
        assert got == pytest.approx(want, rel=1e-3, abs=1e-5)
