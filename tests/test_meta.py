"""Meta-learning: N-way K-shot episodes, first-order MAML and Reptile updates, the meta recipe end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate import Accelerator
from helpers import meta_config
from torch import nn

from hftl.cli import main as hftl
from hftl.data.episodes import EpisodeConfig, EpisodeDataset, EpisodeSampler
from hftl.errors import ConfigError, DataError
from hftl.models import Classifier, LinearHead
from hftl.training.meta import (
    MetaConfig,
    MetaLearner,
    fomaml_gradients,
    initial_params,
    mean_ci95,
    reptile_delta,
    sgd_adapt,
)

# --- episodes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_way,k_shot,q_queries", [(5, 1, 15), (3, 5, 2), (2, 1, 1)])
def test_episodes_have_n_classes_times_k_plus_q_rows_and_no_overlap(n_way, k_shot, q_queries):
    labels = [c for c in range(8) for _ in range(20)]  # 8 classes x 20 rows, class-major
    allowed = [0, 2, 3, 5, 6, 7]  # classes 1 and 4 are held out
    sampler = EpisodeSampler(labels, n_way=n_way, k_shot=k_shot, q_queries=q_queries, classes=allowed, seed=3)
    for index in range(50):
        ep = sampler.episode(index)
        assert len(ep.support) == n_way * k_shot and len(ep.query) == n_way * q_queries
        assert not set(ep.support) & set(ep.query)
        assert len(set(ep.support)) == len(ep.support) and len(set(ep.query)) == len(ep.query)
        assert len(set(ep.classes)) == n_way and set(ep.classes) <= set(allowed)
        assert sorted(ep.support_labels) == sorted(list(range(n_way)) * k_shot)
        assert sorted(ep.query_labels) == sorted(list(range(n_way)) * q_queries)
        for rows, episode_labels in ((ep.support, ep.support_labels), (ep.query, ep.query_labels)):
            assert [labels[i] for i in rows] == [ep.classes[y] for y in episode_labels]  # remapped 0..N-1


def test_episode_depends_only_on_seed_and_index():
    labels = [c for c in range(6) for _ in range(10)]
    a = EpisodeSampler(labels, n_way=3, k_shot=2, q_queries=3, seed=7)
    b = EpisodeSampler(labels, n_way=3, k_shot=2, q_queries=3, seed=7)
    assert [b.episode(i) for i in (4, 0, 9)] == [a.episode(i) for i in (4, 0, 9)]  # any order
    assert a.episode(0) != a.episode(1)
    assert EpisodeSampler(labels, n_way=3, k_shot=2, q_queries=3, seed=8).episode(0) != a.episode(0)


def test_sampler_refuses_small_classes_and_too_few_classes():
    labels = [0] * 10 + [1] * 10 + [2] * 3
    with pytest.raises(DataError, match=r"classes \{2: 3\}"):
        EpisodeSampler(labels, n_way=2, k_shot=1, q_queries=5)
    with pytest.raises(DataError, match="`episodes.n_way` = 3"):
        EpisodeSampler(labels, n_way=3, k_shot=1, q_queries=5, classes=[0, 1])
    with pytest.raises(ConfigError, match="`episodes.k_shot`"):
        EpisodeConfig(k_shot=0)


def test_episode_dataset_collates_support_query_and_joint_batches():
    pool = [{"x": float(i), "label": i // 4} for i in range(16)]  # 4 classes x 4 rows

    def collate(examples):
        return {
            "x": torch.tensor([[ex["x"]] for ex in examples]),
            "labels": torch.tensor([ex["label"] for ex in examples]),
        }

    sampler = EpisodeSampler([ex["label"] for ex in pool], n_way=2, k_shot=1, q_queries=2, seed=0)
    item = EpisodeDataset(pool, sampler, collate=collate, length=3)[1]
    ep = sampler.episode(1)
    assert item["support"]["x"].squeeze(1).tolist() == [float(i) for i in ep.support]
    assert item["support"]["labels"].tolist() == list(ep.support_labels)  # episode labels, not pool labels
    assert item["query"]["labels"].tolist() == [0, 0, 1, 1]
    joint = EpisodeDataset(pool, sampler, collate=collate, length=3, mode="joint")[1]["task"]
    assert joint["x"].shape == (6, 1) and joint["labels"].tolist() == [0, 1, 0, 0, 1, 1]


# --- algorithms on a toy classifier --------------------------------------------------------------


class ToyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        return SimpleNamespace(pooled=torch.tanh(self.lin(x)))


def toy_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(ToyEncoder(), LinearHead(4, 2, dropout=0.0), ["a", "b"])


def toy_batch(seed: int, n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, generator=g), "labels": torch.arange(n) % 2}


def manual_sgd(model: Classifier, batch, *, steps: int, lr: float) -> Classifier:
    """Reference inner loop: a copy with a zero head, trained by torch.optim.SGD."""
    copy_ = copy.deepcopy(model)
    nn.init.zeros_(copy_.head[1].weight), nn.init.zeros_(copy_.head[1].bias)
    opt = torch.optim.SGD(copy_.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(copy_(x=batch["x"]).logits, batch["labels"]).backward()
        opt.step()
    return copy_


@pytest.mark.parametrize("steps", [1, 3])
def test_inner_step_equals_manual_sgd_and_leaves_the_model_untouched(steps):
    model, batch = toy_model(), toy_batch(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted, losses = sgd_adapt(model, initial_params(model), batch, steps=steps, lr=0.3)
    reference = dict(manual_sgd(model, batch, steps=steps, lr=0.3).named_parameters())
    assert set(adapted) == set(reference) and len(losses) == steps
    for name, value in adapted.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-7)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    if steps == 1:  # zero head: the first step moves only the head
        assert torch.equal(adapted["encoder.lin.weight"], model.encoder.lin.weight)
        assert adapted["head.1.weight"].abs().sum() > 0


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights():
    model, support, query = toy_model(), toy_batch(1, 4), toy_batch(2, 8)
    grads, logs = fomaml_gradients(model, support, query, steps=2, lr=0.5)
    adapted = manual_sgd(model, support, steps=2, lr=0.5)
    adapted.zero_grad()
    loss = nn.functional.cross_entropy(adapted(x=query["x"]).logits, query["labels"])
    loss.backward()
    assert set(grads) == {"encoder.lin.weight", "encoder.lin.bias"}  # the head is not meta-learned
    torch.testing.assert_close(
        grads["encoder.lin.weight"], adapted.encoder.lin.weight.grad, rtol=0, atol=1e-7
    )
    torch.testing.assert_close(grads["encoder.lin.bias"], adapted.encoder.lin.bias.grad, rtol=0, atol=1e-7)
    assert abs(float(logs["query_loss"]) - float(loss.detach())) < 1e-6


def learner(model: Classifier, algorithm: str, *, lr: float) -> MetaLearner:
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if n.startswith("encoder.")], lr=lr)
    config = MetaConfig(algorithm=algorithm, inner_steps=3, inner_lr=0.4)
    return MetaLearner(model=model, optimizer=opt, accelerator=Accelerator(cpu=True), config=config)


def test_reptile_outer_update_moves_theta_toward_the_adapted_weights_by_epsilon():
    model, eps = toy_model(), 0.25
    tasks = [{"task": toy_batch(3)}, {"task": toy_batch(4)}]
    theta = {n: p.detach().clone() for n, p in model.encoder.named_parameters(prefix="encoder")}
    adapted = [sgd_adapt(model, initial_params(model), t["task"], steps=3, lr=0.4)[0] for t in tasks]
    delta, _ = reptile_delta(model, tasks[0]["task"], steps=3, lr=0.4)
    torch.testing.assert_close(
        delta["encoder.lin.weight"], theta["encoder.lin.weight"] - adapted[0]["encoder.lin.weight"]
    )
    learner(model, "reptile", lr=eps).outer_step(tasks)
    for name, p in model.encoder.named_parameters(prefix="encoder"):
        target = sum(a[name] for a in adapted) / 2  # θ' averaged over the meta-batch
        torch.testing.assert_close(p.detach(), theta[name] + eps * (target - theta[name]), rtol=0, atol=1e-6)
    assert model.head[1].weight.grad is None  # the head stays out of the outer update


def test_fomaml_outer_update_is_sgd_on_the_mean_query_gradient():
    model, beta = toy_model(), 0.1
    tasks = [
        {"support": toy_batch(5, 4), "query": toy_batch(6)},
        {"support": toy_batch(7, 4), "query": toy_batch(8)},
    ]
    theta = {n: p.detach().clone() for n, p in model.encoder.named_parameters(prefix="encoder")}
    grads = [fomaml_gradients(model, t["support"], t["query"], steps=3, lr=0.4)[0] for t in tasks]
    adapted = [manual_sgd(model, t["support"], steps=3, lr=0.4) for t in tasks]  # the reference inner loop
    with torch.no_grad():  # its query scores, averaged over the meta-batch
        logits = [m(x=t["query"]["x"]).logits for m, t in zip(adapted, tasks, strict=True)]
        labels = [t["query"]["labels"] for t in tasks]
        acc = sum((z.argmax(-1) == y).float().mean() for z, y in zip(logits, labels, strict=True)) / 2
        loss = sum(nn.functional.cross_entropy(z, y) for z, y in zip(logits, labels, strict=True)) / 2
    logs = learner(model, "fomaml", lr=beta).outer_step(tasks)
    for name, p in model.encoder.named_parameters(prefix="encoder"):
        expected = theta[name] - beta * (grads[0][name] + grads[1][name]) / 2
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
    assert logs == pytest.approx({"query_loss": loss.item(), "query_acc": acc.item()}, rel=1e-5)


def test_mean_ci95_by_hand():
    mean, half = mean_ci95([0.2, 0.4, 0.6, 0.8])
    # sample std = sqrt(((.3)^2 + (.1)^2 + (.1)^2 + (.3)^2) / 3) = sqrt(0.0666...) = 0.258199
    assert mean == pytest.approx(0.5) and half == pytest.approx(1.96 * 0.2581989 / 2, rel=1e-6)


def test_meta_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="`meta.outer_steps`"):
        MetaConfig(outer_steps=0)
    with pytest.raises(ConfigError, match="lists the main algorithm"):
        MetaConfig(algorithm="reptile", baselines=["reptile"])


# --- the recipe end to end -----------------------------------------------------------------------


def run_meta(cfg: dict, tmp_path: Path) -> dict:
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "meta", "--config", str(tmp_path / "cfg.yaml")]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


def test_hftl_run_meta_end_to_end_on_held_out_classes(tmp_path, tiny_models, capsys):
    cfg = meta_config(
        tmp_path, tiny_models["bert"], algorithm="fomaml", baselines=["reptile", "pretrain", "scratch"]
    )
    metrics = run_meta(cfg, tmp_path)
    results = metrics["results"]
    assert list(results) == ["reptile", "pretrain", "scratch", "fomaml"]
    for name, r in results.items():  # 4 episodes x 2 classes x 2 queries: each of the 16 queries counts once
        assert r["episodes"] == 4 and r["query_acc"] * 16 == pytest.approx(round(r["query_acc"] * 16)), name
    assert [h["step"] for h in results["fomaml"]["history"]] == [1, 2, 3]
    assert {"query_loss", "query_acc"} <= set(results["fomaml"]["history"][0])
    assert "task_loss" in results["reptile"]["history"][0] and "loss" in results["pretrain"]["history"][0]
    out = capsys.readouterr().out
    assert "Meta-test: 2-way 1-shot" in out and "['c0', 'c1', 'c2', 'c3']" in out and "['c4', 'c5']" in out
    saved = json.loads((Path(cfg["output_dir"]) / "model" / "hftl_model.json").read_text())
    assert saved["label_names"] == ["way0", "way1"]


def test_meta_without_held_out_classes_or_groups_is_refused(tmp_path, tiny_models, capsys):
    cfg = meta_config(tmp_path, tiny_models["bert"])
    cfg["episodes"]["test_classes"] = None
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "meta", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "`episodes.test_classes`" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["audio/fsdd_maml", "audio/fsdd_reptile"])
def test_shipped_fsdd_config_runs_on_held_out_speakers(config, tmp_path, data_dir, monkeypatch, capsys):
    if not (data_dir / "fsdd" / "recordings").is_dir():
        pytest.skip(f"{data_dir}/fsdd/recordings not found (see fsdd/PROVENANCE.md)")
    monkeypatch.setenv("HFTL_DATA_DIR", str(data_dir))
    overrides = [f"output_dir={tmp_path / 'out'}", "meta.outer_steps=1", "meta.meta_batch_size=1", "meta.baselines=[]",
                 "episodes.q_queries=2", "episodes.test_episodes=2", "meta.eval_inner_steps=1", "meta.inner_steps=1"]  # fmt: skip
    assert hftl(["run", "meta", "--config", config, *overrides]) == 0
    out = capsys.readouterr().out
    assert (
        "Meta-train pool / classes    = 2,000 rows" in out
        and "Meta-test pool / classes     = 1,000 rows" in out
    )
