"""Two data-parallel processes on CPU (gloo) through `hftl run --num-processes 2`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, base_config, dump, write_text_csv

from hftl.cli import main as hftl


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


def _no_dropout_copy(path: str, dest) -> str:
    """The tiny BERT with dropout off, so a 2-process and a 1-process run compute the same numbers."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(path).save_pretrained(dest)
    return str(dest)


def test_cpu_2proc_config_matches_one_process(tmp_path, tiny_models):
    """`accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` runs 2 gloo processes whose
    gathered metrics equal a 1-process run with the same global batch (2 × 8 = 16)."""
    files = {
        "train": str(write_text_csv(tmp_path / "train.csv", 48, 0)),
        "validation": str(write_text_csv(tmp_path / "val.csv", 17, 1)),
        "test": str(write_text_csv(tmp_path / "test.csv", 19, 2)),
    }
    model = _no_dropout_copy(tiny_models["bert"], tmp_path / "bert_no_dropout")
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": model, "max_length": 16}
    data = {"path": "csv", "data_files": files}
    # no length grouping: the sampler is then one seeded permutation, so the two processes' batches of 8
    # are exactly the 1-process batch of 16
    two = base_config(enc, data, tmp_path / "two", epochs=1, group_by_length=False)
    one = base_config(enc, data, tmp_path / "one", epochs=1, group_by_length=False, batch_size=16)
    config = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
         str(REPO / "recipes" / "finetune.py"), "--config", dump(two, tmp_path / "two.yaml")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 × 1 × 2" in proc.stdout  # really two processes (a silent 1-process run would print "× 1")
    assert hftl(["run", "finetune", "--config", dump(one, tmp_path / "one.yaml")]) == 0

    m2, m1 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("two", "one"))
    assert m2["steps"] == m1["steps"] == 3  # 48 rows / global batch 16
    for split, n in (("validation", 17), ("test", 19)):
        assert m2[split]["num_samples"] == m1[split]["num_samples"] == n  # no duplicated padding samples
        assert m2[split]["confusion_matrix"] == m1[split]["confusion_matrix"]
        assert m2[split]["accuracy"] == m1[split]["accuracy"]
        assert m2[split]["loss"] == pytest.approx(m1[split]["loss"], rel=1e-4, abs=1e-5)


def test_cpu_2proc_model_loads_with_hftl_load(tmp_path, tiny_models):
    """The model a 2-process run saves (rank 0 writes it) loads with hftl.load and predicts."""
    import hftl

    files = {name: str(write_text_csv(tmp_path / f"{name}.csv", n, seed))
             for name, n, seed in (("train", 32, 0), ("validation", 9, 1), ("test", 9, 2))}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp_path / "out", epochs=1)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"), str(REPO / "recipes" / "finetune.py"),
         "--config", dump(cfg, tmp_path / "c.yaml")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 × 1 × 2" in proc.stdout
    predictions = hftl.load(tmp_path / "out", device="cpu")(["the movie was good", "the movie was bad"])
    assert [p["label"] in ("negative", "positive") for p in predictions] == [True, True]


@pytest.mark.parametrize("config", ["fsdp", "deepspeed_zero2"])
def test_fsdp_and_deepspeed_configs_refuse_to_fall_back_to_ddp_on_cpu(tmp_path, tiny_models, config):
    """accelerate runs FSDP / DeepSpeed on CUDA devices only: launched on CPU processes it would train
    plain DDP under the FSDP/DeepSpeed file's name (FSDP) or count one process per rank (DeepSpeed without
    ACCELERATE_USE_CPU). hftl stops both with one line before loading anything (docs/scaling.md)."""
    if config == "deepspeed_zero2":
        pytest.importorskip("deepspeed", reason="accelerate needs deepspeed installed to launch the file")
    files = {name: str(write_text_csv(tmp_path / f"{name}.csv", 16, seed))
             for seed, name in enumerate(("train", "validation", "test"))}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp_path / "out", epochs=1)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / f"{config}.yaml"), "--mixed_precision", "no",
         str(REPO / "recipes" / "finetune.py"), "--config", dump(cfg, tmp_path / "c.yaml"),
         "train.mixed_precision=no"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )  # fmt: skip
    assert proc.returncode != 0
    name = "FSDP" if config == "fsdp" else "DeepSpeed"
    assert f"asks for {name}" in proc.stderr and "needs CUDA devices" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained
