"""Two data-parallel processes on CPU (gloo) through `hftl run --num-processes 2`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_cli import base_config, dump, write_text_csv


def test_two_processes_gather_every_example_once(tmp_path, tiny_models):
    files = {
        "train": str(write_text_csv(tmp_path / "train.csv", 48, 0)),
        "validation": str(write_text_csv(tmp_path / "val.csv", 17, 1)),  # odd sizes: the last batch is uneven
        "test": str(write_text_csv(tmp_path / "test.csv", 19, 2)),
    }
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "hftl.cli", "run", "finetune", "--num-processes", "2", "--config", dump(cfg, tmp_path / "c.yaml")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 × 1 × 2" in proc.stdout  # batch per device × accumulation × processes
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # gather_for_metrics drops the samples DDP duplicates to even out the shards
    assert metrics["test"]["num_samples"] == 19 and metrics["validation"]["num_samples"] == 17
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 19
    assert metrics["steps"] == 2 * 3  # 48 rows / (8 per device × 2 processes) = 3 steps per epoch
