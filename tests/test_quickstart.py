"""README command 1, shrunk: make spoken digits with espeak-ng, adapt source voices -> target voices, report.

Runs the shipped config ``audio/spoken_digits_quickstart`` from a fresh working directory (its data path
``data/spoken_digits`` is relative to it) with 2 voices, 2 clips per digit, a 32-wide model and 4 steps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hftl.cli import main as hftl

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng not installed (apt-get install -y espeak-ng); it synthesizes the spoken digits",
)
CONFIG = "audio/spoken_digits_quickstart"
OUT = Path("outputs/spoken_digits_quickstart")
TINY = [
    "encoder.model.hidden_size=32",
    "encoder.model.intermediate_size=64",
    "encoder.model.num_heads=2",
    "encoder.model.num_layers=1",
    "train.max_steps=4",
    "train.eval_every_steps=2",
    "train.batch_size=8",
    "train.warmup_ratio=0.0",
]


def test_missing_data_tells_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert hftl(["run", "adapt", "--config", CONFIG, *TINY]) == 2
    err = capsys.readouterr().err
    assert "data/spoken_digits/manifest.csv" in err
    assert "hftl data make-spoken-digits --out data/spoken_digits" in err
    assert not OUT.exists()


@needs_espeak
def test_quickstart_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(tmp_path)
    make = ["data", "make-spoken-digits", "--out", "data/spoken_digits", "--voices", "en-us", "en-us+f2"]
    assert hftl([*make, "--per-digit", "2"]) == 0
    assert hftl(["run", "adapt", "--config", CONFIG, *TINY]) == 0
    out = capsys.readouterr().out

    metrics = json.loads((OUT / "metrics.json").read_text())
    method = metrics["method"]
    assert list(metrics["results"]) == ["source_only", "target_oracle", method]
    report = out[out.index("Adaptation report") :]
    for name in ("source_only", "target_oracle", method):
        acc = 100 * metrics["results"][name]["target_test_acc"]
        assert f"{acc:.2f}%" in next(line for line in report.splitlines() if line.startswith(name))
    assert metrics["results"][method]["steps"] == 4
    # the target's 20 clips: half carved (stratified) into the scored test split, half unlabelled
    assert "Target               = train (unlabelled) 10, test 10" in out

    model = OUT / "model"
    assert json.loads((model / "hftl_model.json").read_text())["modality"] == "audio"
    assert f"written to {model}" in out
    card = model / "README.md"
    assert card.is_file() and "domain-adaptation" in card.read_text(), "no model card written by the run"
    assert str(card) in out
