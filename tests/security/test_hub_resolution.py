"""Issue 13, class 3: Hub resolution is explicit and pinned.

A missing local path (``alice/model`` typed before the run exists) is an error that names the Hub syntax,
never a download; ``hf://user/name[@revision]`` or ``--from-hub`` downloads exactly that revision (no
pickles, no ``.py`` unless the caller trusts remote code), and the commit loaded is recorded and printed.
``snapshot_download`` is replaced by a stand-in that serves a real model directory from a fake cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import hftl
from hftl.cli import main as cli
from hftl.errors import ModelLoadError

SHA = "0123456789abcdef0123456789abcdef01234567"
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_models) -> Path:
    from hftl.encoders import TextEncoder
    from hftl.models import Classifier, LinearHead
    from hftl.models.io import save_model

    torch.manual_seed(0)
    encoder = TextEncoder(tiny_models["bert"], max_length=16)
    model = Classifier(encoder, LinearHead(encoder.out_features, 2), LABELS)
    cfg = OmegaConf.create(
        {"encoder": {"_component_": "hftl.encoders.TextEncoder", "max_length": 16}, "head": {}}
    )
    return save_model(model, tmp_path_factory.mktemp("hub") / "model", adapter_kind="full", config=cfg)


@pytest.fixture
def hub(monkeypatch, tmp_path, saved):
    """``huggingface_hub.snapshot_download`` serving ``alice/model`` from a cache laid out like the real one."""
    import huggingface_hub

    calls: list[dict] = []

    def snapshot_download(repo_id, *, revision=None, ignore_patterns=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, "ignore_patterns": ignore_patterns})
        if repo_id != "alice/model":
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError(
                f"Cannot find {repo_id} in the cache and outgoing traffic is disabled"
            )
        folder = tmp_path / "hf_cache" / "models--alice--model" / "snapshots" / SHA
        if not folder.exists():
            shutil.copytree(saved, folder)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)  # `alice/model` must not exist as a local path
    return calls


def test_missing_user_name_path_is_an_error_not_a_download(hub, capsys):
    with pytest.raises(
        ModelLoadError, match=r"does not exist; did you mean hf://alice/model or --from-hub\?"
    ):
        hftl.load("alice/model")
    for argv in (
        ["predict", "alice/model", "some text"],
        ["eval", "alice/model", "--data", "x.csv", "--output", "m.json"],
        ["export", "--merge", "alice/model", "--out", "exported"],
    ):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "hf://alice/model or --from-hub" in err, err
    assert hub == []


def test_hf_prefix_downloads_that_revision_and_pins_the_commit(hub):
    predictor = hftl.load("hf://alice/model@v1.0")
    assert [(c["repo_id"], c["revision"]) for c in hub] == [("alice/model", "v1.0")]
    assert predictor.source == f"hf://alice/model@{SHA}" and predictor.meta["path"].endswith(SHA)
    assert predictor(["good"])[0]["label"] in LABELS
    ignored = hub[0]["ignore_patterns"]
    assert "*.py" in ignored and "*.bin" in ignored and "*.pkl" in ignored  # nothing that could run code

    hftl.load("alice/model", from_hub=True, trust_remote_code=True)
    assert hub[1]["revision"] is None and "*.py" not in hub[1]["ignore_patterns"]


def test_cli_from_hub_prints_and_records_the_commit(hub, tmp_path, capsys):
    csv = tmp_path / "test.csv"
    csv.write_text("text,label\ngood,positive\nbad,negative\n")
    assert cli(["predict", "--from-hub", "alice/model", "--revision", "main", "good"]) == 0
    assert f"Loaded hf://alice/model@{SHA}" in capsys.readouterr().err
    assert hub[-1]["revision"] == "main"

    assert cli(["eval", "hf://alice/model", "--data", str(csv), "--output", str(tmp_path / "m.json")]) == 0
    assert f"hf://alice/model@{SHA}" in capsys.readouterr().err
    assert json.loads((tmp_path / "m.json").read_text())["model"] == f"hf://alice/model@{SHA}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["eval", "hf://alice/model", "--data", "x.csv"], "--output"),  # no run folder to write into
        (["eval", "hf://alice/model", "--output", "m.json"], "--data"),  # someone else's data paths
        (["predict", "outputs/run", "--revision", "v1", "x"], "applies to Hub models"),
        (["predict", "hf://alice/model@v1", "--revision", "v2", "x"], "give the revision once"),
        (["predict", "hf://alice", "x"], "not a Hub model reference"),
        (["predict", "hf://alice/model@", "x"], "not a Hub model reference"),
        (["predict", "--from-hub", "../alice/model", "x"], "not a Hub model reference"),
        (["predict", "hf://bob/missing", "x"], "Downloading the Hub model 'bob/missing' failed"),
        # downloaded and loaded (the tiny mean-pooled model then has no exact transformers export)
        (["export", "--merge", "--from-hub", "alice/model", "--out", "exported"], "Cannot export this model"),
    ],
)
def test_hub_arguments_are_checked(hub, capsys, argv, expected):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and expected in err and "Traceback" not in err, err


def test_a_hub_repo_without_hftl_model_json_is_named(hub, saved):
    (Path(hftl.load("hf://alice/model").meta["path"]) / "hftl_model.json").unlink()
    with pytest.raises(ModelLoadError, match=f"'alice/model' \\(revision {SHA}\\) is not an hftl model"):
        hftl.load("hf://alice/model")
