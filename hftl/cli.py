"""The ``hftl`` command: ls, run, validate, cp, eval, predict, assess, data, card, push, export.

``hftl run RECIPE --config NAME key=value ...`` runs ``recipes/RECIPE.py`` (shipped inside the package
as ``hftl.recipes``) exactly as ``python recipes/RECIPE.py --config ...`` would. The other sub-commands
live in :mod:`hftl.commands`, one module per family.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

from hftl.commands import hub, models, recipes, tools
from hftl.commands.recipes import recipe_file, recipe_names
from hftl.errors import HftlError

__all__ = ["build_parser", "main", "recipe_file", "recipe_names"]


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    path = recipe_file(args.recipe)
    if args.num_processes > 1:
        return _launch(path, args.num_processes, extra)
    module = importlib.import_module(f"hftl.recipes.{args.recipe}")
    return module.main(extra)


def _launch(path: Path, num_processes: int, extra: list[str]) -> int:
    """Multi-process data parallel through ``accelerate launch`` (gloo on CPU, NCCL on GPUs)."""
    import torch

    env = dict(os.environ)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        "--multi_gpu",
    ]
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"  # `--cpu --num_processes N` would silently run one process
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(path)]
    return subprocess.call(launch + extra, env=env)


def _pop_num_processes(argv: list[str]) -> tuple[int, list[str]]:
    """Takes ``--num-processes N`` (or ``=N``) out of a recipe's arguments."""
    rest, processes, i = [], 1, 0
    while i < len(argv):
        if argv[i].startswith("--num-processes="):
            processes = argv[i].split("=", 1)[1]
        elif argv[i] == "--num-processes" and i + 1 < len(argv):
            processes, i = argv[i + 1], i + 1
        else:
            rest.append(argv[i])
        i += 1
    if not str(processes).isdigit() or int(processes) < 1:
        raise HftlError(f"--num-processes must be a positive integer; got {processes!r}")
    return int(processes), rest


def build_parser() -> argparse.ArgumentParser:
    """The ``hftl`` parser; each sub-command's handler is its ``handler`` default."""
    parser = argparse.ArgumentParser(prog="hftl", description="Transfer pretrained encoders to new domains.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="Run a recipe: hftl run finetune --config text/minilm_lora_sst2 key=value ..."
    )
    run.add_argument("recipe")
    run.add_argument(
        "--num-processes", type=int, default=1, help="Data-parallel processes (accelerate launch)."
    )
    run.set_defaults(handler=lambda args: cmd_run(args, []))
    for family in (recipes, models, tools, hub):
        family.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["run"] and len(argv) > 1 and not argv[1].startswith("-"):
            # Everything after the recipe name goes to the recipe's own parser.
            recipe, rest = argv[1], argv[2:]
            processes, rest = _pop_num_processes(rest)
            return cmd_run(argparse.Namespace(recipe=recipe, num_processes=processes), rest)
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except HftlError as err:
        from hftl.config import redact  # values the user let a config read from the environment

        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
