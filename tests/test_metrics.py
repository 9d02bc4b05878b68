"""Unit tests for hftl.evaluation.metrics: exact numbers on hand-made examples, offline loading, metrics files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hftl.errors import DataError, HftlError
from hftl.evaluation import classification_report, format_report, load_metric, write_metrics
from hftl.evaluation.metrics import MODULES_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]

# 8 examples, 3 classes; 6 correct.
REFS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 1, 2, 2, 0]
# class 0: tp=2 fp=1 fn=1 -> P=2/3 R=2/3 F1=2/3
# class 1: tp=2 fp=1 fn=0 -> P=2/3 R=1   F1=0.8
# class 2: tp=2 fp=0 fn=1 -> P=1   R=2/3 F1=0.8
MACRO_F1 = (2 / 3 + 0.8 + 0.8) / 3


def test_report_exact_on_hand_made_example():
    report = classification_report(PREDS, REFS, label_names=["a", "b", "c"])

    assert report["accuracy"] == pytest.approx(0.75)
    assert report["macro_f1"] == pytest.approx(MACRO_F1)
    assert report["num_samples"] == 8
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    per_class = report["per_class"]
    assert list(per_class) == ["a", "b", "c"]
    assert per_class["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert per_class["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert per_class["c"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    # plain Python types, so the report goes straight into JSON
    json.dumps(report)


def test_report_accepts_numpy_arrays():
    report = classification_report(np.array(PREDS), np.array(REFS, dtype=np.int32), ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["macro_f1"] == pytest.approx(MACRO_F1)


def test_class_absent_everywhere_is_listed_but_not_averaged():
    report = classification_report(PREDS, REFS, label_names=["a", "b", "c", "d"])

    assert report["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_f1"] == pytest.approx(MACRO_F1)
    assert report["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


def test_zero_support_class_that_is_predicted_counts_as_zero():
    # class "c" never occurs but is predicted once: precision 0, recall undefined -> 0, F1 0.
    report = classification_report([0, 2, 1, 1], [0, 0, 1, 1], label_names=["a", "b", "c"])

    assert report["accuracy"] == pytest.approx(0.75)
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert report["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    ("preds", "refs", "match"),
    [
        ([], [], "0 examples"),
        ([0, 1], [0], "aligned"),
        ([0, 1], [0, -1], r"-1.*labelled split"),
        ([0, 3], [0, 1], r"\[3\] outside \[0, 2\)"),
        ([[0.1, 0.9]], [1], "argmax"),
    ],
)
def test_bad_inputs_raise_data_error(preds, refs, match):
    with pytest.raises(DataError, match=match):
        classification_report(preds, refs, label_names=["neg", "pos"])


def test_load_metric_is_cached_and_validates_name():
    assert load_metric("accuracy") is load_metric("accuracy")
    assert load_metric("f1").compute(predictions=[1, 0], references=[1, 1])["f1"] == pytest.approx(2 / 3)
    with pytest.raises(HftlError, match="accuracy, f1"):
        load_metric("bleu")


def test_metric_modules_load_offline_from_an_empty_cache(tmp_path):
    code = (
        "import evaluate\n"
        f"acc = evaluate.load({str(MODULES_DIR / 'accuracy')!r})\n"
        f"f1 = evaluate.load({str(MODULES_DIR / 'f1')!r})\n"
        "print(acc.compute(predictions=[0, 1, 1], references=[0, 1, 0])['accuracy'],"
        " f1.compute(predictions=[0, 1, 1], references=[0, 1, 0], average='macro')['f1'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    accuracy, macro_f1 = map(float, result.stdout.split())
    assert accuracy == pytest.approx(2 / 3)
    assert macro_f1 == pytest.approx(2 / 3)


def test_format_report_lists_every_class():
    report = classification_report(PREDS, REFS, label_names=["cat", "dog", "bird"])
    text = format_report(report, title="validation")
    lines = text.splitlines()

    assert lines[0] == "validation"
    assert "0.7500" in lines[1] and "n=8" in lines[1]
    assert f"{MACRO_F1:.4f}" in lines[2]
    assert [line.split()[0] for line in lines[-3:]] == ["cat", "dog", "bird"]
    assert lines[-1].split()[1:] == ["1.0000", "0.6667", "0.8000", "3"]


def test_write_metrics_merges_top_level_keys(tmp_path):
    path = tmp_path / "run" / "metrics.json"
    write_metrics(path, {"train": {"loss": 0.5}, "epoch": 1})
    write_metrics(path, {"eval": {"accuracy": np.float32(0.75)}, "epoch": np.int64(2)})

    data = json.loads(path.read_text())
    assert data == {"train": {"loss": 0.5}, "epoch": 2, "eval": {"accuracy": 0.75}, "written_by": "hftl"}
    assert path.read_text().startswith('{\n  "train"')  # indent 2
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp files left
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_metrics_is_atomic_when_replace_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_metrics(path, {"a": 1})
    before = path.read_text()

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(HftlError, match="cannot write metrics to .*simulated crash"):  # one-line OutputError
        write_metrics(path, {"a": 2})
    monkeypatch.undo()

    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_metrics_refuses_to_clobber_non_object_json(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("[1, 2]")
    with pytest.raises(HftlError, match=r"metrics\.json.*list"):
        write_metrics(path, {"a": 1})
    path.write_text("{not json")
    with pytest.raises(HftlError, match="not readable JSON"):
        write_metrics(path, {"a": 1})
    assert path.read_text() == "{not json"
