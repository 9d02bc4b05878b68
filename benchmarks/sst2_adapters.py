"""SST-2 with all-MiniLM-L6-v2: LoRA vs full fine-tune vs frozen probe, through `hftl run finetune`.

Run (from the repo root, data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/sst2_adapters.py                     # all three, ~1 h on 2 CPU cores
    python benchmarks/sst2_adapters.py --configs text/minilm_lora_sst2 --extra train.max_steps=200

Writes benchmarks/results/sst2_adapters.md (the table the README quotes) and one JSON line per run
to benchmarks/results/sst2_adapters.jsonl. Test split = GLUE SST-2 dev (872 sentences).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = ["text/minilm_lora_sst2", "text/minilm_full_sst2", "text/minilm_probe_sst2"]


def run(config: str, out: Path, extra: list[str]) -> dict:
    cmd = ["hftl", "run", "finetune", "--config", config, f"output_dir={out}", "train.resume=false", *extra]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        code = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{config} failed (exit {code}); see {log}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "config": config,
        "command": " ".join(cmd),
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["macro_f1"],
        "validation_accuracy": metrics["validation"]["accuracy"],
        "best_step": metrics["best_step"],
        "steps": metrics["steps"],
        "wall_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--out", default="outputs/bench_sst2")
    parser.add_argument("--extra", nargs="*", default=[], help="Overrides passed to every run.")
    args = parser.parse_args()
    rows = []
    for config in args.configs:
        row = run(config, Path(args.out) / config.replace("/", "_"), args.extra)
        rows.append(row)
        with open(HERE / "results" / "sst2_adapters.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, " + (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    )
    lines = [
        "# SST-2, all-MiniLM-L6-v2 (test = GLUE dev, 872 sentences)",
        "",
        f"Machine: {machine}. Command: `python benchmarks/sst2_adapters.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| config | test acc | test macro-F1 | val acc (2000) | steps (best) | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['config']}` | {100 * r['test_accuracy']:.2f} % | {100 * r['test_macro_f1']:.2f} % | "
            f"{100 * r['validation_accuracy']:.2f} % | {r['steps']} ({r['best_step']}) | {r['wall_seconds'] / 60:.1f} min |"
        )
    (HERE / "results" / "sst2_adapters.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
