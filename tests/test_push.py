"""``hftl push`` and ``hftl.load("hf://user/name")`` against a local stand-in for the Hub API.

The server implements the few routes huggingface_hub uses to create a repo and a branch, validate the
card's YAML, pre-upload and commit (every file as a "regular" base64 file, so no LFS/Xet storage), open
a pull request, and serve the files back (repo info, tree, resolve). The CLI runs in a subprocess with
``HF_ENDPOINT`` pointing at it, so huggingface_hub reads its settings exactly as it does for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TOKEN, base_config, dump, serve_fake_hub, write_text_csv

from hftl.cli import main as hftl

REPO = "alice/tiny-sentiment"


@pytest.fixture
def hub(tmp_path):
    """A local stand-in for the Hub API (see tests/helpers.py)."""
    yield from serve_fake_hub(tmp_path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models) -> Path:
    """A finished tiny LoRA fine-tune, with a stale checkpoint and cache planted in the model dir."""
    tmp = tmp_path_factory.mktemp("push_run")
    files = {s: str(write_text_csv(tmp / f"{s}.csv", n, i)) for i, (s, n) in enumerate([("train", 32), ("validation", 16), ("test", 16)])}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp / "out", epochs=1)
    cfg["adapter"] = {"_component_": "hftl.adapters.Lora", "r": 4}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp / "cfg.yaml")]) == 0
    model = tmp / "out" / "model"
    (model / "checkpoints" / "step-1").mkdir(parents=True)
    (model / "checkpoints" / "step-1" / "optimizer.bin").write_bytes(b"state")
    (model / ".cache").mkdir()
    (model / ".cache" / "x.lock").write_text("lock")
    return tmp / "out"


SCENARIO = """
import contextlib, io, json, os, sys
from hftl.cli import main

def hftl(*args, token=None):
    os.environ["HF_TOKEN"] = token or os.environ["GOOD_TOKEN"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    print(json.dumps({"args": args, "rc": rc, "out": out.getvalue(), "err": err.getvalue()}))

run, repo = sys.argv[1], sys.argv[2]
hftl("push", run, "--repo-id", repo, "--commit-message", "first upload")
hftl("push", run, "--repo-id", "alice/public-one", "--public", "--revision", "v1")
hftl("push", run, "--repo-id", repo, "--create-pr")
hftl("push", run, "--repo-id", repo, token="hf_wrongTOKENvalue")
hftl("push", run, "--repo-id", repo, "--revision", "v1", "--create-pr")
import hftl as lib  # load back through snapshot_download into the empty HF_HOME cache
loaded = lib.load(f"hf://{repo}")  # a Hub repo is named explicitly; the commit loaded is pinned
print(json.dumps({"prediction": loaded(["the movie was good great"]), "source": loaded.source}))
"""


def test_push_branch_pr_errors_and_load_back(hub, run_dir):
    """One process (startup is the slow part) runs every push variant, then loads the model back."""
    env = {**hub.env, "GOOD_TOKEN": TOKEN}
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(run_dir), REPO],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr and "hf_wrongTOKENvalue" not in proc.stdout + proc.stderr
    first, public, pr, bad_token, bad_args, loaded = [
        json.loads(x) for x in proc.stdout.strip().splitlines()[-6:]
    ]

    assert first["rc"] == 0 and REPO in first["out"] and "/commit/" in first["out"], first["err"]
    assert hub.repos[REPO]["private"] is True  # private by default
    commit = hub.commits[0]
    assert commit["header"]["summary"] == "first upload" and commit["revision"] == "main"
    uploaded = set(commit["files"])
    expected = {"README.md", "hftl_model.json", "config.yaml", "head.safetensors", "metrics.json",
                "encoder/adapter_config.json", "encoder/adapter_model.safetensors", "plots/training_curves.png",
                "plots/confusion_matrix.png"}  # fmt: skip
    assert expected <= uploaded
    assert not [p for p in uploaded if "checkpoint" in p or ".cache" in p or p == "encoder/README.md"]
    for c in hub.commits:
        for path, data in c["files"].items():
            assert TOKEN.encode() not in data, path
    card = commit["files"]["README.md"].decode()
    assert f'hftl.load("hf://{REPO}")' in card and "library_name: peft" in card

    assert public["rc"] == 0, public["err"]
    assert hub.repos["alice/public-one"]["private"] is False
    assert "README.md" in hub.repos["alice/public-one"]["branches"]["v1"]
    assert hub.repos["alice/public-one"]["branches"]["main"] == {}  # the default branch is untouched

    assert pr["rc"] == 0 and "discussions/1" in pr["out"], pr["err"]
    assert hub.repos[REPO]["prs"][0]["pullRequest"] is True
    assert [c["revision"] for c in hub.commits if c["repo"] == REPO] == ["main", "refs/pr/1"]

    assert bad_token["rc"] == 2 and "HTTP 401" in bad_token["err"] and "hf auth login" in bad_token["err"]
    assert bad_args["rc"] == 2 and "cannot be combined" in bad_args["err"]

    (pred,) = loaded["prediction"]
    assert loaded["source"] == f"hf://{REPO}@{hub.sha(REPO, 'main')}"  # the commit downloaded
    assert pred["label"] in ("negative", "positive") and set(pred["scores"]) == {"negative", "positive"}


def test_push_refused_offline(run_dir, capsys):
    assert hftl(["push", str(run_dir), "--repo-id", REPO]) == 2  # the test process runs with HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_push_to_hub_config_key_pushes_at_the_end_of_training(tmp_path, tiny_models, monkeypatch):
    from hftl.hub import push

    calls = []
    monkeypatch.setattr(push, "push_to_hub", lambda out, **kw: calls.append((out, kw)) or "http://hub/x")
    files = {
        s: str(write_text_csv(tmp_path / f"{s}.csv", 16, i))
        for i, s in enumerate(["train", "validation", "test"])
    }
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp_path / "out", epochs=1)
    cfg["push_to_hub"] = {"repo_id": "alice/from-config", "private": False}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 0
    assert calls == [(tmp_path / "out", {"repo_id": "alice/from-config", "private": False})]

    cfg["push_to_hub"] = {"repo": "alice/typo"}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 2
