"""Where `hftl run adapt` spends its wall time: training, periodic evaluation, selection, checkpoints.

Run:
    python benchmarks/adapt_walltime.py --config text/minilm_lora_dann_books_kitchen --out DIR [key=value ...]
    PYTHONPATH=/path/to/older/checkout python benchmarks/adapt_walltime.py ...   # the same on other code

Runs the recipe in this process with timers wrapped around the Engine's periodic validation
(`Engine._validate`), the recipe's final scoring of the selected checkpoint (`AdaptRecipe.evaluate`) and
checkpoint saves (`Engine.save`), so code without hftl's own wall-time split (older checkouts) is measured
the same way. Prints one JSON line per method: wall seconds of the run, of evaluation, selection,
checkpoints, and the selected step, target test accuracy and every criterion of the history, to compare
two checkouts' numbers. Results go to the table in benchmarks/results/adapt_walltime.md (written by hand
from these lines: the two checkouts run one after the other).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(cls: type, attr: str, bucket: str, totals: dict[str, float]) -> None:
    inner = getattr(cls, attr)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[bucket] += time.perf_counter() - start

    setattr(cls, attr, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recipes/ and hftl/
    import recipes.adapt as adapt
    from hftl.training.engine import Engine

    totals: dict[str, float] = defaultdict(float)
    _timed(Engine, "_validate", "evaluation", totals)
    _timed(Engine, "save", "checkpoints", totals)
    _timed(adapt.AdaptRecipe, "evaluate", "selection", totals)
    run_method = adapt.AdaptRecipe.run_method

    def timed_run(self, name, node, **kwargs):
        totals.clear()
        start = time.perf_counter()
        result, model = run_method(self, name, node, **kwargs)
        wall = time.perf_counter() - start
        criteria = {k: v for k, v in result["history"][-1].items() if k.startswith("eval_")}
        line = {
            "method": name, "wall_s": round(wall, 1), **{f"{k}_s": round(v, 1) for k, v in totals.items()},
            "eval_share": round((totals["evaluation"] + totals["selection"]) / wall, 3),
            "selected_step": result["selected_step"], "target_test_acc": result["target_test_acc"],
            "history_steps": [h["step"] for h in result["history"]], "last_eval": criteria,
        }  # fmt: skip
        print("WALLTIME " + json.dumps(line), flush=True)
        return result, model

    adapt.AdaptRecipe.run_method = timed_run
    argv = ["--config", args.config, f"output_dir={args.out}", *args.overrides]
    sys.exit(adapt.main(argv))


if __name__ == "__main__":
    main()
