"""Domain-adaptation tables through `hftl run adapt`: one suite per data set, one command each.

Run (from the repo root; data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/adaptation.py --suite digits                    # MNIST <-> USPS, LeNet from scratch
    python benchmarks/adaptation.py --suite fsdd                      # FSDD leave-one-speaker-out, 6 speakers
    python benchmarks/adaptation.py --suite blitzer                   # Amazon reviews, 12 pairs, MiniLM + LoRA (GPU)
    python benchmarks/adaptation.py --suite harder_text               # Amazon -> airline/imdb/blog, 12 pairs (GPU)
    python benchmarks/adaptation.py --suite digits --pairs M-U --methods DANN --seeds 0 1 2 --extra train.epochs=1

Each row is one `hftl run adapt` command (printed, and logged next to its output dir). The first method
of a pair also trains the `source_only` and `target_oracle` baselines with the same budget. Checkpoints
are chosen without target labels (the config's `selection.criterion`); target test accuracy is read
once at the end. Writes benchmarks/results/adaptation_<suite>.md (quoted by the README) and a JSON
line per run in adaptation_<suite>.jsonl.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
DOMAINS = {"B": "books", "D": "dvd", "E": "electronics", "K": "kitchen"}
# Ryu & Lee 2020's out-of-Amazon targets: 2,000 labelled rows each in a `reviews,labels` CSV (labels 0/1)
OTHER_DOMAINS = {"airline": "airline", "imdb": "imdb", "blog": "blog"}


def _blitzer(s: str, t: str) -> list[str]:
    root = "${hftl.data_dir:amazon_mds_raw_bertaad"
    return [f"source.path={root}/{DOMAINS[s]}}}", f"target.path={root}/{DOMAINS[t]}}}"]


def _amazon_to_other(s: str, t: str) -> list[str]:
    root = "${hftl.data_dir:amazon_mds_raw_bertaad"
    return [
        f"source.path={root}/{DOMAINS[s]}}}", f"target.path={root}/{t}/{t}.csv}}",
        "target.input_column=reviews", "target.label_column=labels", "target.label_names=[negative,positive]",
    ]  # fmt: skip


def _speaker(held_out: str) -> list[str]:
    rest = ",".join(x for x in SPEAKERS if x != held_out)
    return [f"source.filters.speaker=[{rest}]", f"target.filters.speaker=[{held_out}]"]


SUITES: dict[str, dict] = {
    "digits": {
        "config": "vision/lenet_mnist_usps",
        "pairs": {
            "M-U": ["source.path=hftl:mnist", "target.path=hftl:usps"],
            "U-M": ["source.path=hftl:usps", "target.path=hftl:mnist"],
        },
        "methods": ["DANN", "CDAN", "MCC"],
        # TLlib's digits benchmark (LeNet), target accuracy %.
        "reference": {
            "M-U": {"source_only": 82.1, "dann": 91.7, "cdan": 96.0, "mcc": 95.1},
            "U-M": {"source_only": 74.6, "dann": 95.2, "cdan": 97.7, "mcc": 94.6},
        },
        "reference_name": "TLlib (LeNet)",
    },
    "fsdd": {
        "config": "audio/fsdd_speaker_shift",
        "pairs": {f"->{s}": _speaker(s) for s in SPEAKERS},
        "methods": ["DANN", "CDAN", "MCC", "CORAL"],
        "reference": {},
        "reference_name": "-",
    },
    "blitzer": {
        "config": "text/minilm_lora_dann_books_kitchen",
        "pairs": {f"{s}->{t}": _blitzer(s, t) for s in DOMAINS for t in DOMAINS if s != t},
        "methods": ["DANN", "CDAN", "MCC", "CORAL"],
        # Adversarial losses at trade-off 1.0 collapse LoRA-tuned MiniLM (lr 5e-4) to chance on some pairs
        # (measured on an H100: B->K DANN 54.6, CDAN 49.7, source val acc 50 % from step 100 on).
        "method_overrides": {"DANN": ["method.trade_off=0.1"], "CDAN": ["method.trade_off=0.1"]},
        "reference": {},
        "reference_name": "-",
    },
    # Harder shifts (Ryu & Lee 2020): product reviews -> airline reviews, movie reviews, blog sentences.
    "harder_text": {
        "config": "text/minilm_lora_dann_books_kitchen",
        "pairs": {f"{s}->{t}": _amazon_to_other(s, t) for s in DOMAINS for t in OTHER_DOMAINS},
        # the methods of benchmarks/results/adaptation_harder_text_gpu.md (DANN is not measured on these shifts)
        "methods": ["InformationMaximization", "MCC", "UDALM"],
        "reference": {},
        "reference_name": "-",
    },
}


def _machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}"


MACHINE = _machine()
RESULT_NAMES = {
    "InformationMaximization": "information_maximization",
    "ImportanceWeighting": "importance_weighting",
}


def result_name(method: str) -> str:
    """The method's key in metrics.json (``AdaptationMethod.name``)."""
    return RESULT_NAMES.get(method, method.lower())


def run_dir(out: Path, pair: str, method: str, seed: int) -> Path:
    """Where one run writes (kept after the run: benchmarks/selection.py reads its metrics.json)."""
    return out / f"{pair.replace('->', '_to_')}_{method.lower()}_s{seed}"


def dropped_arguments(config: str, method: str) -> list[str]:
    """``~method.<name>`` for each argument of the config's method node (written for DANN: ``trade_off``,
    ``hidden_features``, ``warmup``) that ``method`` does not take; the ones it takes keep the config's value.

    Example:
        >>> dropped_arguments("text/minilm_lora_dann_books_kitchen", "MCC")
        ['~method.warmup', '~method.hidden_features']
    """
    import hftl.adaptation
    from hftl.config import resolve_config_path

    node = yaml.safe_load(resolve_config_path(config).read_text())["method"]
    takes = inspect.signature(getattr(hftl.adaptation, method)).parameters
    return [f"~method.{name}" for name in node if name != "_component_" and name not in takes]


def run(suite: dict, pair: str, method: str, seed: int, out: Path, baselines: bool, extra: list[str]) -> dict:
    out = run_dir(out, pair, method, seed)
    cmd = [
        "hftl", "run", "adapt", "--config", suite["config"], f"output_dir={out}", f"seed={seed}",
        *suite["pairs"][pair], f"method._component_=hftl.adaptation.{method}", "train.resume=false",
        "report.baselines=" + ("[source_only,target_oracle]" if baselines else "[]"),
    ]  # fmt: skip
    cmd += [drop for drop in dropped_arguments(suite["config"], method) if drop not in extra]  # once
    cmd += suite.get("method_overrides", {}).get(method, []) + extra
    print("$", " ".join(cmd), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(f"{out}.log", "w") as fh:
        code = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    if code != 0:
        raise SystemExit(f"failed (exit {code}); see {out}.log")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "pair": pair, "method": result_name(method), "seed": seed, "seconds": round(time.perf_counter() - start, 1),
        "target_acc": {name: r["target_test_acc"] for name, r in metrics["results"].items()},
        "command": " ".join(cmd), "machine": MACHINE, "argv": sys.argv[1:], "output_dir": str(out),
    }  # fmt: skip


def table(
    name: str,
    suite: dict,
    results: dict[tuple[str, str], list[float]],
    commands: list[list[str]],
    machine: str,
) -> str:
    """The markdown table; ``commands``: the argv of each command that made the rows (one, or one per
    group of runs when a table joins several)."""
    methods = ["source_only", *[result_name(m) for m in suite["methods"]], "target_oracle"]
    done = {p for p, _ in results}
    pairs = [p for p in suite["pairs"] if p in done]  # suite order, whatever order runs finished in
    lines = [
        f"# Domain adaptation: {name} (`{suite['config']}`), target test accuracy %",
        "",
        f"Machine: {machine}. Command{'s' if len(commands) > 1 else ''}: "
        + "; ".join(f"`python benchmarks/adaptation.py {shlex.join(argv)}`" for argv in commands)
        + ". Mean ± std over seeds (fewer than 3 seeds: "
        f"marked in the cell); checkpoint chosen without target labels. Reference in parentheses: {suite['reference_name']}.",
        "",
        "| pair | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for pair in [*pairs, "mean"]:
        cells = []
        for m in methods:
            accs = (
                [np.mean(results[(p, m)]) for p in pairs if (p, m) in results]
                if pair == "mean"
                else results.get((pair, m), [])
            )
            ref = suite["reference"].get(pair, {}).get(m)
            if not accs:
                cell = "-"
            elif pair == "mean":  # mean over pairs of the per-pair means
                cell = f"**{np.mean(accs):.1f}**" + (
                    f" ({len(accs)}/{len(pairs)} pairs)" if len(accs) < len(pairs) else ""
                )
            else:
                cell = f"{np.mean(accs):.1f} ± {np.std(accs):.1f}" if len(accs) > 1 else f"{accs[0]:.1f}"
                cell += f" ({len(accs)} seed{'s' * (len(accs) > 1)})" if len(accs) < 3 else ""
            cells.append(cell + (f" ({ref})" if ref is not None else ""))
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    lines.append(_gap_closed(methods, pairs, results))
    return "\n".join(lines) + "\n"


def _gap_closed(methods: list[str], pairs: list[str], results: dict[tuple[str, str], list[float]]) -> str:
    """The table's last row: (method − source-only) / (oracle − source-only) of the means over pairs.

    Taken on the means, not per pair: where the oracle barely beats source-only the per-pair ratio explodes.
    Only pairs that have source-only, the oracle and the method count.
    """
    cells = []
    for m in methods:
        both = [p for p in pairs if all((p, k) in results for k in ("source_only", "target_oracle", m))]
        if not both:
            cells.append("-")
            continue
        src, oracle, acc = (
            np.mean([np.mean(results[(p, k)]) for p in both]) for k in ("source_only", "target_oracle", m)
        )
        cells.append(f"{(acc - src) / (oracle - src):.0%}" if oracle > src else "-")
    return "| gap closed | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", required=True, choices=list(SUITES))
    parser.add_argument("--pairs", nargs="+", help="Default: every pair of the suite.")
    parser.add_argument("--methods", nargs="+", help="Default: the suite's methods.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="outputs/bench_adaptation")
    parser.add_argument("--extra", nargs="*", default=[], help="Overrides passed to every run.")
    parser.add_argument(
        "--no-baselines", action="store_true", help="Skip source_only/target_oracle (already measured)."
    )
    parser.add_argument(
        "--tag", default="", help="Write adaptation_<suite>_<tag>.md/.jsonl instead of the suite's own table."
    )
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time (several fit on one GPU).")
    parser.add_argument(
        "--table-from", help="Only rebuild the table from this .jsonl (e.g. fetched from a GPU run)."
    )
    args = parser.parse_args()
    if args.table_from:
        return rebuild(args)
    suite = dict(SUITES[args.suite])
    suite["methods"] = args.methods or suite["methods"]
    # argparse reads "->nicolas" as an option: held-out speakers may be given by name (`--pairs nicolas`)
    args.pairs = [p if p in suite["pairs"] else f"->{p}" for p in args.pairs or []] or None
    jobs = [
        (pair, method, seed, i == 0 and not args.no_baselines)
        for pair in args.pairs or list(suite["pairs"])
        for seed in args.seeds
        for i, method in enumerate(suite["methods"])
    ]
    results: dict[tuple[str, str], list[float]] = {}
    stem = f"{args.suite}_{args.tag}" if args.tag else args.suite
    out = Path(args.out) / args.suite
    # --jobs > 1 runs independent runs side by side (one GPU fits several small runs; on CPU keep 1).
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run, suite, *job[:3], out, job[3], args.extra) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            with open(HERE / "results" / f"adaptation_{stem}.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            for name, acc in row["target_acc"].items():
                results.setdefault((row["pair"], name), []).append(100 * acc)
    text = table(args.suite, suite, results, [sys.argv[1:]], MACHINE)
    (HERE / "results" / f"adaptation_{stem}.md").write_text(text)
    print(text)


def _with_seeds(argv: list[str], seeds: list[str]) -> tuple[str, ...]:
    """``argv`` with the values of its ``--seeds`` option replaced by ``seeds``."""
    i = argv.index("--seeds") + 1
    j = next((k for k in range(i, len(argv)) if argv[k].startswith("--")), len(argv))
    return (*argv[:i], *seeds, *argv[j:])


def _one_command(rows: list[dict]) -> list[str] | None:
    """The one command that makes every row, when the rows' commands differ only in ``--seeds``."""
    if not rows or any("--seeds" not in r.get("argv", []) for r in rows):
        return None
    seeds = [str(s) for s in sorted({r["seed"] for r in rows})]
    commands = {_with_seeds(r["argv"], seeds) for r in rows}
    return list(commands.pop()) if len(commands) == 1 else None


def _commands(rows: list[dict]) -> list[list[str]] | None:
    """The commands that made ``rows``, one per group of rows whose commands differ only in ``--seeds``
    (in the order the groups first appear), or ``None`` when a row does not record its command."""
    if not rows or any("--seeds" not in r.get("argv", []) for r in rows):
        return None
    groups: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        groups.setdefault(_with_seeds(row["argv"], []), []).append(row)
    return [_one_command(group) for group in groups.values()]


def rebuild(args: argparse.Namespace) -> None:
    """Writes the table of the rows in ``args.table_from`` (filtered by --pairs/--methods when given)."""
    suite = dict(SUITES[args.suite])
    rows = [json.loads(line) for line in Path(args.table_from).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if not args.pairs or r["pair"] in args.pairs]
    suite["methods"] = args.methods or list(dict.fromkeys(r["method"].upper() for r in rows))
    results: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        for name, acc in row["target_acc"].items():
            results.setdefault((row["pair"], name), []).append(100 * acc)
    commands = _commands(rows) or [sys.argv[1:]]  # rows without their command: this one
    text = table(args.suite, suite, results, commands, rows[0].get("machine", MACHINE) if rows else MACHINE)
    stem = f"{args.suite}_{args.tag}" if args.tag else args.suite
    (HERE / "results" / f"adaptation_{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
