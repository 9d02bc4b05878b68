"""Evaluation through a merged copy (hftl.adapters.merged): same predictions, the training model untouched."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from hftl.adaptation.scoring import collect_outputs
from hftl.adapters import IA3, Lora
from hftl.adapters.merged import evaluation_view, has_unmerged_adapters, merged_copy
from hftl.encoders import TextEncoder
from hftl.evaluation.predictions import collect_predictions
from hftl.models import Classifier, LinearHead
from hftl.training.config import TrainConfig
from hftl.training.run import eval_loader

TEXTS = ["a fine film", "dull", "the plot never lands, sadly", "great", "an odd, long and winding story"]


def _model(tiny_models, adapter) -> Classifier:
    torch.manual_seed(0)
    encoder = adapter.apply(TextEncoder(tiny_models["bert"]))
    model = Classifier(encoder, LinearHead(encoder.out_features, 2), ["neg", "pos"])
    for name, p in model.named_parameters():  # non-zero adapters, so merging changes the base weights
        if "lora_B" in name or "ia3_l" in name:
            torch.nn.init.normal_(p, mean=1.0 if "ia3_l" in name else 0.0, std=0.3)
    return model


def _loader(acc, model):
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS)]
    lengths = [len(t) for t in TEXTS]
    collate = model.encoder.collator(train=False)
    return eval_loader(acc, rows, collate_fn=collate, config=TrainConfig(eval_batch_size=2), lengths=lengths)


def _snapshot(model):
    return {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


def _step(model, optimizer, batch):
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    torch.nn.functional.cross_entropy(out.logits, batch["labels"]).backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("adapter", [Lora(r=4, target_modules=["query", "value", "dense"]), IA3()])
def test_merged_copy_predicts_as_the_unmerged_model_and_leaves_it_alone(tiny_models, adapter):
    acc = Accelerator(cpu=True)
    model = _model(tiny_models, adapter)
    before = _snapshot(model)
    copy = merged_copy(model)
    assert has_unmerged_adapters(model) and not has_unmerged_adapters(copy)
    assert not any("lora_" in n or "ia3_" in n for n, _ in copy.named_parameters())
    merged = collect_predictions(acc, model, _loader(acc, model))["probabilities"]
    model.eval()
    with torch.no_grad():
        batch = model.encoder.collator(train=False)([{"text": t} for t in TEXTS])
        reference = model(**batch).logits.softmax(-1).numpy()
    assert merged == pytest.approx(reference, abs=1e-5)
    after = _snapshot(model)
    assert before.keys() == after.keys()
    for name, (value, grad) in before.items():
        assert torch.equal(value, after[name][0]) and grad == after[name][1], name


def test_the_copy_is_rebuilt_only_when_weights_change(tiny_models):
    acc = Accelerator(cpu=True)
    model = _model(tiny_models, Lora(r=2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, fused=True)
    first = evaluation_view(model, acc)
    assert evaluation_view(model, acc) is first  # nothing changed: the same copy
    batch = next(iter(_loader(acc, model)))
    _step(model, optimizer, batch)  # a fused optimizer: no version-counter bump, found by value
    second = evaluation_view(model, acc)
    assert second is not first
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})  # a restored checkpoint
    assert evaluation_view(model, acc) is not second
    frozen = _model(tiny_models, Lora(r=2))
    frozen.encoder.backbone = frozen.encoder.backbone.merge_and_unload()
    assert evaluation_view(frozen, acc) is frozen  # nothing to merge: the model itself


def test_training_continues_bit_identically_when_evaluated_between_steps(tiny_models):
    """Evaluations through the merged copy between optimizer steps change nothing in training."""
    acc = Accelerator(cpu=True)
    runs = []
    for evaluate in (False, True):
        model = _model(tiny_models, Lora(r=2, dropout=0.1))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
        loader = _loader(acc, model)
        torch.manual_seed(1)
        for batch in [next(iter(loader))] * 3:
            model.train()
            _step(model, optimizer, dict(batch))
            if evaluate:
                collect_outputs(acc, model, loader)
                assert model.training  # the copy is evaluated; the model's own mode is kept
        runs.append(_snapshot(model))
    for name, (value, grad) in runs[0].items():
        assert torch.equal(value, runs[1][name][0]) and grad == runs[1][name][1], name
