"""Selection quality: how well each label-free validator picks the checkpoint to keep, per task family.

Run (from the repo root; data in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/selection.py --quick          # CPU: digits (LeNet, M->U and U->M, DANN/MCC/source-only,
                                                    #   200 steps) and FSDD (held-out nicolas, MCC/source-only,
                                                    #   150 steps); 3 seeds like every plan
    python benchmarks/selection.py                  # every digits/FSDD/Blitzer pair, 3 seeds (Blitzer wants a GPU)
    python benchmarks/selection.py --suites blitzer --jobs 6 --extra encoder.model=/tmp/minilm train.mixed_precision=bf16
    python benchmarks/selection.py --runs outputs/bench_adaptation   # only score finished run directories
    python benchmarks/selection.py --table-from benchmarks/results/selection.jsonl   # only rebuild the table
    python benchmarks/selection.py --table-from A.jsonl B.jsonl   # one table of several commands' records

Runs are launched through benchmarks/adaptation.py (`hftl run adapt`, one command per pair/method/seed;
the first method of a pair also trains `source_only`), into `<out>/<suite>/<pair>_<method>_s<seed>/`;
finished ones are reused, so an interrupted benchmark resumes. The adapt recipe scores every validator
of `hftl.adaptation.selection.CRITERIA` at every evaluation and keeps them, with the target test
accuracy, in `metrics.json` (`results.<method>.history`); `--runs` reads any directory laid out that
way (e.g. `benchmarks/adaptation.py --out DIR`). The target oracle is not a candidate (it trains on
target labels).

For each validator and task family it reports
* the weighted Spearman correlation between scores and target accuracy over every checkpoint of a
  pair (all methods, seeds and evaluation steps), averaged over pairs: Musgrave, Belongie & Lim 2022's
  measure (powerful-benchmarker: each checkpoint weighted by max(normalised score rank, normalised
  accuracy rank)^2, so the checkpoints a validator would pick and the truly best ones count most);
* the regret per run: best target accuracy among a run's checkpoints minus the accuracy of the one the
  validator picks (which step to keep), mean over runs, beside keeping the last checkpoint;
* the regret per pair and seed across methods (which method and step to keep, source-only included);
* the **fallback** (`selection.fallback: source_only`, hftl.adaptation.fallback): for every adapted run
  beside a source-only run of the same pair and seed, the call the recipe makes from the two kept
  checkpoints (the criterion's, and the collapse guard's signals where the records have them): how often
  it keeps the more accurate model, and how many points its wrong calls cost.
Each family's seed count is in its column header; a family measured on one seed is marked "single seed".
Writes benchmarks/results/selection.md and one JSON line per checkpoint in selection.jsonl.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import adaptation as bench  # noqa: E402  (benchmarks/adaptation.py: suites and the run launcher)

from hftl.adaptation.collapse import SIGNALS, CollapseGuard  # noqa: E402
from hftl.adaptation.config import SelectionConfig  # noqa: E402
from hftl.adaptation.selection import CRITERIA, regret, weighted_spearman  # noqa: E402

FAMILIES = {
    "digits": "digits (MNIST↔USPS, LeNet)",
    "fsdd": "speech (FSDD, leave one speaker out)",
    "blitzer": "text (Blitzer reviews, MiniLM + LoRA)",
    "harder_text": "text, harder shifts (Amazon → airline/imdb/blog, MiniLM + LoRA)",
}
# no PAD / feature plots: only the per-evaluation scores are read, the target test accuracy among them
COMMON = ["report.diagnostics=false", "report.target_curve=true", "selection.score_all=true"]
QUICK = {  # 15 trainings: ~45 CPU-minutes, ~3 h wall on the loaded 2-core machine (FSDD trainings are the slow ones)
    "digits": {
        "pairs": ["M-U", "U-M"], "methods": ["DANN", "MCC"], "seeds": [0, 1, 2],
        "extra": [
            "train.max_steps=200", "train.eval_every_steps=40", "source.validation_size=500",
            "target.max_samples={test: 1000}", "selection.max_source_samples=300",
            "selection.max_target_samples=500",
        ],
    },
    "fsdd": {
        "pairs": ["->nicolas"], "methods": ["MCC"], "seeds": [0, 1, 2],
        "extra": [
            "train.max_steps=150", "train.eval_every_steps=30", "selection.max_source_samples=200",
            "selection.max_target_samples=200",
        ],
    },
}  # fmt: skip
FULL = {
    "digits": {"seeds": [0, 1, 2], "extra": ["train.max_steps=1500", "train.eval_every_steps=150"]},
    "fsdd": {"seeds": [0, 1, 2], "extra": ["train.eval_every_steps=50"]},
    "blitzer": {"seeds": [0, 1, 2], "extra": []},  # the config evaluates every 50 steps
    "harder_text": {"seeds": [0, 1, 2], "extra": []},
}
RUN_DIR = re.compile(r"^(?P<pair>.+)_(?P<method>[a-z0-9]+)_s(?P<seed>\d+)$")


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, int, bool, list[str]]]:
    """(suite, pair, method, seed, with source-only, overrides) of every run to launch."""
    jobs = []
    for suite in args.suites:
        spec = {**bench.SUITES[suite], **(QUICK if args.quick else FULL).get(suite, {})}
        pairs = spec.get("pairs") or list(bench.SUITES[suite]["pairs"])
        methods = spec.get("methods") or bench.SUITES[suite]["methods"]
        extra = [*COMMON, *spec.get("extra", []), *args.extra]
        for seed in args.seeds or spec["seeds"]:
            for pair in pairs:
                for i, method in enumerate(methods):
                    baseline = ["report.baselines=[source_only]"] if i == 0 else []
                    jobs.append((suite, pair, method, seed, i == 0, extra + baseline))
    return sorted(jobs, key=lambda job: job[3])  # seed by seed: a stopped benchmark still covers every suite


def launch(args: argparse.Namespace) -> list[str]:
    """Runs every planned job not finished yet; returns the failures (one line each)."""
    out, failures = Path(args.out), []
    todo = []
    for suite, pair, method, seed, _, extra in plan(args):
        if (bench.run_dir(out / suite, pair, method, seed) / "metrics.json").exists():
            print(f"reusing {bench.run_dir(out / suite, pair, method, seed)}", flush=True)
            continue
        # baselines=False: report.baselines=[] first, then `extra` adds source_only to the first method only
        todo.append((bench.SUITES[suite], pair, method, seed, out / suite, False, extra))
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(bench.run, *job): job for job in todo}
        for future in as_completed(futures):
            _, pair, method, seed, *_ = futures[future]
            try:
                row = future.result()
                print(f"done {pair} {method} s{seed} in {row['seconds']} s", flush=True)
            except SystemExit as e:  # bench.run exits with the log's path on a failed run
                failures.append(f"{pair} {method} s{seed}: {e}")
                print(f"FAILED {failures[-1]}", flush=True)
    print(f"{len(todo)} runs in {time.perf_counter() - start:.0f} s wall", flush=True)
    return failures


def collect(roots: list[Path]) -> list[dict]:
    """One row per evaluated checkpoint of every adapt run under ``roots``.

    A run recorded without the target curve (``report.target_curve: false``) has the target accuracy of
    its kept checkpoint only: it contributes that one checkpoint (enough for the fallback's call, no choice
    of step to measure). ``root`` keeps runs of different roots (budgets) out of each other's pools.
    """
    rows = []
    for root in roots:
        for path in sorted(root.rglob("metrics.json")):
            run = path.parent
            family = next((p.name for p in run.parents if p.name in FAMILIES), None)
            match = RUN_DIR.match(run.name)
            if family is None or match is None:
                if not any(RUN_DIR.match(p.name) for p in run.parents):  # not a run's saved model/ either
                    print(
                        f"skipping {run}: not laid out as <suite>/<pair>_<method>_s<seed>/", file=sys.stderr
                    )
                continue
            base = {"family": family, "pair": match["pair"].replace("_to_", "->"), "seed": int(match["seed"]),
                    "run": str(run), "root": str(root)}  # fmt: skip
            for method, result in json.loads(path.read_text()).get("results", {}).items():
                if method != "target_oracle" and not method.endswith("_stage1"):
                    rows += [{**base, "method": method, **row} for row in _checkpoints(result)]
    return rows


def _checkpoints(result: dict) -> list[dict]:
    """Step, target accuracy, validator scores and collapse signals of each scored checkpoint of a run."""
    history = result.get("history", [])
    if not any("eval_target_test_acc" in h for h in history):  # no target curve: the kept checkpoint only
        history = [
            {**h, "eval_target_test_acc": result["target_test_acc"]}
            for h in history
            if h["step"] == result.get("selected_step")
        ][:1]
    return [
        {
            "step": h["step"], "target_acc": h["eval_target_test_acc"],
            "scores": {v: h[f"eval_{v}"] for v in CRITERIA if f"eval_{v}" in h},
            # the collapse guard's signals and verdict (runs from before the guard have none)
            "signals": {k: h[f"eval_{k}"] for k in (*SIGNALS, "collapse") if f"eval_{k}" in h},
        }
        for h in history
        if "eval_target_test_acc" in h
    ]  # fmt: skip


def oriented(rows: list[dict], validator: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores made higher-is-better (DEV negated; missing -> NaN) and target accuracies, in %."""
    sign = 1.0 if CRITERIA[validator].higher_is_better else -1.0
    scores = np.array([sign * r["scores"].get(validator, np.nan) for r in rows], dtype=float)
    return scores, 100 * np.array([r["target_acc"] for r in rows])


def group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r)  # records from before "root": None
    return {k: sorted(v, key=lambda r: (r["method"], r["step"])) for k, v in groups.items()}


def analyse(rows: list[dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """family -> validator -> {"spearman": per pair, "run": per-run regrets, "pool": per pair/seed regrets}."""
    out: dict = {}
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        if not mine:
            continue
        # a run with one checkpoint (recorded without the target curve) has no step to choose
        runs = {k: v for k, v in group(mine, "run", "method").items() if len(v) > 1}
        tasks, pools = group(mine, "pair"), group(mine, "root", "pair", "seed")
        stats = {}
        for v in CRITERIA:
            stats[v] = {
                "spearman": [weighted_spearman(*oriented(t, v)) for t in tasks.values()],
                "run": [regret(*oriented(r, v)) for r in runs.values()],
                "pool": [regret(*oriented(p, v)) for p in pools.values()],
            }
        last = [100 * (max(r["target_acc"] for r in rs) - rs[-1]["target_acc"]) for rs in runs.values()]
        stats["last checkpoint"] = {"spearman": [], "run": last, "pool": []}
        out[family] = stats
    return out


def kept_checkpoint(run: list[dict], criterion: str) -> dict:
    """The checkpoint the recipe keeps: the criterion's best (the first on ties), never a collapsed one."""
    selectable = [r for r in run if not r.get("signals", {}).get("collapse")] or run
    scores, _ = oriented(selectable, criterion)
    return selectable[int(np.nanargmax(scores))] if np.isfinite(scores).any() else selectable[-1]


def fallback_calls(
    rows: list[dict],
    criterion: str = SelectionConfig.criterion,
    judge: str | None = None,
    agree: str | None = SelectionConfig.fallback_confirm,
) -> list[dict]:
    """The fallback's call for every adapted run with a source-only run of the same pair and seed (and root).

    Each run keeps its checkpoint by ``criterion`` (the recipe's ``selection.criterion``); the two kept
    models are compared by ``judge`` (default: the criterion, as the recipe does). With ``agree`` (a
    higher-is-better validator; default: the recipe's ``selection.fallback_confirm``) the judge's call falls
    back only when that validator also scores source-only better; ``agree=None``: the judge alone.
    """
    judge = judge or criterion
    sel = SelectionConfig()
    guard = CollapseGuard(
        share=sel.collapse_share, entropy=sel.collapse_entropy, source_drop=sel.collapse_source_drop, stop_after=0
    )  # fmt: skip
    sign = 1.0 if CRITERIA[judge].higher_is_better else -1.0
    calls = []
    for (_, family, pair, seed), pool in group(rows, "root", "family", "pair", "seed").items():
        runs = {m: [r for r in pool if r["method"] == m] for m in dict.fromkeys(r["method"] for r in pool)}
        if "source_only" not in runs:
            continue
        so = kept_checkpoint(runs.pop("source_only"), criterion)
        for method, run in runs.items():
            ad = kept_checkpoint(run, criterion)
            collapsed = (
                set(SIGNALS) <= set(ad.get("signals", {}))
                and guard.prediction_collapse({**ad["scores"], **ad["signals"]}) is not None
            )
            keep_so = collapsed or (
                sign * so["scores"][judge] > sign * ad["scores"][judge]
                and (not agree or so["scores"][agree] > ad["scores"][agree])
            )
            kept, other = (so, ad) if keep_so else (ad, so)
            calls.append({
                "family": family, "pair": pair, "seed": seed, "method": method, "fallback": keep_so,
                "collapsed": collapsed, "kept_acc": 100 * kept["target_acc"], "other_acc": 100 * other["target_acc"],
                "adapted_acc": 100 * ad["target_acc"], "source_only_acc": 100 * so["target_acc"],
            })  # fmt: skip
    return calls


def fallback_section(rows: list[dict], families: list[str]) -> list[str]:
    """The fallback table: right calls, wrong calls and their cost, per family, and every call."""
    calls = fallback_calls(rows)
    criterion, confirm = SelectionConfig.criterion, SelectionConfig.fallback_confirm
    lines = [
        "",
        "## Fallback: keep source-only when adaptation is predicted to hurt",
        "",
        f"`selection.fallback: source_only` (the default when source_only is trained) compares the adapted and the "
        f"source-only model by `{criterion}` (the default criterion) on the same rows, each at the checkpoint the "
        "recipe keeps, and by the collapse guard's signals (where the records have them), and keeps source-only "
        f"when adaptation is predicted to hurt: a collapse, or a worse `{criterion}` confirmed by a worse "
        f"`{confirm}` (`selection.fallback_confirm`). A call is right when it keeps the model that is more accurate "
        "on the target test split (a tie counts as right); the cost of a wrong call is the accuracy it gives up.",
        "",
        "| family | calls | fallbacks | right | wrong | cost of wrong calls, pts (mean / max) | kept vs always-adapted, pts |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in families:
        mine = [c for c in calls if c["family"] == f]
        if not mine:
            continue
        wrong = [c["other_acc"] - c["kept_acc"] for c in mine if c["other_acc"] > c["kept_acc"]]
        right = len(mine) - len(wrong)
        cost = f"{np.mean(wrong):.2f} / {max(wrong):.2f}" if wrong else "-"
        gain = np.mean([c["kept_acc"] - c["adapted_acc"] for c in mine])
        lines.append(
            f"| {FAMILIES[f]}{_seed_mark(len({c['seed'] for c in mine}))} | {len(mine)} | {sum(c['fallback'] for c in mine)} | {right} ({100 * right / len(mine):.0f}%) | "
            f"{len(wrong)} | {cost} | {gain:+.2f} |"
        )
    lines += judges_section(rows)
    lines += [
        "",
        "| family | pair | seed | method | adapted acc | source-only acc | call | right |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in calls:
        call = (
            "keep source_only" + (" (collapsed)" if c["collapsed"] else "")
            if c["fallback"]
            else "keep adapted"
        )
        right = "yes" if c["kept_acc"] >= c["other_acc"] else f"no (−{c['other_acc'] - c['kept_acc']:.1f})"
        lines.append(
            f"| {c['family']} | {c['pair']} | {c['seed']} | {c['method']} | {c['adapted_acc']:.1f} | "
            f"{c['source_only_acc']:.1f} | {call} | {right} |"
        )
    return lines


# Methods whose own loss rewards confident target predictions spread over the classes, what `im` (and
# `bnm`) score: information maximization optimises IM itself; MCC's class-confusion loss has the same optimum.
OPTIMISES_IM = {"information_maximization", "mcc"}


def judges_section(rows: list[dict]) -> list[str]:
    """The fallback judged by each validator (checkpoints still kept by the default criterion), split into
    methods that optimise what `im` scores and the others: does `im` favour the former (the known bias)?"""
    lines = [
        "",
        f"**Which validator should judge the fallback?** Each run keeps its checkpoint by `{SelectionConfig.criterion}` "
        "(the default criterion); the two kept models are then compared by the validator of the row. Cells: "
        "calls, fallbacks taken, right calls, and the mean accuracy gained by keeping what the call keeps instead "
        "of always keeping the adapted model (pts). Columns: methods whose loss optimises what `im` scores "
        f"({', '.join(sorted(OPTIMISES_IM))}) and the others.",
        "",
        "| judge | IM/MCC: calls | fallbacks | right | vs always-adapted | others: calls | fallbacks | right | vs always-adapted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    recorded = [v for v in CRITERIA if all(v in r["scores"] for r in rows)]  # older records lack some
    for judge, agree in [*((v, None) for v in recorded), ("im", "source_val_acc")]:
        calls = fallback_calls(rows, judge=judge, agree=agree)
        cells = []
        for mine in (
            [c for c in calls if c["method"] in OPTIMISES_IM],
            [c for c in calls if c["method"] not in OPTIMISES_IM],
        ):
            if not mine:
                cells += ["0", "-", "-", "-"]
                continue
            right = sum(c["kept_acc"] >= c["other_acc"] for c in mine)
            gain = np.mean([c["kept_acc"] - c["adapted_acc"] for c in mine])
            cells += [
                str(len(mine)),
                str(sum(c["fallback"] for c in mine)),
                f"{right} ({100 * right / len(mine):.0f}%)",
                f"{gain:+.2f}",
            ]
        name = f"`{judge}` and `{agree}` agree" if agree else f"`{judge}`"
        if (judge, agree) == (SelectionConfig.criterion, SelectionConfig.fallback_confirm):
            name += " (the recipe's default)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plan_note(argv: list[str], seeds: dict[str, list[int]]) -> list[str]:
    """The launch plan of the families in ``seeds`` recorded by the command ``argv`` (none for `--runs`:
    those runs have their own commands), with the seeds actually found in the records (a table rebuilt from
    older records may have fewer)."""
    if "--runs" in argv:
        return []
    plans = QUICK if "--quick" in argv else FULL
    notes = [
        f"{suite}: {', '.join(p.get('pairs', ['every pair']))} × {', '.join(p.get('methods', ['the suite methods']))} "
        f"(+ source_only) × seeds {' '.join(map(str, seeds[suite]))}; {' '.join(p['extra']) or 'shipped schedule'}"
        for suite, p in plans.items()
        if seeds.get(suite)
    ]
    return ["", "Plan (every run also gets `" + " ".join(COMMON) + "`):", "", *[f"* {n}" for n in notes]]


def _commands(rows: list[dict], seeds: dict[str, list[int]]) -> list[str]:
    """Where the records came from: each command (with its machine) that recorded some, and its plan."""
    sources: dict[tuple, list[str]] = {}
    for r in rows:
        families = sources.setdefault((tuple(r["argv"]), r["machine"]), [])
        if r["family"] not in families:
            families.append(r["family"])
    lines = []
    for (argv, machine), families in sources.items():
        mine = {f: seeds[f] for f in families}
        lines += [
            "", f"{', '.join(families)}: `python benchmarks/selection.py {shlex.join(argv)}` ({machine}).",
            *_plan_note(list(argv), mine),
        ]  # fmt: skip
    return lines


def _seed_mark(n: int) -> str:
    """A family's seed count for its column header; fewer than 3 (the plans' default) is marked."""
    if n == 0:
        return ""
    if n == 1:
        return ", **single seed**"
    return f", {n} seeds" + ("" if n >= 3 else " (**fewer than 3**)")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _mean(values: list[float]) -> float:
    finite = [x for x in values if np.isfinite(x)]
    return float(np.mean(finite)) if finite else float("inf")


def _cell(values: list[float], kind: str) -> str:
    finite = [x for x in values if np.isfinite(x)]
    if not finite:
        return "-"
    if kind == "spearman":
        return f"{np.mean(finite):+.2f}" + (
            f" ({min(finite):+.2f}..{max(finite):+.2f})" if len(finite) > 1 else ""
        )
    return f"{np.mean(finite):.2f} (max {max(finite):.1f})"


def table(rows: list[dict], failures: list[str]) -> str:
    """The tables of ``rows`` (checkpoint records, each with the ``argv`` and ``machine`` that recorded it)."""
    stats = analyse(rows)
    families = list(FAMILIES)
    counts = {
        f: (len({r["pair"] for r in rows if r["family"] == f}), len(group([r for r in rows if r["family"] == f], "run", "method")),
            sum(r["family"] == f for r in rows))
        for f in families
    }  # fmt: skip
    seeds = {f: sorted({r["seed"] for r in rows if r["family"] == f}) for f in families}
    label = {f: FAMILIES[f] + _seed_mark(len(seeds[f])) for f in families}
    head = "| validator | " + " | ".join(label[f] for f in families) + " |"
    rule = "|---|" + "---|" * len(families)
    lines = [
        "# Label-free checkpoint selection: how well each validator picks",
        "",
        "Target accuracy is measured on each pair's labelled target *test* split; validators read only source data and unlabelled",
        "target *train* rows. Checkpoints: "
        + "; ".join(
            f"{f} {counts[f][2]} from {_n(counts[f][1], 'run')} over {_n(counts[f][0], 'pair')}"
            for f in families
            if counts[f][2]
        )
        + ". A family without runs needs a GPU (or the runs: `--runs DIR`).",
        *_commands(rows, seeds),
        "",
        "**Weighted Spearman** (Musgrave et al. 2022) between validator score and target accuracy over every",
        "checkpoint of a pair (all methods, seeds, steps); mean over pairs (range). Higher is better; 1 = same order.",
        "",
        head,
        rule,
    ]
    needs = {f: "needs GPU" for f in families if not counts[f][2]}
    for v in CRITERIA:
        cells = [needs.get(f) or _cell(stats[f][v]["spearman"], "spearman") for f in families]
        lines.append(f"| `{v}` | " + " | ".join(cells) + " |")
    for kind, title in (
        ("run", "**Regret per run**, points of target accuracy: best checkpoint of the run minus the one the validator "
         "keeps (which step); mean over runs (worst run)."),
        ("pool", "**Regret per pair and seed across methods** (source-only included), points: which method and step "
         "to keep; mean over pair/seed pools (worst pool)."),
    ):  # fmt: skip
        lines += ["", title, "", head, rule]
        names = [*CRITERIA, "last checkpoint"] if kind == "run" else list(CRITERIA)
        for v in names:
            cells = [needs.get(f) or _cell(stats[f][v][kind], kind) for f in families]
            lines.append(f"| {'`' + v + '`' if v in CRITERIA else v} | " + " | ".join(cells) + " |")
    lines += ["", "Lowest mean regret per family (per run / across methods):", ""]
    for f in families:
        if f in stats:
            best = {k: min(CRITERIA, key=lambda v: _mean(stats[f][v][k])) for k in ("run", "pool")}
            lines.append(f"* {FAMILIES[f]}: `{best['run']}` / `{best['pool']}`")
    lines += fallback_section(rows, families)
    if failures:
        lines += ["", "Failed runs (not in the table):", "", *[f"* {x}" for x in failures]]
    lines += [
        "",
        "## Runs",
        "",
        "Target accuracy % of the best checkpoint, the last one and the one each validator keeps.",
        "",
    ]
    lines += [
        "| family | pair | seed | method | checkpoints | best | last | "
        + " | ".join(f"`{v}`" for v in CRITERIA)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(CRITERIA),
    ]
    for (_, method), rs in sorted(
        group(rows, "run", "method").items(),
        key=lambda kv: (kv[1][0]["family"], kv[1][0]["pair"], kv[1][0]["seed"], kv[0][1]),
    ):
        acc = [100 * r["target_acc"] for r in rs]
        picks = []
        for v in CRITERIA:
            scores, _ = oriented(rs, v)
            picks.append(f"{acc[int(np.nanargmax(scores))]:.1f}" if np.isfinite(scores).any() else "-")
        lines.append(
            f"| {rs[0]['family']} | {rs[0]['pair']} | {rs[0]['seed']} | {method} | {len(rs)} | {max(acc):.1f} | "
            f"{acc[-1]:.1f} | " + " | ".join(picks) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="CPU budget: 2 digits + 2 FSDD pairs, short runs."
    )
    parser.add_argument(
        "--suites", nargs="+", choices=list(FAMILIES), help="Default: digits and fsdd with --quick, else all."
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="Default: the plan's seeds (0 1 2).")
    parser.add_argument(
        "--out", default="outputs/bench_selection", help="Where runs are written (and reused)."
    )
    parser.add_argument("--extra", nargs="*", default=[], help="Overrides passed to every run.")
    parser.add_argument(
        "--jobs", type=int, default=1, help="Runs at a time (several fit on one GPU; on CPU keep 1)."
    )
    parser.add_argument("--runs", nargs="+", help="Only score the finished runs under these directories.")
    parser.add_argument(
        "--machine",
        default=bench.MACHINE,
        help="With --runs: the machine the runs were made on (default: this one).",
    )
    parser.add_argument(
        "--table-from", nargs="+", help="Only rebuild the table from these .jsonl files of checkpoints."
    )
    parser.add_argument(
        "--name", default="selection", help="Result files: benchmarks/results/<name>.md/.jsonl."
    )
    args = parser.parse_args()
    args.suites = args.suites or (["digits", "fsdd"] if args.quick else list(FAMILIES))
    failures: list[str] = []
    if args.table_from:  # records of several commands (e.g. CPU families and a GPU one) make one table
        lines = [line for path in args.table_from for line in Path(path).read_text().splitlines()]
        rows = [json.loads(line) for line in lines if line.strip()]
    else:
        if not args.runs:
            failures = launch(args)
        rows = [
            {**row, "argv": sys.argv[1:], "machine": args.machine}
            for row in collect([Path(d) for d in args.runs or [args.out]])
        ]
        with open(HERE / "results" / f"{args.name}.jsonl", "w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
    text = table(rows, failures)
    (HERE / "results" / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
