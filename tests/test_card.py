"""Model cards rendered from real tiny runs, front matter checked with huggingface_hub's own parsers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from test_adapt import adapt_config
from test_cli import base_config, dump, write_text_csv

from hftl.cli import main as hftl
from hftl.hub.card import _data_name, _hints


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
    assert front["model-index"][0]["name"] == "alice/m" and 'hftl.load("alice/m")' in card.text

    sst2 = {"path": "csv", "data_files": {"train": "/data/sst2_agnews_alps/SST-2/train.tsv"}}
    assert _hints(sst2) == [("stanfordnlp/sst2", "en")] and _data_name(sst2) == "SST-2"
    assert _data_name({"path": "hftl:fsdd", "filters": {"speaker": ["nicolas"]}}) == "fsdd (speaker: nicolas)"
    assert _hints({"path": "someone/some_dataset"}) == [("someone/some_dataset", "")]


def test_card_for_a_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert hftl(["card", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
