"""``hftl ls``, ``hftl validate``, ``hftl cp``: the shipped recipes and configs."""

from __future__ import annotations

import argparse
import difflib
import importlib
import shutil
from importlib import resources
from pathlib import Path

from hftl.errors import HftlError
from hftl.recipe import add_trust_flags


def recipe_names() -> list[str]:
    """The recipes shipped in ``hftl.recipes`` (``recipes/`` in the repo)."""
    root = resources.files("hftl.recipes")
    return sorted(
        p.name[:-3] for p in root.iterdir() if p.name.endswith(".py") and not p.name.startswith("_")
    )


def recipe_file(name: str) -> Path:
    """The script of recipe ``name``.

    Raises:
        HftlError: no such recipe (the message lists the recipes and close matches).
    """
    if name not in recipe_names():
        close = difflib.get_close_matches(name, recipe_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise HftlError(
            f"Unknown recipe {name!r}; available: {', '.join(recipe_names())}.{hint} (`hftl ls` lists them)"
        )
    return Path(str(resources.files("hftl.recipes") / f"{name}.py"))


def cmd_ls(args: argparse.Namespace) -> int:
    from hftl.config import list_shipped_configs

    recipe_of = {c: _config_recipe(c) for c in list_shipped_configs()}
    print(f"{'RECIPE':<16} CONFIGS")
    for name in recipe_names():
        mine = [c for c, r in recipe_of.items() if r == name]
        print(f"{name:<16} {mine[0] if mine else '-'}")
        for c in mine[1:]:
            print(f"{'':<16} {c}")
    for c in (c for c, r in recipe_of.items() if r == "assess"):
        print(f"{'(hftl assess)':<16} {c}")
    return 0


def _config_recipe(name: str) -> str:
    from hftl.config import load_config

    return str(load_config(name).get("recipe", "finetune"))


def cmd_validate(args: argparse.Namespace) -> int:
    from hftl.config import granted

    with granted(trust_remote_code=args.trust_remote_code, allow_env=args.allow_env):
        return _validate(args)


def _validate(args: argparse.Namespace) -> int:
    from hftl.config import load_config
    from hftl.recipe import load_and_validate

    recipe = args.recipe or str(load_config(args.config, args.overrides).get("recipe", "finetune"))
    if recipe == "assess":  # not a training recipe: the `hftl assess` command's config
        from hftl.assess import check_config

        check_config(args.config, args.overrides, allow_any=args.allow_any_component)
        print(f"{args.config}: OK for `hftl assess` (no problems found)")
        return 0
    recipe_file(recipe)
    module = importlib.import_module(f"hftl.recipes.{recipe}")
    load_and_validate(module.RECIPE, args.config, args.overrides, allow_any=args.allow_any_component)
    print(f"{args.config}: OK for recipe {recipe!r} (no problems found)")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from hftl.config import resolve_config_path

    source = recipe_file(args.name) if args.name in recipe_names() else resolve_config_path(args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not args.force:
        raise HftlError(f"{dest} already exists; pass --force to overwrite it")
    shutil.copyfile(source, dest)
    print(f"Copied {source} to {dest}")
    return 0


def add_parsers(sub) -> None:
    """``ls``, ``validate`` and ``cp``."""
    sub.add_parser("ls", help="List recipes and their shipped configs.").set_defaults(handler=cmd_ls)
    val = sub.add_parser("validate", help="Check a config against a recipe; reports every problem at once.")
    val.add_argument("--config", required=True)
    val.add_argument(
        "--recipe", help="Recipe to check against (default: the config's `recipe:` key, else finetune)."
    )
    val.add_argument("--allow-any-component", action="store_true")
    add_trust_flags(val)
    val.add_argument("overrides", nargs="*")
    val.set_defaults(handler=cmd_validate)
    cp = sub.add_parser(
        "cp", help="Copy a recipe or shipped config to edit it: hftl cp finetune ./my_recipe.py"
    )
    cp.add_argument("name")
    cp.add_argument("dest")
    cp.add_argument("--force", action="store_true", help="Overwrite an existing file.")
    cp.set_defaults(handler=cmd_cp)
