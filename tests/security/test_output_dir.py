"""hftl never deletes or overwrites what it did not write, and never mixes two runs (issue 13, classes 4, 6, 7).

Each guard of ``hftl.training.run_dir`` / ``checkpoint`` / ``write_metrics`` / ``save_model`` against the
real CLI on a tiny BERT: refused locations before any work, a foreign folder untouched byte for byte, a
re-run with other config or data refused (``--overwrite`` replaces only hftl's files), user files that look
like hftl's temporary names kept, a flipped byte in a checkpoint caught by its sha256, and write errors after
training started ending in one line with nothing half-written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hftl.recipes.finetune import FinetuneRecipe

from hftl.cli import main as hftl
from hftl.errors import HftlError
from hftl.evaluation import write_metrics
from hftl.models.io import save_model
from hftl.training.run_dir import MARKER_FILE, read_marker

WORDS = {"pos": "good great fine nice love", "neg": "bad awful poor hate boring"}


def write_csv(path: Path, n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        rows.append(f"the movie was {' '.join(rng.choice(WORDS[label].split(), size=3))},{label}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture
def ws(tmp_path: Path, tiny_models: dict[str, str]) -> dict[str, Path]:
    """Data and a 4-step config (checkpoints at steps 2 and 4) in ``tmp_path/work``; runs go to ``out``."""
    work = tmp_path / "work"
    work.mkdir()
    files = {
        "train": write_csv(work / "train.csv", 32, 0),
        "validation": write_csv(work / "val.csv", 8, 1),
        "test": write_csv(work / "test.csv", 8, 2),
    }
    cfg = {
        "recipe": "finetune",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "encoder": {
            "_component_": "hftl.encoders.TextEncoder",
            "model": tiny_models["bert"],
            "max_length": 16,
        },
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8, "save_every_steps": 2, "eval_every_steps": 2},
    }
    config = work / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return {"root": tmp_path, "config": config, "out": tmp_path / "out", "train": work / "train.csv"}


def run(ws: dict[str, Path], capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = hftl(["run", "finetune", "--config", str(ws["config"]), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: bytes (files), link target (symlinks), mode and mtime."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else None
        found[path.relative_to(root).as_posix()] = (content, st.st_mode, st.st_mtime_ns)
    return found


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the recipe starts (the checks must refuse before anything loads)."""
    monkeypatch.setattr(FinetuneRecipe, "run", lambda self: pytest.fail("the recipe started"))


# -- places that can never be a run's folder: refused before any work ---------------------------------------
def _below_file(root: Path) -> str:
    (root / "notes.txt").write_text("x")
    return str(root / "notes.txt" / "run")


def _dangling(root: Path) -> str:
    (root / "scratch").symlink_to(root / "unmounted")
    return str(root / "scratch")


def _below_dangling(root: Path) -> str:
    return _dangling(root) + "/run"


LOCATIONS = {
    "empty": (lambda root: "", "is empty"),
    "none": (lambda root: "None", "is empty"),
    "dot": (lambda root: ".", "the current folder"),
    "dotdot": (lambda root: "..", "a parent of the current folder"),
    "root": (lambda root: "/", "filesystem root"),
    "home": (lambda root: str(root / "home"), "your home folder"),
    "tilde": (lambda root: "~/runs", "starts with `~`"),
    "is-a-file": (lambda root: (root / "f.txt").write_text("x") and str(root / "f.txt"), "is the file"),
    "below-a-file": (_below_file, "lies below the file"),
    "dangling-symlink": (_dangling, "dangling symlink"),
    "below-dangling-symlink": (_below_dangling, "dangling symlink"),
    "contains-the-data": (lambda root: str(root / "work"), "contains `data.data_files."),
}


@pytest.mark.parametrize("case", LOCATIONS, ids=list(LOCATIONS))
def test_refused_locations_write_nothing(case, ws, capsys, monkeypatch, no_work):
    value_of, expected = LOCATIONS[case]
    (ws["root"] / "home").mkdir()
    monkeypatch.setenv("HOME", str(ws["root"] / "home"))
    cwd = ws["root"] / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    value = value_of(ws["root"])
    before = snapshot(ws["root"])

    code, _, err = run(ws, capsys, f"output_dir={value}")

    assert code == 2
    line = one_error(err)
    assert "`output_dir`" in line and expected in line, line
    assert snapshot(ws["root"]) == before


# -- a folder hftl did not create ---------------------------------------------------------------------------
def _foreign_folder(out: Path) -> None:
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_bytes(b"\x00\x01 my weights")
    (out / "notes.txt").write_text("my notes")
    (out / "metrics.json").write_text('{"accuracy": 0.99}')
    (out / "checkpoints" / ".tmp-step-00000002").mkdir(parents=True)


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "--overwrite"])
def test_foreign_folder_is_refused_and_untouched(overwrite, ws, capsys, no_work):
    _foreign_folder(ws["out"])
    before = snapshot(ws["out"])

    code, _, err = run(ws, capsys, *(["--overwrite"] if overwrite else []))

    assert code == 2
    line = one_error(err)
    assert "not empty" in line and "notes.txt" in line and "new `output_dir`" in line, line
    assert snapshot(ws["out"]) == before


def test_hftl_folder_from_before_markers_is_refused(ws, capsys, no_work):
    (ws["out"] / "model").mkdir(parents=True)
    (ws["out"] / "model" / "hftl_model.json").write_text("{}")
    code, _, err = run(ws, capsys, "--overwrite")
    assert code == 2 and "before run markers" in one_error(err)


def test_tampered_marker_cannot_steer_overwrite(ws, capsys, no_work):
    ws["out"].mkdir()
    victim = ws["root"] / "victim.txt"
    victim.write_text("keep")
    marker = {"written_by": "hftl", "format": 1, "outputs": ["../victim.txt"]}
    (ws["out"] / MARKER_FILE).write_text(json.dumps(marker))
    (ws["out"] / "metrics.json").write_text('{"written_by": "hftl"}')

    code, _, err = run(ws, capsys, "--overwrite")

    assert code == 2 and "is damaged" in one_error(err)
    assert victim.read_text() == "keep"


# -- an earlier hftl run: same run resumes, another one needs --overwrite, only hftl's files go ---------------
def test_rerun_resume_and_overwrite(ws, capsys, caplog):
    out = ws["out"]
    code, _, err = run(ws, capsys)
    assert code == 0, err
    marker = read_marker(out)
    assert {"checkpoints", "model", "metrics.json"} <= set(marker["outputs"])
    finished = snapshot(out)

    # another config: refused, naming the key and both fingerprints
    code, _, err = run(ws, capsys, "optimizer.lr=5e-3")
    line = one_error(err)
    assert code == 2 and "`optimizer.lr`" in line and marker["config_fingerprint"] in line, line
    assert "--overwrite" in line
    # other data (same file name, new rows): refused, naming the data key
    train, stat = ws["train"].read_bytes(), ws["train"].stat()
    write_csv(ws["train"], 32, seed=5)
    code, _, err = run(ws, capsys)
    line = one_error(err)
    assert code == 2 and "data fingerprint" in line and "`data.data_files.train`" in line, line
    ws["train"].write_bytes(train)
    os.utime(ws["train"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # starting over on top of it
    code, _, err = run(ws, capsys, "train.resume=false")
    assert code == 2 and "`train.resume` is false" in one_error(err)
    assert snapshot(out) == finished  # none of the refusals changed anything

    # the same command again, with user files named like hftl's temporary ones and a flipped byte in the
    # newest checkpoint: resumes from the previous checkpoint with a warning; the user files survive
    mine = {
        "notes.txt": "mine",
        ".model.tmp/keep.txt": "mine",
        ".model.old": "mine",
        ".metrics.json.x.tmp": "mine",
        "checkpoints/.tmp-notes/keep.txt": "mine",
        "checkpoints/.tmp-step-00000003/keep.txt": "mine",
    }
    for name, text in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    weights = out / "checkpoints" / "step-00000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hftl.training.checkpoint"):
        code, stdout, err = run(ws, capsys)
    assert code == 0, err
    assert f"Resumed from {out / 'checkpoints' / 'step-00000002'} (step 2" in stdout, stdout
    assert any("step-00000004" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    assert all((out / name).read_text() == text for name, text in mine.items())

    # --overwrite with another config: hftl's files are replaced, the user's stay
    code, _, err = run(ws, capsys, "--overwrite", "optimizer.lr=5e-3")
    assert code == 0, err
    assert all((out / name).read_text() == text for name, text in mine.items())
    assert yaml.safe_load((out / "model" / "config.yaml").read_text())["optimizer"]["lr"] == 5e-3
    assert read_marker(out)["config_fingerprint"] != marker["config_fingerprint"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_foreign_metrics_json_in_a_run_folder_survives(ws, capsys):
    out = ws["out"]
    assert run(ws, capsys, "train.max_steps=2")[0] == 0
    (out / "metrics.json").write_text('{"my": "results"}')
    for args in ((), ("--overwrite",)):
        code, _, err = run(ws, capsys, "train.max_steps=2", *args)
        line = one_error(err)
        assert code == 2 and "metrics.json was not written by hftl" in line, line
    assert (out / "metrics.json").read_text() == '{"my": "results"}'


# -- writers: never merge into, replace or delete what hftl did not write -------------------------------------
def test_write_metrics_refuses_foreign_files(tmp_path):
    for name, content in (("obj.json", '{"accuracy": 1}'), ("text.json", "not json"), ("list.json", "[1]")):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(HftlError, match=rf"{name}.*(not written by hftl|not readable JSON|JSON list)"):
            write_metrics(path, {"accuracy": 0.5})
        assert path.read_text() == content
    (tmp_path / "link.json").symlink_to(tmp_path / "obj.json")
    with pytest.raises(HftlError, match="symlink"):
        write_metrics(tmp_path / "link.json", {"accuracy": 0.5})

    ours = tmp_path / "ours.json"
    write_metrics(ours, {"a": 1})
    write_metrics(ours, {"b": 2})
    assert json.loads(ours.read_text()) == {"a": 1, "b": 2, "written_by": "hftl"}


def test_save_model_never_replaces_a_foreign_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"mine")
    with pytest.raises(HftlError, match="not an hftl model directory"):
        save_model(None, target, adapter_kind="full", config=None)  # refused before the model is touched
    assert (target / "weights.bin").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_eval_output_checked_before_loading(tmp_path, capsys, monkeypatch):
    import hftl.models.io as io

    monkeypatch.setattr(io, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    foreign = tmp_path / "results.json"
    foreign.write_text('{"mine": 1}')
    assert hftl(["eval", str(tmp_path), "--output", str(foreign)]) == 2
    assert "not written by hftl" in one_error(capsys.readouterr().err)
    assert foreign.read_text() == '{"mine": 1}'

    (tmp_path / "model").mkdir()  # a model outside an hftl run folder: eval needs --output
    (tmp_path / "model" / "hftl_model.json").write_text("{}")
    assert hftl(["eval", str(tmp_path / "model")]) == 2
    assert "--output" in one_error(capsys.readouterr().err)
    assert not list(tmp_path.glob("eval_*.json"))


# -- errors after training started: one line, exit 2, nothing half-written ------------------------------------
def test_output_dir_gone_after_training_started(ws, capsys, monkeypatch):
    out, moved = ws["out"], ws["root"] / "moved"
    real = FinetuneRecipe.evaluate

    def evaluate_then_lose_the_folder(self):
        metrics = real(self)
        out.rename(moved)  # e.g. a scratch disk unmounted, leaving a dangling link behind
        out.symlink_to(ws["root"] / "unmounted")
        return metrics

    monkeypatch.setattr(FinetuneRecipe, "evaluate", evaluate_then_lose_the_folder)
    code, _, err = run(ws, capsys, "train.max_steps=2")

    assert code == 2
    assert "cannot write the model" in one_error(err) and "Traceback" not in err
    assert not (moved / "model").exists() and not list(moved.glob(".model*"))
    assert not (ws["root"] / "unmounted").exists()


def test_disk_full_while_writing_the_model(ws, capsys, monkeypatch):
    import hftl.models.io as io

    def full_disk(model, tmp, **kwargs):
        (tmp / "encoder").mkdir(parents=True)
        (tmp / "head.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "_write_model_dir", full_disk)
    code, _, err = run(ws, capsys, "train.max_steps=2")

    assert code == 2
    line = one_error(err)
    assert "cannot write the model" in line and "No space left on device" in line, line
    out = ws["out"]
    assert not (out / "model").exists() and not list(out.glob(".model*"))
    assert not (out / "metrics.json").exists()  # the metrics follow the model, which failed
    assert (out / "checkpoints" / "step-00000002").is_dir()  # the same command resumes from here


# -- the marker's ledger and --overwrite, unit level ----------------------------------------------------------
def test_overwrite_removes_only_recorded_hftl_outputs(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from hftl.training.checkpoint import OWNER_FILENAME
    from hftl.training.run_dir import claim_output_dir, record_output

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    cfg = OmegaConf.create({"output_dir": str(out), "optimizer": {"lr": 0.1}})
    claim_output_dir(cfg, recipe="adapt", resume=True)
    step = out / "runs" / "DANN" / "checkpoints" / "step-00000001"  # as the adapt recipe's engines write
    step.mkdir(parents=True)
    (step / OWNER_FILENAME).write_text("hftl")
    record_output(step.parent)
    write_metrics(out / "metrics.json", {"accuracy": 0.5})
    (out / "features_DANN.png").write_bytes(b"png")
    record_output(out / "features_DANN.png")
    mine = [
        out / "notes.txt",
        out / "runs" / "DANN" / "notes.txt",
        out / "runs" / "DANN" / "checkpoints" / "x.txt",
    ]
    for path in mine:
        path.write_text("mine")
    assert read_marker(out)["outputs"] == ["features_DANN.png", "metrics.json", "runs"]

    claim_output_dir(
        OmegaConf.merge(cfg, {"optimizer": {"lr": 0.2}}), recipe="adapt", resume=True, overwrite=True
    )

    assert all(path.read_text() == "mine" for path in mine)
    assert (
        not step.exists() and not (out / "metrics.json").exists() and not (out / "features_DANN.png").exists()
    )
    assert read_marker(out)["outputs"] == []


def test_data_fingerprint_sees_weights_and_data_not_cards(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from hftl.training.fingerprint import data_fingerprint

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "teacher" / "model"
    model.mkdir(parents=True)
    (model / "hftl_model.json").write_text("{}")
    (model / "head.safetensors").write_bytes(b"weights")
    data = tmp_path / "clips"
    data.mkdir()
    (data / "a.wav").write_bytes(b"RIFF")
    cfg = OmegaConf.create({"teacher": {"path": str(tmp_path / "teacher")}, "data": {"path": str(data)}})
    first = data_fingerprint(cfg)
    assert set(first.parts) == {"teacher.path", "data.path"}

    (model / "README.md").write_text("# a card rendered later")  # hftl card / hftl eval write here
    (tmp_path / "teacher" / "eval_test.json").write_text("{}")
    assert data_fingerprint(cfg).digest == first.digest
    (model / "head.safetensors").write_bytes(b"retrained")
    (data / "b.wav").write_bytes(b"RIFF")
    assert data_fingerprint(cfg).changed(first.parts) == ["data.path", "teacher.path"]


def test_corrupt_best_weights_are_not_restored(tmp_path, caplog):
    """The best validation weights are restored only if their sha256 is the one recorded when saved."""
    import torch
    from torch.utils.data import default_collate

    from hftl.training import Engine, TrainConfig
    from hftl.training.builders import build_accelerator, build_loader, build_scheduler

    config = TrainConfig(max_steps=3, eval_every_steps=1, batch_size=4, cpu=True, lr_scheduler="constant",
                         warmup_ratio=0.0)  # fmt: skip
    accelerator = build_accelerator(config, tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    rows = [{"x": torch.randn(4), "labels": torch.tensor(i % 2)} for i in range(12)]
    loader = build_loader(rows, collate_fn=default_collate, batch_size=4, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = build_scheduler(config, optimizer, total_steps=3, num_processes=1)

    def step(m, batch, progress):
        return torch.nn.functional.cross_entropy(m(batch["x"]), batch["labels"]), {}

    scores = iter([0.9, 0.1, 0.1])  # best at step 1; the third validation corrupts the saved best file

    def evaluate():
        value = next(scores)
        if engine.state.step == 3:
            data = bytearray(engine.best_path.read_bytes())
            data[-1] ^= 0xFF  # in the tensor data: load_file would read it without complaint
            engine.best_path.write_bytes(bytes(data))
        return {"accuracy": value}

    engine = Engine(accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                    train_loader=loader, config=config, output_dir=tmp_path, total_steps=3, evaluate=evaluate,
                    loss_fn=step)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hftl.training.best"):
        state = engine.fit()
    assert state.best_step == 1 and state.best_sha256 is not None
    assert any("does not match the sha256" in r.getMessage() for r in caplog.records)
