"""MNIST <-> USPS with a LeNet from scratch: source-only, oracle and adaptation methods via `hftl run adapt`.

Run (from the repo root; data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/digits_adaptation.py                                  # M->U and U->M, DANN/CDAN/MCC, seed 0
    python benchmarks/digits_adaptation.py --directions M-U --methods DANN CDAN --seeds 0 1 2

Writes benchmarks/results/digits_adaptation.md (quoted by the README) and a JSON line per run. Each
row is one `hftl run adapt --config vision/lenet_mnist_usps` command (printed in the log); the
checkpoint is chosen without target labels (information maximization), and target test accuracy
is read once at the end. TLlib's reference numbers (LeNet, same direction) are shown beside.
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

import numpy as np

HERE = Path(__file__).resolve().parent
DIRECTIONS = {"M-U": ("hftl:mnist", "hftl:usps"), "U-M": ("hftl:usps", "hftl:mnist")}
# TLlib digits benchmark (LeNet), target accuracy %: source-only, DANN, CDAN, MCC.
TLLIB = {"M-U": {"source_only": 82.1, "dann": 91.7, "cdan": 96.0, "mcc": 95.1},
         "U-M": {"source_only": 74.6, "dann": 95.2, "cdan": 97.7, "mcc": 94.6}}  # fmt: skip


def run(direction: str, method: str, seed: int, out: Path, baselines: bool, extra: list[str]) -> dict:
    source, target = DIRECTIONS[direction]
    out = out / f"{direction}_{method.lower()}_s{seed}"
    cmd = [
        "hftl", "run", "adapt", "--config", "vision/lenet_mnist_usps", f"output_dir={out}", f"seed={seed}",
        f"source.path={source}", f"target.path={target}", f"method._component_=hftl.adaptation.{method}",
        "train.resume=false", "report.baselines=" + ("[source_only,target_oracle]" if baselines else "[]"),
    ]  # fmt: skip
    if method in ("MCC",):  # MCC has no discriminator
        cmd += ["~method.hidden_features"]
    cmd += extra
    print("$", " ".join(cmd), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(str(out) + ".log", "w") as fh:
        code = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    if code != 0:
        raise SystemExit(f"failed (exit {code}); see {out}.log")
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {name: r["target_test_acc"] for name, r in metrics["results"].items()}
    return {"direction": direction, "method": method.lower(), "seed": seed, "target_acc": rows,
            "seconds": round(time.perf_counter() - start, 1), "command": " ".join(cmd)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directions", nargs="+", default=["M-U", "U-M"], choices=list(DIRECTIONS))
    parser.add_argument("--methods", nargs="+", default=["DANN", "CDAN", "MCC"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default="outputs/bench_digits")
    parser.add_argument("--extra", nargs="*", default=[], help="Overrides passed to every run.")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[float]] = {}
    for direction in args.directions:
        for seed in args.seeds:
            for i, method in enumerate(args.methods):
                row = run(direction, method, seed, Path(args.out), baselines=i == 0, extra=args.extra)
                with open(HERE / "results" / "digits_adaptation.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                for name, acc in row["target_acc"].items():
                    results.setdefault((direction, name), []).append(100 * acc)
    lines = [
        "# MNIST <-> USPS, LeNet from scratch (target test accuracy %, checkpoint chosen without target labels)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores. "
        f"Command: `python benchmarks/digits_adaptation.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| direction | method | hftl (mean ± std over seeds) | seeds | TLlib (LeNet) |",
        "|---|---|---|---|---|",
    ]
    for (direction, name), accs in results.items():
        ref = TLLIB[direction].get(name)
        lines.append(
            f"| {direction} | {name} | {np.mean(accs):.1f} ± {np.std(accs):.1f} | {len(accs)} | "
            f"{'-' if ref is None else f'{ref:.1f}'} |"
        )
    (HERE / "results" / "digits_adaptation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
