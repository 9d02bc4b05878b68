"""Multi-task heads, task sampling, `hftl run multitask` and LwF end to end on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import SENTIMENT, STRENGTH, TOPIC, dump, multitask_config, task_data

from hftl.cli import main as hftl
from hftl.models import LinearHead, MultiTaskClassifier
from hftl.training.builders import build_loader


def test_heads_get_gradients_only_from_their_tasks_examples(tiny_models):
    from hftl.encoders import TextEncoder

    enc = TextEncoder(tiny_models["bert"], max_length=16)
    model = MultiTaskClassifier(
        enc,
        {"a": LinearHead(32, 2, dropout=0.0), "b": LinearHead(32, 3, dropout=0.0)},
        {"a": ["x", "y"], "b": list("pqr")},
    )
    batch = enc.collator(train=False)([{"text": "a good movie"}, {"text": "bad film"}])
    out = model(task="a", **batch)
    assert out.logits.shape == (2, 2) and out.others == {}
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["a"].parameters())
    assert all(p.grad is None for p in model.heads["b"].parameters())  # no gradient from task a's batch
    assert model(task="b", also=("a",), **batch).others["a"].shape == (2, 2)
    with pytest.raises(KeyError, match="unknown task"):
        model(task="c", **batch)


def _loaders(sizes: dict[str, int]):
    return {
        name: build_loader(
            list(range(n)), collate_fn=lambda xs, name=name: (name, xs), batch_size=2, shuffle=True
        )
        for name, n in sizes.items()
    }


@pytest.mark.parametrize("sampling", ["proportional", "round_robin"])
def test_multitask_loader_schedule_and_exact_resume(sampling):
    from hftl.recipes.multitask import MultiTaskLoader

    loader = MultiTaskLoader(_loaders({"a": 8, "b": 4}), sampling=sampling, seed=0)  # 4 and 2 batches
    loader.set_epoch(1)
    full = [(task, b[1]) for task, b in loader]
    assert len(full) == len(loader) == (6 if sampling == "proportional" else 8)
    tasks = [t for t, _ in full]
    if sampling == "proportional":  # every batch of every task exactly once
        assert sorted(x for t, xs in full if t == "a" for x in xs) == list(range(8))
        assert tasks.count("b") == 2
    else:
        assert tasks == ["a", "b"] * 4
    assert [(t, b[1]) for t, b in loader.skip_first_batches(3)] == full[3:]  # resumes mid-epoch exactly


@pytest.fixture
def mt_config(tmp_path, tiny_models) -> dict:
    return multitask_config(tmp_path, tiny_models["bert"])


def test_multitask_recipe_end_to_end_predicts_every_task(tmp_path, mt_config):
    import hftl as h

    assert hftl(["run", "multitask", "--config", dump(mt_config, tmp_path / "mt.yaml")]) == 0
    out = Path(mt_config["output_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 * 2 * 6  # round robin: 2 tasks × 6 batches per epoch
    assert set(metrics["tasks"]) == {"sentiment", "topic"}
    assert metrics["tasks"]["topic"]["test"]["num_samples"] == 12
    assert metrics["tasks"]["topic"]["test"]["accuracy"] > 0.5  # 3 classes with disjoint words
    topic = h.load(str(out), task="topic")
    assert topic(["this is song band guitar"])[0]["label"] in TOPIC
    assert set(h.load(str(out))(["this is good"])[0]["scores"]) == set(SENTIMENT)  # default = first task
    assert (
        hftl(["eval", str(out), "--data", mt_config["tasks"]["sentiment"]["data"]["data_files"]["test"]]) == 0
    )
    from hftl.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="no task 'weather'"):
        h.load(str(out), task="weather")


def test_lwf_keeps_old_outputs_while_plain_finetuning_drifts(tmp_path, mt_config):
    """Old task = sentiment (a saved model); new task = word strength. LwF must move the old head's outputs less."""
    # group_by_length off: the old model's batches do not depend on how lengths are counted (words or tokens)
    train = {"epochs": 1, "batch_size": 8, "group_by_length": False}
    old = dict(mt_config, recipe="finetune", output_dir=str(tmp_path / "old"), train=train)
    old.update(data=mt_config["tasks"]["sentiment"]["data"], head=mt_config["tasks"]["sentiment"]["head"])
    for key in ("tasks", "multitask"):
        old.pop(key)
    assert hftl(["run", "finetune", "--config", dump(old, tmp_path / "old.yaml")]) == 0
    cfg = {k: v for k, v in mt_config.items() if k not in ("encoder", "adapter")}
    cfg.update(
        init_from=str(tmp_path / "old"),
        tasks={
            "strength": {
                "data": task_data(tmp_path, "strength", STRENGTH),
                "head": mt_config["tasks"]["topic"]["head"],
            }
        },
        lwf={"task": "sentiment", "weight": 10.0, "temperature": 2.0, "baseline": True},
        old_task_data=mt_config["tasks"]["sentiment"]["data"],
    )
    cfg["optimizer"]["lr"] = 1e-2  # large steps: plain fine-tuning forgets fast
    assert hftl(["run", "multitask", "--config", dump(cfg, tmp_path / "lwf.yaml")]) == 0
    metrics = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())
    lwf, plain = metrics["old_task"], metrics["old_task"]["plain_finetune"]
    assert lwf["lwf_weight"] == 10.0 and plain["lwf_weight"] == 0.0
    assert lwf["drift"] < 0.1, lwf  # old-task probabilities stay within tolerance
    assert plain["drift"] > 1.3 * lwf["drift"], (lwf, plain)  # measured: 0.134 vs 0.048
    assert lwf["accuracy_after"] >= plain["accuracy_after"]
    import hftl as h

    both = h.load(cfg["output_dir"], task="sentiment"), h.load(cfg["output_dir"], task="strength")
    assert [set(p(["this is good"])[0]["scores"]) for p in both] == [set(SENTIMENT), set(STRENGTH)]


def test_multitask_config_errors(tmp_path, mt_config, capsys):
    mt_config["tasks"]["topic"]["head"] = {"_component_": "hftl.models.LinearHead", "num_labels": 3}
    mt_config["lwf"] = {"weight": 1.0}
    assert hftl(["run", "multitask", "--config", dump(mt_config, tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "`tasks.topic.head.num_labels`: set by the recipe" in err
    mt_config["tasks"]["topic"]["head"].pop("num_labels")
    assert hftl(["run", "multitask", "--config", dump(mt_config, tmp_path / "bad2.yaml")]) == 2
    assert "need `init_from`" in capsys.readouterr().err
