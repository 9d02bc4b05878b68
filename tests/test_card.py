"""Model cards rendered from real tiny runs of every recipe family, front matter checked with
huggingface_hub's own parsers and every number checked against the run's own files."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import (
    SENTIMENT,
    STRENGTH,
    TOPIC,
    adapt_config,
    base_config,
    dump,
    embed_config,
    fewshot_config,
    fewshot_csv,
    meta_config,
    serve_fake_hub,
    task_data,
    write_embed_csv,
    write_text_csv,
)
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from omegaconf import OmegaConf
from safetensors.torch import load_file

from hftl.cli import main as hftl
from hftl.hub.card import _hints
from hftl.hub.card_contexts import infer_recipe
from hftl.hub.run_files import data_name as _data_name


@pytest.fixture
def hub(tmp_path):
    """A local stand-in for the Hub API (see tests/helpers.py)."""
    yield from serve_fake_hub(tmp_path)


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, tiny_models) -> Path:
    """A tiny SST-2-like LoRA fine-tune (two-word-class sentiment CSVs)."""
    tmp = tmp_path_factory.mktemp("card_ft")
    files = {s: str(write_text_csv(tmp / f"{s}.csv", n, i)) for i, (s, n) in enumerate([("train", 32), ("validation", 16), ("test", 16)])}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp / "out", epochs=2, eval_every_steps=2)
    cfg["adapter"] = {"_component_": "hftl.adapters.Lora", "r": 4}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp / "cfg.yaml")]) == 0
    return tmp / "out"


@pytest.fixture(scope="module")
def adapt_run(tmp_path_factory, tiny_models) -> Path:
    tmp = tmp_path_factory.mktemp("card_adapt")
    cfg = adapt_config(tmp, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["train"]["epochs"] = 1
    cfg["report"] = {"baselines": ["source_only", "target_oracle"], "diagnostics": True, "plot": "pca"}
    cfg["selection"] = {"fallback": "off"}  # DANN is saved (tests/test_fallback.py: the fallback card)
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp / "cfg.yaml")]) == 0
    return Path(cfg["output_dir"])


def _validated(readme: Path) -> tuple[dict, ModelCard]:
    """Parses the card the way the Hub client does; raises on a malformed front matter or model-index."""
    meta = metadata_load(readme)
    card = ModelCard.load(readme)  # builds ModelCardData: parses and validates the model-index
    ModelCardData(**meta)  # strict (ignore_metadata_errors=False)
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name and results
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text):  # every plot is a file of the repo
        assert (readme.parent / image).stat().st_size > 1000, image
    return meta, card


def test_finetune_card(finetune_run, capsys):
    assert hftl(["card", str(finetune_run), "--license", "apache-2.0", "--language", "en"]) == 0
    readme = finetune_run / "model" / "README.md"
    assert str(readme) in capsys.readouterr().out
    meta, card = _validated(readme)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert meta["license"] == "apache-2.0" and meta["language"] == "en"
    assert {"hftl", "text", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local path is not a Hub id
    _, results = model_index_to_eval_results(meta["model-index"])
    metrics = json.loads((finetune_run / "metrics.json").read_text())
    test_acc = [r for r in results if r.dataset_split == "test" and r.metric_type == "accuracy"]
    assert test_acc[0].metric_value == round(metrics["test"]["accuracy"], 4)
    assert {r.dataset_split for r in results} == {"validation", "test"}
    text = card.text
    for needle in ("## Results", "## Training procedure", "hftl run finetune --config config.yaml",
                   "### Framework versions", "## Intended use and limitations", "@inproceedings{hu2022lora",
                   "plots/training_curves.png", "plots/confusion_matrix.png", "lr=0.003"):  # fmt: skip
        assert needle in text, needle


def test_adaptation_card_and_negative_transfer_warning(adapt_run):
    assert hftl(["card", str(adapt_run)]) == 0
    readme = adapt_run / "model" / "README.md"
    meta, card = _validated(readme)
    assert meta["library_name"] == "transformers" and meta["license"] == "unknown"
    assert {"hftl", "domain-adaptation", "dann", "full-finetune"} <= set(meta["tags"])
    _, results = model_index_to_eval_results(meta["model-index"])
    assert {(r.dataset_name.split(" (")[-1], r.dataset_split) for r in results} == {
        ("target)", "test"),
        ("source)", "validation"),
    }
    text = card.text
    for needle in ("source_only", "target_oracle", "**dann** (this model)", "@article{ganin2016dann",
                   "plots/features_dann.png", "hftl run adapt --config config.yaml", "`im`"):  # fmt: skip
        assert needle in text, needle

    metrics_path = adapt_run / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    results = metrics["results"]
    negative = results["dann"]["target_test_acc"] < results["source_only"]["target_test_acc"]
    assert ("Negative transfer" in text) == negative
    results["dann"]["target_test_acc"] = results["source_only"]["target_test_acc"] - 0.1  # force it
    metrics_path.write_text(json.dumps(metrics))
    assert hftl(["card", str(adapt_run)]) == 0
    assert "> [!WARNING]\n> **Negative transfer**" in readme.read_text()


def test_hub_ids_and_known_data_fill_the_front_matter(finetune_run):
    meta_file = finetune_run / "model" / "hftl_model.json"
    meta = json.loads(meta_file.read_text())
    meta["base_model"] = "sentence-transformers/all-MiniLM-L6-v2"
    meta_file.write_text(json.dumps(meta))
    assert hftl(["card", str(finetune_run), "--dataset", "stanfordnlp/sst2", "--repo-id", "alice/m"]) == 0
    front, card = _validated(finetune_run / "model" / "README.md")
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert front["datasets"] == ["stanfordnlp/sst2"]
    assert front["model-index"][0]["name"] == "alice/m" and 'hftl.load("hf://alice/m")' in card.text

    sst2 = {"path": "csv", "data_files": {"train": "/data/sst2_agnews_alps/SST-2/train.tsv"}}
    assert _hints(sst2) == [("stanfordnlp/sst2", "en")] and _data_name(sst2) == "SST-2"
    assert _data_name({"path": "hftl:fsdd", "filters": {"speaker": ["nicolas"]}}) == "fsdd (speaker: nicolas)"
    assert _hints({"path": "someone/some_dataset"}) == [("someone/some_dataset", "")]


def test_card_for_a_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert hftl(["card", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the other recipe families: one tiny real run each ---------------------------------------------------


def _run(recipe: str, cfg: dict, tmp: Path) -> Path:
    assert hftl(["run", recipe, "--config", dump(cfg, tmp / f"{recipe}.yaml")]) == 0
    return Path(cfg["output_dir"])


def _card(run: Path, *args: str) -> tuple[dict, str, dict]:
    """Renders the card with the CLI; returns its parsed front matter, its text and the run's metrics."""
    assert hftl(["card", str(run), *args]) == 0
    meta, card = _validated(run / "model" / "README.md")
    return meta, card.text, json.loads((run / "metrics.json").read_text())


def _results(meta: dict) -> dict[tuple[str, str, str], float]:
    _, results = model_index_to_eval_results(meta["model-index"])
    return {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in results}


def _data(run: Path, *keys: str) -> str:
    """The card's name of a data node of the run's config, e.g. ``_data(run, "tasks", "topic", "data")``."""
    node = OmegaConf.to_container(OmegaConf.load(run / "model" / "config.yaml"))
    for key in keys:
        node = node[key]
    return _data_name(node)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _reproduces(text: str, run: Path) -> None:
    """The card's re-run command is accepted by `hftl validate` on the saved config.yaml."""
    section = text.split("### Reproduce", 1)[1]
    line = next(ln for ln in section.splitlines() if ln.startswith("hftl run "))
    _, _, recipe, flag, name, *overrides = shlex.split(line)
    assert (flag, name) == ("--config", "config.yaml")
    config = str(run / "model" / "config.yaml")
    assert hftl(["validate", "--recipe", recipe, "--config", config, *overrides]) == 0, line


@pytest.fixture(scope="module")
def embed_runs(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """Context level (scalar mix + transformer token head), and sentence level with shallow CORAL."""
    tmp = tmp_path_factory.mktemp("card_embed")
    context = {"_component_": "hftl.embeddings.ContextTextEncoder", "token_head": "transformer", "hidden_features": 16, "num_heads": 2}  # fmt: skip
    runs = {"context": _run("embed", embed_config(tmp, tiny_models["bert"], "context", context), tmp)}
    cfg = embed_config(tmp, tiny_models["bert"], "coral", {"_component_": "hftl.encoders.TextEncoder"})
    target = {"train": write_embed_csv(tmp / "t_train.csv", 32, seed=7, prefix="this"), "test": write_embed_csv(tmp / "t_test.csv", 16, seed=8, prefix="this")}  # fmt: skip
    cfg["target"] = {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": target, "label_names": ["negative", "positive"], "validation_size": 0}  # fmt: skip
    cfg["method"] = {"_component_": "hftl.adaptation.CORAL"}
    runs["coral"] = _run("embed", cfg, tmp)
    return runs


def test_embed_card_context_level(embed_runs):
    run = embed_runs["context"]
    meta, text, metrics = _card(run)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert {"hftl", "frozen-encoder", "embedding-transfer", "context-embeddings"} <= set(meta["tags"])
    assert "linear-probe" not in meta["tags"]  # an MLP on frozen features, not a linear probe
    assert _results(meta)[(_data(run, "data"), "test", "accuracy")] == round(metrics["test"]["accuracy"], 4)
    # the learned layer weights are the softmax of the saved scalar mix, layer 0 = embeddings
    head = load_file(str(run / "model" / "head.safetensors"))
    weights = head["encoder.pool.mix.weights"].softmax(-1).tolist()
    row = "| weight |" + "".join(f" {w:.3f} |" for w in weights)
    assert row in text and f"scale γ = {head['encoder.pool.mix.gamma'].item():.3f}" in text
    assert "| layer | 0 | 1 | 2 |" in text  # the tiny BERT: embeddings + 2 layers
    assert "**Context level**" in text and "token_head=transformer" in text
    assert "layer_norm=False" in text  # ContextTextEncoder's default, read from its signature
    features = metrics["features"]["source_train"]
    assert (
        f"| source_train | {features['examples']} | encoded by the frozen encoder | {features['seconds']} |"
        in text
    )
    assert f"`cache.dir`: `{Path(run).parent / 'cache'}`" in text and "stored as float32" in text
    assert (
        f"{metrics['steps']} optimizer steps over 3 epochs in {round(sum(metrics['epoch_seconds']), 3)} s"
        in text
    )
    assert _pct(metrics["test"]["accuracy"]) in text and "@inproceedings{peters2018elmo" in text
    for needle in ("plots/training_curves.png", "plots/confusion_matrix.png", "## Feature cache", "## How to use",
                   "### Framework versions", "## Intended use and limitations"):  # fmt: skip
        assert needle in text, needle
    _reproduces(text, run)


def test_embed_card_with_shallow_adaptation(embed_runs):
    run = embed_runs["coral"]
    meta, text, metrics = _card(run)
    assert {"sentence-embeddings", "domain-adaptation", "coral"} <= set(meta["tags"])
    coral, source_only = metrics["results"]["coral"], metrics["results"]["source_only"]
    assert f"| **coral** (this model) | {_pct(coral['target_test_acc'])} | {_pct(coral['validation']['accuracy'])} | {coral['best_step']} |" in text  # fmt: skip
    assert f"| source_only | {_pct(source_only['target_test_acc'])} |" in text
    assert "**Sentence level**" in text and "(mean pooling of\nthe last layer)" in text
    assert "`hftl.adaptation.CORAL` on the head's hidden features; checkpoint selection `im`" in text
    results = _results(meta)
    assert results[(f"{_data(run, 'target')} (target)", "test", "accuracy")] == round(
        coral["target_test_acc"], 4
    )
    assert ("Negative transfer" in text) == (coral["target_test_acc"] < source_only["target_test_acc"])
    assert "@inproceedings{sun2016deepcoral" in text


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory, tiny_models) -> Path:
    """LoRA teacher (trained first by the distill recipe) → 1-layer student, KD + FitNets hints + unlabelled data."""
    tmp = tmp_path_factory.mktemp("card_distill")
    files = {s: str(write_text_csv(tmp / f"{s}.csv", n, i)) for i, (s, n) in enumerate([("train", 32), ("validation", 16), ("test", 16)])}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    data = {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files}
    head = {"_component_": "hftl.models.LinearHead", "dropout": 0.0}
    teacher = base_config(enc, {"path": "csv", "data_files": files}, tmp / "teacher", epochs=2)
    teacher["adapter"] = {"_component_": "hftl.adapters.Lora", "r": 4}
    cfg = {
        "recipe": "distill", "output_dir": str(tmp / "student"), "seed": 0,
        "teacher": {"path": str(tmp / "teacher"), "finetune_config": dump(teacher, tmp / "teacher.yaml")},
        "student": {"encoder": enc, "head": head},
        "distill": {"student_layers": [1], "speed_batch_size": 8, "speed_repeats": 2},
        "data": data, "unlabeled": {"_component_": "hftl.data.ClassificationData", "path": str(write_text_csv(tmp / "unlabeled.csv", 16, 3))},
        "loss": {"_component_": "hftl.losses.KnowledgeDistillationLoss", "temperature": 3.0, "alpha": 0.7},
        "hints": {"_component_": "hftl.losses.HintLoss", "student_layers": [1], "teacher_layers": [2]},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"epochs": 1, "batch_size": 8},
    }  # fmt: skip
    return _run("distill", cfg, tmp)


def test_distill_card_teacher_student_and_measured_speed(distill_run):
    meta, text, metrics = _card(distill_run)
    assert {"knowledge-distillation", "fitnets", "full-finetune"} <= set(meta["tags"])
    assert meta["library_name"] == "transformers"
    params = metrics["parameters"]
    assert f"| parameters | {params['teacher']:,} | {params['student']:,} |" in text
    assert "| transformer layers | 2 | 1 |" in text and "| hidden size | 32 | 32 |" in text
    assert "LoRA adapter (r=4)" in text and "layers [1] kept, initialised from the teacher" in text
    assert "temperature T = 3.0, weight α = 0.7 on the soft (KD) term" in text
    assert "`hftl.losses.HintLoss` (student_layers=[1], teacher_layers=[2], weight=1.0)" in text
    assert "Teacher logits: computed on every batch" in text  # hints need the teacher's hidden states
    assert "- Unlabelled data: **unlabeled** (soft targets only)" in text
    s, t = metrics["test"], metrics["teacher"]["test"]
    assert f"| test | {s['num_samples']} | {_pct(s['accuracy'])} | {_pct(t['accuracy'])} |" in text
    assert f"**{100 * metrics['accuracy_retained']:.1f} %**" in text
    speed = metrics["speed"]
    assert f"| **student** | **{speed['student_ms']}** |" in text
    assert f"**{speed['speedup']:.2f}× faster** than the merged teacher" in text
    assert "@article{hinton2015distilling" in text and "@inproceedings{romero2015fitnets" in text
    assert _results(meta)[(_data(distill_run, "data"), "test", "accuracy")] == round(s["accuracy"], 4)
    _reproduces(text, distill_run)  # the loading keys merged into config.yaml are dropped
    # a run that recorded no timing gets no speed claim
    path = distill_run / "metrics.json"
    path.write_text(json.dumps({k: v for k, v in metrics.items() if k != "speed"}))
    _, text, _ = _card(distill_run)
    assert "no speed-up is claimed" in text and "× faster" not in text and "ms per batch" not in text


@pytest.fixture(scope="module")
def multitask_runs(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """Two tasks on one encoder; then LwF: a saved sentiment model gains a `strength` task (with baseline)."""
    tmp = tmp_path_factory.mktemp("card_mt")
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    head = {"_component_": "hftl.models.LinearHead", "dropout": 0.0}
    common = {"seed": 0, "optimizer": {"_component_": "torch.optim.AdamW", "lr": 4e-3}, "train": {"epochs": 2, "batch_size": 8}}  # fmt: skip
    sentiment = task_data(tmp, "sentiment", SENTIMENT)
    mt = common | {
        "recipe": "multitask", "output_dir": str(tmp / "mt"), "encoder": enc,
        "adapter": {"_component_": "hftl.adapters.FullFinetune"}, "multitask": {"sampling": "round_robin"},
        "tasks": {"sentiment": {"data": sentiment, "head": head, "weight": 1.0},
                  "topic": {"data": task_data(tmp, "topic", TOPIC), "head": head, "weight": 2.0}},
    }  # fmt: skip
    old = common | {"recipe": "finetune", "output_dir": str(tmp / "old"), "encoder": enc, "data": sentiment, "head": head,
                    "adapter": {"_component_": "hftl.adapters.FullFinetune"}}  # fmt: skip
    _run("finetune", old, tmp)
    lwf = common | {
        "recipe": "multitask", "output_dir": str(tmp / "lwf"), "init_from": str(tmp / "old"),
        "tasks": {"strength": {"data": task_data(tmp, "strength", STRENGTH), "head": head}},
        "lwf": {"task": "sentiment", "weight": 5.0, "temperature": 2.0, "baseline": True}, "old_task_data": sentiment,
    }  # fmt: skip
    return {"mt": _run("multitask", mt, tmp), "lwf": _run("multitask", lwf, tmp)}


def test_multitask_card_lists_tasks_labels_weights_and_per_task_metrics(multitask_runs):
    run = multitask_runs["mt"]
    meta, text, metrics = _card(run)
    assert {"multi-task", "full-finetune"} <= set(meta["tags"]) and "lwf" not in meta["tags"]
    assert "| `sentiment` (default) | 2: negative, positive | `LinearHead` | 1.0 |" in text
    assert "| `topic` | 3: food, music, sport | `LinearHead` | 2.0 |" in text
    assert "tasks were drawn `round_robin`" in text
    results = _results(meta)
    for task in ("sentiment", "topic"):
        for split in ("validation", "test"):
            report = metrics["tasks"][task][split]
            assert f"| `{task}` | {split} | {report['num_samples']} | {_pct(report['accuracy'])} |" in text
            name = f"{_data(run, 'tasks', task, 'data')} (task {task})"
            assert results[(name, split, "accuracy")] == round(report["accuracy"], 4)
            assert results[(name, split, "f1")] == round(report["macro_f1"], 4)
    assert 'topic = hftl.load("' in text and 'task="topic")' in text
    for task in ("sentiment", "topic"):  # one confusion matrix per task, a file of the repo
        assert f"plots/confusion_{task}.png" in text
    _reproduces(text, run)


def test_multitask_card_with_lwf_reports_the_kept_task(multitask_runs):
    run = multitask_runs["lwf"]
    meta, text, metrics = _card(run)
    assert {"multi-task", "lwf", "continual-learning"} <= set(meta["tags"])
    old, plain = metrics["old_task"], metrics["old_task"]["plain_finetune"]
    assert f"`{run.parent / 'old'}` were kept as task `sentiment`" in text
    assert "| `sentiment` | 2: negative, positive | `LinearHead` | LwF λ = 5.0 |" in text
    assert f"| LwF, λ = 5.0 (this model) | {_pct(old['accuracy_before'])} | {_pct(old['accuracy_after'])} | {old['drift']:.4f} |" in text  # fmt: skip
    assert f"| plain fine-tuning, λ = 0 (baseline) | {_pct(plain['accuracy_before'])} | {_pct(plain['accuracy_after'])} | {plain['drift']:.4f} |" in text  # fmt: skip
    assert "KD term at temperature T = 2.0, weighted λ = 5.0" in text
    assert _results(meta)[(f"{_data(run, 'old_task_data')} (task sentiment)", "test", "accuracy")] == round(
        old["accuracy_after"], 4
    )
    assert "@inproceedings{li2016lwf" in text
    assert "'~encoder'" in text  # the encoder comes from init_from: the saved one must not be passed again
    _reproduces(text, run)


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory, tiny_models) -> Path:
    tmp = tmp_path_factory.mktemp("card_fewshot")
    files = {"train": fewshot_csv(tmp / "train.csv", 40, 0), "test": fewshot_csv(tmp / "test.csv", 12, 1)}
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = fewshot_config(tmp, enc, {"path": "csv", "data_files": files})
    cfg["loss"] = {"_component_": "hftl.losses.ContrastiveLoss", "margin": 0.5}
    cfg["adapter"] = {"_component_": "hftl.adapters.Lora", "r": 4}
    return _run("fewshot", cfg, tmp)


def test_fewshot_card_shows_shots_loss_stages_and_metrics(fewshot_run):
    meta, text, metrics = _card(fewshot_run)
    assert {"few-shot", "metric-learning", "lora"} <= set(meta["tags"]) and meta["library_name"] == "peft"
    record = metrics["fewshot"]
    assert f"**{record['num_examples']} labelled examples** (4 per class)" in text
    assert "`hftl.losses.ContrastiveLoss` (margin=0.5, distance=euclidean)" in text  # distance: its default
    assert f"on {record['stage1_rows']} pairs built from those examples (2 iterations, {metrics['steps']} optimizer steps)" in text  # fmt: skip
    assert "logistic regression (C = 1.0, up to 1000 L-BFGS iterations)" in text
    assert f"(training accuracy {_pct(record['head_train_accuracy'])})" in text
    assert f"| test | 12 | {_pct(metrics['test']['accuracy'])} |" in text
    assert _results(meta)[(_data(fewshot_run, "data"), "test", "accuracy")] == round(
        metrics["test"]["accuracy"], 4
    )
    assert "@article{tunstall2022setfit" in text and "@inproceedings{hu2022lora" in text
    _reproduces(text, fewshot_run)


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory, tiny_models) -> Path:
    tmp = tmp_path_factory.mktemp("card_meta")
    cfg = meta_config(tmp, tiny_models["bert"], algorithm="fomaml", baselines=["pretrain", "scratch"])
    return _run("meta", cfg, tmp)


def test_meta_card_shows_episodes_loops_and_query_accuracy(meta_run):
    from hftl.encoders import TextEncoder

    meta, text, metrics = _card(meta_run, "--repo-id", "alice/meta-init")
    assert "pipeline_tag" not in meta  # an initialization to adapt, not a classifier
    assert {"meta-learning", "few-shot", "fomaml"} <= set(meta["tags"])
    main = metrics["results"]["fomaml"]
    results = _results(meta)
    assert results[("pool (meta-test, 2-way 1-shot episodes)", "train", "accuracy")] == round(
        main["query_acc"], 4
    )
    assert "**first-order MAML (FOMAML)** on 2-way 1-shot episodes" in text
    assert "held-out classes c4, c5, never seen in meta-training; 4 episodes" in text
    assert "Inner loop: 2 SGD steps at lr 0.1 in meta-training; 2 steps at lr 0.1 when adapting" in text
    assert "Outer loop: 3 steps × 2 episodes, `torch.optim.Adam` (lr=0.001)" in text
    for name, r in metrics["results"].items():
        label = f"**{name}** (this model)" if name == "fomaml" else name
        assert f"| {label} | {_pct(r['query_acc'])} | ± {_pct(r['ci95'])} | {r['episodes']} |" in text
    assert "@inproceedings{finn2017maml" in text and "not a model for `hftl.load`" in text
    assert "hf download alice/meta-init --local-dir meta_init" in text
    TextEncoder(str(meta_run / "model" / "encoder"), max_length=8)  # the encoder the card tells to start from
    _reproduces(text, meta_run)


def test_recipe_is_recognised_without_a_recipe_key(
    embed_runs, distill_run, multitask_runs, fewshot_run, meta_run
):
    runs = {"embed": embed_runs["context"], "distill": distill_run, "multitask": multitask_runs["lwf"],
            "fewshot": fewshot_run, "meta": meta_run}  # fmt: skip
    for recipe, run in runs.items():
        cfg = OmegaConf.load(run / "model" / "config.yaml")
        assert cfg.pop("recipe") == recipe
        assert infer_recipe(cfg, json.loads((run / "metrics.json").read_text())) == recipe
        assert infer_recipe(cfg, {}) == recipe  # from the config alone (a Hub download has no run dir)


def test_unknown_recipe_is_a_clear_error(fewshot_run, tmp_path, capsys):
    model = tmp_path / "model"
    for f in ("hftl_model.json", "config.yaml"):
        (model / f).parent.mkdir(exist_ok=True)
        (model / f).write_bytes((fewshot_run / "model" / f).read_bytes())
    cfg = yaml.safe_load((model / "config.yaml").read_text()) | {"recipe": "mine"}
    (model / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["card", str(model)]) == 2
    err = capsys.readouterr().err
    assert "recipe 'mine' has no model card template" in err and "`meta`" in err and "`recipe:`" in err


def test_push_uploads_a_multitask_card_with_every_head(hub, multitask_runs, monkeypatch):
    """`hftl push` renders the family's card (with the repo id) and uploads it beside tasks/ and the plots."""
    from huggingface_hub import constants

    run, repo = multitask_runs["mt"], "alice/tiny-multitask"
    monkeypatch.setenv("HF_TOKEN", hub.env["HF_TOKEN"])
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)  # what HF_ENDPOINT sets at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hftl(["push", str(run), "--repo-id", repo]) == 0
    files = hub.repos[repo]["branches"]["main"]
    expected = {"README.md", "tasks.json", "tasks/sentiment.safetensors", "tasks/topic.safetensors",
                "plots/confusion_sentiment.png", "plots/confusion_topic.png"}  # fmt: skip
    assert expected <= set(files)
    card = files["README.md"].decode()
    assert f'topic = hftl.load("hf://{repo}", task="topic")' in card and "- multi-task" in card
