"""benchmarks/gpu.py runs its code paths on CPU (--cpu-smoke) and refuses to measure without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO

SCRIPT = str(REPO / "benchmarks" / "gpu.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script would run the benchmark")
def test_refuses_without_a_cuda_device() -> None:
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().count("\n") == 0
        and "no CUDA device" in proc.stderr
        and "--cpu-smoke" in proc.stderr
    )


def test_cpu_smoke_runs_training_evaluation_and_the_report(tmp_path) -> None:
    """Eager rows of every kind (compile is covered by tests/test_acceleration.py, marked slow), profiled."""
    rows = ["train/tiny/full/fp32", "train/tiny/lora/fp32", "train/tiny/dann-2fwd/fp32", "train/tiny/dann/bf16",
            "eval/tiny/lora/fp32", "train/tiny/full/bf16", "loop/tiny/full/bf16"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--cpu-smoke", "--profile", "--out", str(tmp_path), "--only", *(f"^{r}$" for r in rows)],
        capture_output=True, text=True, timeout=600, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = {r["row"]: r for r in map(json.loads, (tmp_path / "gpu.jsonl").read_text().splitlines())}
    assert sorted(results) == sorted(rows) and all(r["status"] == "ok" for r in results.values())
    full, lora = results["train/tiny/full/fp32"], results["train/tiny/lora/fp32"]
    two, one = results["train/tiny/dann-2fwd/fp32"], results["train/tiny/dann/bf16"]
    # counted FLOPs: LoRA skips the frozen weights' gradients; DANN runs twice the rows plus its discriminator
    # (1024 wide: as large as the tiny encoder), the same in one concatenated forward as in two (up to the
    # linear head's backward over the target rows, whose logits DANN does not use: 2 × 32 × 2 × 32 × 2 FLOPs)
    assert 0 < lora["flops_per_step"] < full["flops_per_step"]
    assert two["flops_per_step"] > 2 * full["flops_per_step"]
    assert one["flops_per_step"] == pytest.approx(two["flops_per_step"], rel=1e-4)
    assert results["eval/tiny/lora/fp32"]["rows_per_s"] > 0
    # the plain-loop row runs the train row's step (its counted FLOPs) without the Engine and the loader
    loop = results["loop/tiny/full/bf16"]
    assert (
        loop["samples_per_s"] > 0
        and loop["flops_per_step"] == results["train/tiny/full/bf16"]["flops_per_step"]
    )
    # --profile: the host functions of a step are named; no CUDA kernels on the CPU, so no busy share
    for row in (full, loop):
        assert row["top_host_ms_per_step"] and row["kernels_per_step"] == 0 and row["gpu_busy"] is None
    report = (tmp_path / "gpu.md").read_text()
    assert "| tiny/dann/bf16 |" in report and "| loop/tiny/full/bf16 |" in report and "## Goals" in report
