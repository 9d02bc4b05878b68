"""Tests for hftl.training.checkpoint on a real (CPU) Accelerator with a tiny model.

Save -> load round trip, rotation, corrupt / partial checkpoints skipped, simulated crashes mid-save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from hftl.errors import HftlError
from hftl.training.checkpoint import (
    CHECKPOINT_DIRNAME,
    FORMAT_VERSION,
    OWNER_FILENAME,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def train_step(model, optimizer):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def names(paths):
    return [p.name for p in paths]


def test_save_then_load_restores_weights_and_state(setup, tmp_path):
    accelerator, model, optimizer = setup
    train_step(model, optimizer)
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_momentum = optimizer.state_dict()["state"][0]["momentum_buffer"].clone()

    path = save_checkpoint(accelerator, tmp_path, step=7, state={"epoch": 1, "best_metric": 0.5})

    assert path == tmp_path / CHECKPOINT_DIRNAME / "step-00000007"
    files = {p.name for p in path.iterdir()}
    assert {
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "hftl_state.json",
        "COMPLETE",
    } <= files
    assert latest_checkpoint(tmp_path) == path

    train_step(model, optimizer)  # move away from the saved point
    assert not torch.equal(model.weight, saved_weights["weight"])

    state = load_checkpoint(accelerator, path)

    assert state == {"epoch": 1, "best_metric": 0.5, "step": 7, "format": FORMAT_VERSION}
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved_weights[key])
    assert torch.equal(optimizer.state_dict()["state"][0]["momentum_buffer"], saved_momentum)


def test_rotation_keeps_last_two(setup, tmp_path):
    accelerator, model, optimizer = setup
    for step in (10, 20, 30):
        train_step(model, optimizer)
        save_checkpoint(accelerator, tmp_path, step=step, state={})

    assert names(list_checkpoints(tmp_path)) == ["step-00000020", "step-00000030"]
    assert sorted(os.listdir(tmp_path / CHECKPOINT_DIRNAME)) == ["step-00000020", "step-00000030"]


def test_keep_last_none_keeps_all_and_same_step_is_replaced(setup, tmp_path):
    accelerator, model, optimizer = setup
    for step in (1, 2, 3):
        save_checkpoint(accelerator, tmp_path, step=step, state={"v": step}, keep_last=None)
    save_checkpoint(accelerator, tmp_path, step=3, state={"v": "again"}, keep_last=None)

    assert names(list_checkpoints(tmp_path)) == ["step-00000001", "step-00000002", "step-00000003"]
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path))["v"] == "again"
    assert len(os.listdir(tmp_path / CHECKPOINT_DIRNAME)) == 3


def test_empty_or_missing_output_dir_has_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path / "nope") is None
    assert list_checkpoints(tmp_path) == []


def _remove_marker(path: Path) -> None:
    (path / "COMPLETE").unlink()


def _corrupt_state(path: Path) -> None:
    (path / "hftl_state.json").write_text(f'{{"step": 2, "format": {FORMAT_VERSION}, "epoch": 99}}')


def _garbage_state(path: Path) -> None:
    (path / "hftl_state.json").write_bytes(b"\x00\xff not json")


def _remove_weights(path: Path) -> None:
    (path / "model.safetensors").unlink()


def _truncate_optimizer(path: Path) -> None:
    data = (path / "optimizer.bin").read_bytes()
    (path / "optimizer.bin").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_remove_marker, "no COMPLETE marker"),
        (_corrupt_state, "does not match the sha256"),
        (_garbage_state, "does not match the sha256"),
        (_remove_weights, "model.safetensors is missing"),
        (_truncate_optimizer, "optimizer.bin has"),
    ],
)
def test_damaged_newest_checkpoint_is_skipped(setup, tmp_path, caplog, damage, reason):
    accelerator, model, optimizer = setup
    first = save_checkpoint(accelerator, tmp_path, step=1, state={"epoch": 0})
    second = save_checkpoint(accelerator, tmp_path, step=2, state={"epoch": 1})
    damage(second)

    with caplog.at_level(logging.WARNING, logger="hftl.training.checkpoint"):
        assert latest_checkpoint(tmp_path) == first
    assert any(str(second) in r.getMessage() and reason in r.getMessage() for r in caplog.records)

    with pytest.raises(HftlError, match=rf"{second.name}.*{reason}"):
        load_checkpoint(accelerator, second)
    assert load_checkpoint(accelerator, first)["epoch"] == 0


def test_leftover_tmp_dir_is_ignored_then_cleaned(setup, tmp_path, caplog):
    accelerator, model, optimizer = setup
    first = save_checkpoint(accelerator, tmp_path, step=1, state={})
    leftover = tmp_path / CHECKPOINT_DIRNAME / ".tmp-step-00000005"
    leftover.mkdir()
    (leftover / OWNER_FILENAME).write_text(
        "written by hftl.training.checkpoint\n"
    )  # as a crashed save leaves it
    (leftover / "model.safetensors").write_bytes(b"partial")

    with caplog.at_level(logging.WARNING, logger="hftl.training.checkpoint"):
        assert latest_checkpoint(tmp_path) == first
        assert latest_checkpoint(tmp_path) == first
    tmp_warnings = [r for r in caplog.records if ".tmp-step-00000005" in r.getMessage()]
    assert len(tmp_warnings) == 1  # warned once

    save_checkpoint(accelerator, tmp_path, step=2, state={})
    assert not leftover.exists()


def test_crash_inside_save_state_keeps_previous_checkpoint(setup, tmp_path, monkeypatch):
    accelerator, model, optimizer = setup
    first = save_checkpoint(accelerator, tmp_path, step=1, state={"epoch": 0})
    real_save_state = accelerator.save_state

    def crashing_save_state(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)  # files written ...
        raise KeyboardInterrupt("killed mid-save")  # ... but the process dies before the marker

    monkeypatch.setattr(accelerator, "save_state", crashing_save_state)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, step=2, state={"epoch": 1})

    assert latest_checkpoint(tmp_path) == first
    assert names(list_checkpoints(tmp_path)) == ["step-00000001"]
    assert (tmp_path / CHECKPOINT_DIRNAME / ".tmp-step-00000002").is_dir()


def test_crash_at_final_rename_keeps_previous_checkpoint(setup, tmp_path, monkeypatch):
    accelerator, model, optimizer = setup
    first = save_checkpoint(accelerator, tmp_path, step=1, state={"epoch": 0})

    def crash(*args, **kwargs):
        raise OSError("simulated power loss")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(HftlError, match="cannot write checkpoint step-00000002 .*power loss"):
        save_checkpoint(accelerator, tmp_path, step=2, state={"epoch": 1})
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == first
    tmp = tmp_path / CHECKPOINT_DIRNAME / ".tmp-step-00000002"
    assert (tmp / "COMPLETE").is_file()  # fully written, but never renamed: still not trusted
    assert load_checkpoint(accelerator, first) == {"epoch": 0, "step": 1, "format": FORMAT_VERSION}


def test_state_file_records_step_format_and_files(setup, tmp_path):
    accelerator, model, optimizer = setup
    path = save_checkpoint(accelerator, tmp_path, step=3, state={"epoch": 2})
    data = json.loads((path / "hftl_state.json").read_text())

    assert data["step"] == 3 and data["format"] == FORMAT_VERSION and data["epoch"] == 2
    weights = path / "model.safetensors"
    assert data["files"]["model.safetensors"] == {
        "size": weights.stat().st_size,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    assert OWNER_FILENAME not in data["files"] and (path / OWNER_FILENAME).is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": -1, "state": {}}, "`step` must be an int >= 0"),
        ({"step": 1, "state": {}, "keep_last": 0}, "`keep_last` must be an int >= 1 or None"),
        ({"step": 1, "state": {"format": 2}}, "reserved keys"),
        ({"step": 1, "state": {"step": 2}}, "must equal step=1"),
        ({"step": 1, "state": {"tensor": torch.ones(2)}}, "JSON-serialisable"),
    ],
)
def test_bad_save_arguments_raise_before_writing(setup, tmp_path, kwargs, match):
    accelerator, _, _ = setup
    with pytest.raises(HftlError, match=match):
        save_checkpoint(accelerator, tmp_path, **kwargs)
    assert not (tmp_path / CHECKPOINT_DIRNAME).exists()


def test_load_into_a_different_model_is_a_clear_error(setup, tmp_path):
    accelerator, _, _ = setup
    path = save_checkpoint(accelerator, tmp_path, step=1, state={})

    other = Accelerator(cpu=True)
    other.prepare(torch.nn.Linear(3, 2), torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1))
    with pytest.raises(HftlError, match=r"step-00000001 does not fit"):
        load_checkpoint(other, path)


def test_saving_an_older_step_warns_and_never_prunes_the_new_save(setup, tmp_path, caplog):
    accelerator, _, _ = setup
    save_checkpoint(accelerator, tmp_path, step=50, state={})
    with caplog.at_level(logging.WARNING, logger="hftl.training.checkpoint"):
        path = save_checkpoint(accelerator, tmp_path, step=3, state={}, keep_last=1)

    assert path.is_dir()
    assert names(list_checkpoints(tmp_path)) == ["step-00000003", "step-00000050"]
    assert any("later checkpoints" in r.getMessage() for r in caplog.records)


# -- integrity: content hashes -----------------------------------------------------------------------------
def _flip_byte(file: Path, offset: int | None = None) -> None:
    """Corrupts ``file`` without changing its size (the size check alone cannot see it)."""
    data = bytearray(file.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_flipped_byte_falls_back_to_the_previous_checkpoint(setup, tmp_path, caplog, name):
    accelerator, model, optimizer = setup
    first = save_checkpoint(accelerator, tmp_path, step=1, state={"epoch": 0})
    train_step(model, optimizer)
    second = save_checkpoint(accelerator, tmp_path, step=2, state={"epoch": 1})
    size = (second / name).stat().st_size
    _flip_byte(second / name)
    assert (second / name).stat().st_size == size

    assert names(list_checkpoints(tmp_path)) == ["step-00000001", "step-00000002"]  # sizes only
    with caplog.at_level(logging.WARNING, logger="hftl.training.checkpoint"):
        assert latest_checkpoint(tmp_path) == first
    assert any(str(second) in r.getMessage() and f"{name} does not match its sha256" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    with pytest.raises(HftlError, match=rf"{second.name}.*{name} does not match its sha256"):
        load_checkpoint(accelerator, second)


def test_every_checkpoint_corrupt_is_an_error_when_strict(setup, tmp_path):
    accelerator, _, _ = setup
    only = save_checkpoint(accelerator, tmp_path, step=1, state={})
    _flip_byte(only / "model.safetensors")

    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(HftlError, match=r"none of its checkpoints is intact.*step-00000001.*--overwrite"):
        latest_checkpoint(tmp_path, strict=True)
    assert latest_checkpoint(tmp_path / "fresh", strict=True) is None  # no checkpoints at all: no error


def test_a_checkpoint_is_hashed_once_per_process(setup, tmp_path, monkeypatch):
    import hftl.training.checkpoint_manifest as manifest

    accelerator, _, _ = setup
    path = save_checkpoint(accelerator, tmp_path, step=1, state={})
    calls = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: calls.append(p) or real(p))
    assert latest_checkpoint(tmp_path) == path
    hashed = len(calls)
    load_checkpoint(accelerator, path)
    assert hashed > 0 and len(calls) == hashed  # load_checkpoint reuses the verification


# -- ownership: hftl removes only what it wrote ---------------------------------------------------------
def test_foreign_tmp_entries_are_never_removed(setup, tmp_path, caplog):
    accelerator, _, _ = setup
    save_checkpoint(accelerator, tmp_path, step=1, state={})
    root = tmp_path / CHECKPOINT_DIRNAME
    (root / ".tmp-notes").mkdir()
    (root / ".tmp-notes" / "mine.txt").write_text("keep me")
    (root / ".tmp-scratch.txt").write_text("keep me too")

    with caplog.at_level(logging.WARNING, logger="hftl.training.checkpoint"):
        for step in (2, 3, 4):
            save_checkpoint(accelerator, tmp_path, step=step, state={}, keep_last=1)

    assert (root / ".tmp-notes" / "mine.txt").read_text() == "keep me"
    assert (root / ".tmp-scratch.txt").read_text() == "keep me too"
    assert names(list_checkpoints(tmp_path)) == ["step-00000004"]
    assert any(".tmp-notes" in r.getMessage() and "left alone" in r.getMessage() for r in caplog.records)


def test_foreign_folder_with_the_save_name_stops_the_save(setup, tmp_path):
    accelerator, _, _ = setup
    save_checkpoint(accelerator, tmp_path, step=1, state={})
    blocker = tmp_path / CHECKPOINT_DIRNAME / ".tmp-step-00000002"
    blocker.mkdir()
    (blocker / "notes.txt").write_text("mine")
    with pytest.raises(HftlError, match=r"\.tmp-step-00000002 exists and was not written by hftl"):
        save_checkpoint(accelerator, tmp_path, step=2, state={})
    assert (blocker / "notes.txt").read_text() == "mine"


def test_foreign_step_folder_is_neither_replaced_nor_pruned(setup, tmp_path):
    accelerator, _, _ = setup
    foreign = tmp_path / CHECKPOINT_DIRNAME / "step-00000001"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(HftlError, match=r"step-00000001 exists and was not written by hftl"):
        save_checkpoint(accelerator, tmp_path, step=1, state={})
    for step in (2, 3, 4):
        save_checkpoint(accelerator, tmp_path, step=step, state={}, keep_last=1)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_save_into_a_vanished_output_dir_is_one_clear_error(setup, tmp_path):
    accelerator, _, _ = setup
    out = tmp_path / "run"
    out.symlink_to(tmp_path / "gone")  # e.g. a scratch disk unmounted mid-run
    with pytest.raises(HftlError, match=r"cannot write checkpoint step-00000001 to .*output_dir"):
        save_checkpoint(accelerator, out, step=1, state={})
