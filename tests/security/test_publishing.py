"""The publishing surface (``hftl card``, ``hftl push``, ``hftl export``) against hostile inputs.

One test per attack class of issue 13 that these commands can be hit by:

* class 4 (files hftl did not write): export refuses an ``--out`` that is, holds or lies inside its source,
  even with ``--force``, replaces only its own earlier exports and leaves nothing on failure; push and
  ``hftl card`` never overwrite a README the user edited, and a failed push changes nothing locally;
* class 5 (secrets): a secret read through ``${oc.env:...}`` reaches no card and no uploaded file; push
  uploads an allow-list, refuses symlinks (a link to a token file is never sent) and unknown files;
* class 6 (escaping): hostile label, data, metric and task names render as text (no HTML, no links, tables
  intact, front matter valid);
* class 7 (tracebacks): an unreachable Hub endpoint is one line naming the endpoint and the fix, exit 2.

Uploads are captured by replacing ``HfApi``'s three calls; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, constants

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import base_config, dump, write_text_csv  # noqa: E402

from hftl.cli import main as hftl  # noqa: E402
from hftl.hub.card_files import CARD_MARKER  # noqa: E402

SECRET = "hf_S3CRETtoken0123456789leak"  # appears only in an environment variable's value
TOKEN = "hf_FAKEpushTOKEN0123456789abcdef"
HOSTILE = ["<script>alert(1)</script>", "[x](javascript:alert(1))", "a|b\nc", "---", "![i](http://e/x.png)"]


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory, tiny_models) -> Path:
    """A tiny LoRA fine-tune whose train file lives in a folder named by a secret environment variable."""
    tmp = tmp_path_factory.mktemp("publish")
    files = {s: str(write_text_csv(tmp / f"{s}.csv", n, i)) for i, (s, n) in enumerate([("train", 32), ("validation", 16), ("test", 16)])}  # fmt: skip
    secret_dir = tmp / SECRET
    secret_dir.mkdir()
    shutil.copy(files["train"], secret_dir / "train.csv")
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp / "run", epochs=1)
    cfg["data"]["data_files"]["train"] = "${oc.env:HFTL_TEST_SECRET_DIR}/train.csv"
    cfg["adapter"] = {"_component_": "hftl.adapters.Lora", "r": 4}
    os.environ["HFTL_TEST_SECRET_DIR"] = str(secret_dir)
    try:
        argv = [
            "run",
            "finetune",
            "--config",
            dump(cfg, tmp / "cfg.yaml"),
            "--allow-env",
            "HFTL_TEST_SECRET_DIR",
        ]
        assert hftl(argv) == 0
    finally:
        del os.environ["HFTL_TEST_SECRET_DIR"]
    return tmp / "run"


@pytest.fixture
def run(secret_run, tmp_path) -> Path:
    """A private copy of the run (tests plant files in it)."""
    shutil.copytree(secret_run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


class Uploads:
    """What ``hftl push`` would send: ``commits[i] = {path in repo: bytes}``."""

    def __init__(self) -> None:
        self.commits: list[dict[str, bytes]] = []


@pytest.fixture
def uploads(monkeypatch) -> Uploads:
    from huggingface_hub import CommitInfo

    seen = Uploads()

    def create_commit(self, repo_id, *, operations, **kwargs):
        seen.commits.append({op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations})
        url = f"https://hub.test/{repo_id}/commit/{'0' * 40}"
        return CommitInfo(commit_url=url, commit_message="", commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "create_branch", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    _online(monkeypatch)
    return seen


def _online(monkeypatch, endpoint: str = "https://hub.test") -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- class 5: secrets and what push uploads ------------------------------------------------------------
def test_env_secret_reaches_no_card_and_no_upload(run, uploads, capsys):
    assert hftl(["card", str(run)]) == 0
    assert hftl(["push", str(run), "--repo-id", "alice/secret-check"]) == 0
    (sent,) = uploads.commits
    assert {"README.md", "config.yaml", "hftl_model.json", "head.safetensors", "encoder/adapter_config.json"} <= set(sent)  # fmt: skip
    for path, data in sent.items():
        assert SECRET.encode() not in data, path
    for path in (run / "model").rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    assert "${oc.env:HFTL_TEST_SECRET_DIR}" in sent["README.md"].decode()  # the interpolation, as written
    assert SECRET not in capsys.readouterr().out


def test_card_never_resolves_an_interpolation_from_the_model_dir(run, monkeypatch):
    """A config.yaml with a live ``${oc.env:...}`` (hand-edited, downloaded, or from an older hftl): the card
    shows the interpolation, never the value, even while the variable is set and granted."""
    from hftl.config import granted

    config = run / "model" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["data_files"]["validation"] = "${oc.env:HFTL_TEST_SECRET}/val.csv"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("HFTL_TEST_SECRET", SECRET)
    with granted(allow_env=["HFTL_TEST_SECRET"]):
        assert hftl(["card", str(run)]) == 0
    card = (run / "model" / "README.md").read_text()
    assert SECRET not in card and "${oc.env:HFTL_TEST_SECRET}/val.csv" in card


def test_symlink_to_a_token_file_is_never_uploaded(run, uploads, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    model = run / "model"
    for link in (model / "token", model / "encoder" / "vocab.txt", model / "plots"):  # allowed names too
        link.symlink_to(token if link.name != "plots" else tmp_path)
        assert hftl(["push", str(run), "--repo-id", "alice/x", "--skip-unknown"]) == 2
        message = _error(capsys)
        assert str(link) in message and "symlink" in message
        link.unlink()
    assert uploads.commits == []  # refused before anything was sent
    assert hftl(["push", str(run), "--repo-id", "alice/x"]) == 0
    assert not [p for p, data in uploads.commits[0].items() if TOKEN.encode() in data]


def test_unknown_files_are_refused_unless_skipped(run, uploads, capsys, caplog):
    model = run / "model"
    (model / "notes.txt").write_text("my notes")
    (model / "encoder" / "extra.json").write_text("{}")
    assert hftl(["push", str(run), "--repo-id", "alice/x"]) == 2
    message = _error(capsys)
    assert "encoder/extra.json" in message and "notes.txt" in message and "--skip-unknown" in message
    assert uploads.commits == []
    assert hftl(["push", str(run), "--repo-id", "alice/x", "--skip-unknown"]) == 0
    assert "notes.txt" in caplog.text  # the warning lists what was left out
    sent = set(uploads.commits[0])
    assert "notes.txt" not in sent and "encoder/extra.json" not in sent and "README.md" in sent


def test_allow_list_covers_every_file_hftl_writes(tmp_path, tiny_models):
    """Derived from the writers: every file save_model (each modality and adapter kind) and the card write
    is accepted, so a push never refuses hftl's own files."""
    import torch
    from omegaconf import OmegaConf

    from hftl.adapters import FullFinetune, Lora
    from hftl.config import instantiate
    from hftl.hub.push import publishable_files
    from hftl.models import Classifier
    from hftl.models.io import save_model

    cases = [("TextEncoder", "bert", Lora(r=4)), ("TextEncoder", "bert", FullFinetune()),
             ("AudioEncoder", "wav2vec2", Lora(r=4)), ("VisionEncoder", "vit", FullFinetune())]  # fmt: skip
    for i, (encoder, kind, adapter) in enumerate(cases):
        cfg = OmegaConf.create({"encoder": {"_component_": f"hftl.encoders.{encoder}", "model": tiny_models[kind]},
                                "head": {"_component_": "hftl.models.LinearHead"}})  # fmt: skip
        torch.manual_seed(0)
        enc = adapter.apply(instantiate(cfg.encoder))
        model = Classifier(enc, instantiate(cfg.head, in_features=enc.out_features, num_labels=2), ["a", "b"])
        path = save_model(
            model, tmp_path / str(i) / "model", adapter_kind=adapter.kind, config=cfg, metrics={}
        )
        written = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
        files = publishable_files(path)  # raises on any file it does not know
        assert written - {"encoder/README.md"} == set(files), kind


# --- class 4: cards the user edited, failed pushes -------------------------------------------------------
def test_push_and_card_keep_an_edited_readme(run, uploads, capsys, caplog):
    readme = run / "model" / "README.md"
    assert hftl(["card", str(run)]) == 0
    readme.write_text(readme.read_text() + "\nMy own notes.\n")
    edited = readme.read_bytes()
    assert hftl(["card", str(run)]) == 2
    assert "--force" in _error(capsys) and readme.read_bytes() == edited
    assert hftl(["push", str(run), "--repo-id", "alice/x"]) == 0
    assert "was edited after hftl wrote it" in caplog.text
    assert uploads.commits[-1]["README.md"] == edited and readme.read_bytes() == edited
    assert hftl(["card", str(run), "--force"]) == 0
    assert "My own notes" not in readme.read_text()
    assert hftl(["push", str(run), "--repo-id", "alice/renamed"]) == 0  # hftl's own card: re-rendered
    assert 'hftl.load("hf://alice/renamed")' in uploads.commits[-1]["README.md"].decode()
    assert 'hftl.load("hf://alice/renamed")' in readme.read_text()  # installed after the upload succeeded
    readme.write_text("# mine\n")
    assert hftl(["push", str(run), "--repo-id", "alice/x", "--no-card"]) == 0
    assert uploads.commits[-1]["README.md"] == b"# mine\n"


@pytest.mark.parametrize("card", ["missing", "hftl"])
def test_unreachable_endpoint_is_one_line_and_changes_nothing(run, monkeypatch, capsys, card):
    """HF_ENDPOINT pointing at a closed port: the real huggingface_hub client fails to connect."""
    model = run / "model"
    if card == "hftl":
        assert hftl(["card", str(run)]) == 0
    before = {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    _online(monkeypatch, endpoint="http://127.0.0.1:9")
    assert hftl(["push", str(run), "--repo-id", "alice/x"]) == 2
    message = _error(capsys)
    assert "http://127.0.0.1:9" in message and "HF_ENDPOINT" in message and TOKEN not in message
    after = {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    assert after == before  # no card rendered over the old one (or created), no plots, no marker


@pytest.mark.parametrize("error", ["requests", "httpx", "timeout"])
def test_network_errors_from_the_client_are_one_line(run, monkeypatch, capsys, error):
    def fail(*args, **kwargs):
        if error == "requests":
            import requests

            raise requests.exceptions.ConnectionError("Max retries exceeded")
        if error == "httpx":
            transport = pytest.importorskip("httpx2" if "httpx2" in sys.modules else "httpx")
            raise transport.ReadTimeout("timed out")
        raise TimeoutError("timed out")

    _online(monkeypatch)
    monkeypatch.setattr(HfApi, "create_repo", fail)
    assert hftl(["push", str(run), "--repo-id", "alice/x"]) == 2
    assert "https://hub.test cannot be reached" in _error(capsys)
    assert not (run / "model" / "README.md").exists() and not (run / "model" / CARD_MARKER).exists()


# --- class 4: export --out -------------------------------------------------------------------------------
def test_export_refuses_out_overlapping_its_source_even_with_force(run, capsys):
    model = run / "model"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for out in (run, model, run / "hf", model / "hf", run.parent, Path("/")):
        assert hftl(["export", "--merge", str(run), "--out", str(out), "--force"]) == 2
        message = _error(capsys)
        assert f"--out {out}" in message and "even with --force" in message
    assert (
        hftl(["export", "--merge", str(model), "--out", str(run / "x"), "--force"]) == 2
    )  # the run is protected
    assert "even with --force" in _error(capsys)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def _exportable(tmp_path, tiny_models) -> Path:
    from omegaconf import OmegaConf

    from hftl.adapters import FullFinetune
    from hftl.config import instantiate
    from hftl.models import Classifier
    from hftl.models.io import save_model

    cfg = OmegaConf.create({
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "pooling": "cls"},
        "head": {"_component_": "hftl.models.MLPHead", "activation": "tanh", "hidden_features": 32},
    })  # fmt: skip
    enc = FullFinetune().apply(instantiate(cfg.encoder))
    model = Classifier(enc, instantiate(cfg.head, in_features=enc.out_features, num_labels=2), ["a", "b"])
    save_model(model, tmp_path / "src" / "model", adapter_kind="full", config=cfg)
    return tmp_path / "src"


def test_export_force_replaces_only_its_own_export_and_leaves_nothing_on_failure(
    tmp_path, tiny_models, monkeypatch, capsys
):
    src, out = _exportable(tmp_path, tiny_models), tmp_path / "hf"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    assert hftl(["export", "--merge", str(src), "--out", str(foreign), "--force"]) == 2
    assert "not written by `hftl export`" in _error(capsys)
    assert (foreign / "thesis.tex").read_text() == "years of work"

    assert hftl(["export", "--merge", str(src), "--out", str(out)]) == 0
    assert (out / ".hftl_export.json").is_file() and (out / "config.json").is_file()
    assert hftl(["export", "--merge", str(src), "--out", str(out)]) == 2
    assert "--force" in _error(capsys)
    (out / "stale.txt").write_text("from the first export")
    assert hftl(["export", "--merge", str(src), "--out", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists()

    from transformers import PreTrainedModel

    def broken(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert hftl(["export", "--merge", str(src), "--out", str(out), "--force"]) == 2
    assert "No space left on device" in _error(capsys)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert hftl(["export", "--merge", str(src), "--out", str(tmp_path / "new")]) == 2
    assert "nothing was written" in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine", "src"]  # no temporary sibling left


# --- class 6: escaping ------------------------------------------------------------------------------------
def test_hostile_names_render_as_text(run, tmp_path):
    """Label names, per-class keys, metric keys, data and config values chosen to break the card."""
    MarkdownIt = pytest.importorskip("markdown_it").MarkdownIt  # noqa: N806  (a CommonMark + GFM-table parser)
    model = run / "model"
    meta = json.loads((model / "hftl_model.json").read_text())
    meta["label_names"] = HOSTILE[:2]
    (model / "hftl_model.json").write_text(json.dumps(meta))
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("validation", "test"):
        report = metrics[split]
        report["per_class"] = dict(
            zip(HOSTILE, [next(iter(report["per_class"].values()))] * len(HOSTILE), strict=True)
        )
    metrics["history"] = [{"step": 1, "eval_<img src=x onerror=alert(1)>": 0.5}]
    (run / "metrics.json").write_text(json.dumps(metrics))
    cfg = yaml.safe_load((model / "config.yaml").read_text())
    cfg["data"]["data_files"] = {"train": str(tmp_path / "d---<b onmouseover=alert(3)>bold|x" / "train.csv")}
    cfg["optimizer"]["lr"] = "0.1 | </details><script>alert(2)</script>\n```\n# injected"
    (model / "config.yaml").write_text(yaml.safe_dump(cfg))

    assert hftl(["card", str(run), "--repo-id", "alice/x"]) == 0
    text = (model / "README.md").read_text()
    front, body = text.split("\n---\n", 1)
    data = yaml.safe_load(front.removeprefix("---\n"))
    assert data["model-index"][0]["name"] == "alice/x"
    html = MarkdownIt("commonmark").enable("table").render(body)
    assert "<script" not in html and "<img" not in html.replace('<img src="plots/', "") and "<b>" not in html
    assert "javascript:" not in " ".join(re.findall(r'(?:href|src)="([^"]*)"', html))
    assert "<h1>injected" not in html and "<h1>" in html  # the only heading is the model's name
    for table in re.findall(r"<table>.*?</table>", html, flags=re.S):
        widths = {len(re.findall(r"<t[hd]", row)) for row in re.findall(r"<tr>.*?</tr>", table, flags=re.S)}
        assert len(widths) == 1, table  # no pipe or newline added or removed a cell
    for name in HOSTILE:  # every label is shown, as text
        shown = name.replace("\n", " ").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert shown.replace('"', "&quot;") in html, name
    assert "0.1 | &lt;/details&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html  # inside the config block


def test_plot_and_task_file_names_stay_inside_plots(tmp_path):
    from hftl.hub.card import _confusion_plots

    pytest.importorskip("matplotlib")
    plots = _confusion_plots(tmp_path, [("t", "confusion_../../evil", [[1, 0], [0, 1]], ["$\\alpha", "b$"])])
    (path,) = plots.values()
    assert path.startswith("plots/") and "/" not in path[len("plots/") :]
    assert [p.parent for p in tmp_path.rglob("*.png")] == [tmp_path / "plots"]
