"""What every recipe script shares: argument parsing, config loading/validation, error reporting.

A recipe module defines a class with ``RUNTIME_ARGS``, ``SECTIONS``, ``REQUIRED`` and, when it
reads other top-level keys only if present, ``OPTIONAL`` (all used to validate configs before any
weights load), ``STREAMING = True`` if it accepts streamed data (``data.streaming``), and a ``run()``
method, and ends with::

    def main(argv=None):
        return recipe_main(MyRecipe, argv)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from omegaconf import DictConfig

from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.training.run_dir import RunClaim


class RecipeClass(Protocol):
    RUNTIME_ARGS: Mapping[str, Collection[str]]
    SECTIONS: Mapping[str, type]
    REQUIRED: Collection[str]

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False) -> None: ...
    def run(self) -> dict[str, Any]: ...


def recipe_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run an hftl recipe. Overrides: key.sub=value, ~key to delete."
    )
    parser.add_argument("--config", required=True, help="Shipped config name (see `hftl ls`) or a YAML file.")
    parser.add_argument(
        "--allow-any-component",
        action="store_true",
        help="Let `_component_` import any callable from any module (default: only the registered "
        "components of hftl.config.registry: hftl classes, torch optimizers/schedulers/nn modules, "
        "transformers configs and feature extractors).",
    )
    add_trust_flags(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Delete the files an earlier hftl run wrote in `output_dir` (listed in its .hftl_run.json) and "
        "start over; files hftl did not write are kept.",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Dotted overrides such as optimizer.lr=3e-4 train.epochs=1."
    )
    return parser


def add_trust_flags(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code`` and ``--allow-env``: what only the user's command line can grant a config."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Let the config set `trust_remote_code: true` (transformers/datasets then run Python files "
        "from that repo). Off: a config that sets it is refused.",
    )
    parser.add_argument(
        "--allow-env",
        action="append",
        default=[],
        metavar="NAME",
        help="Let the config read environment variable NAME with ${oc.env:NAME} (repeatable). Without it "
        "a config reads only hftl.config.SAFE_ENV_VARS (HFTL_DATA_DIR, HOME, ...), never a token.",
    )


def load_and_validate(
    recipe: type[RecipeClass], name_or_path: str, overrides: Sequence[str], *, allow_any: bool
) -> DictConfig:
    """Loads a config, applies overrides and reports every problem at once, before any weights load."""
    from hftl.config import load_config, resolve_config_path, validate_config

    cfg = load_config(name_or_path, overrides)
    validate_config(
        cfg,
        runtime_args=recipe.RUNTIME_ARGS,
        sections=recipe.SECTIONS,
        required=recipe.REQUIRED,
        top_level=top_level_keys(recipe),
        allow_any=allow_any,
        source=str(resolve_config_path(name_or_path)),
    )
    check_streaming(recipe, cfg)
    check_schedule(cfg)
    return cfg


def check_schedule(cfg: DictConfig) -> None:
    """Refuses an ``lr_scheduler:`` component together with ``train.lr_scheduler``: both choose the schedule."""
    from omegaconf import OmegaConf

    from hftl.errors import ConfigError

    if (
        cfg.get("lr_scheduler") is not None
        and OmegaConf.select(cfg, "train.lr_scheduler", default=None) is not None
    ):
        raise ConfigError(
            "`lr_scheduler` (a component) and `train.lr_scheduler` (a name) both choose the learning-rate "
            "schedule. Fix: keep one, e.g. delete `train.lr_scheduler` (override `~train.lr_scheduler`)."
        )


def check_streaming(recipe: type[RecipeClass], cfg: DictConfig) -> None:
    """Refuses ``streaming: true`` in any data node of a recipe without ``STREAMING = True`` (one that
    needs whole splits: caches, episodes, pairs), naming the node, before anything loads."""
    from omegaconf import OmegaConf

    from hftl.errors import ConfigError

    if getattr(recipe, "STREAMING", False):
        return

    def streamed(node: object, path: str) -> list[str]:
        if isinstance(node, dict):
            found = [path] if node.get("streaming") is True else []
            return found + [
                p for k, v in node.items() for p in streamed(v, f"{path}.{k}" if path else str(k))
            ]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in streamed(v, f"{path}[{i}]")]
        return []

    nodes = streamed(OmegaConf.to_container(cfg, resolve=False), "")
    if nodes:
        name = recipe.__module__.rsplit(".", 1)[-1]
        raise ConfigError(
            f"`{nodes[0]}.streaming` is true, but the {name} recipe needs its whole splits (it does not stream); "
            "streamed data works in the finetune and adapt recipes. Fix: set "
            f"`{nodes[0]}.streaming=false`."
        )


def top_level_keys(recipe: type[RecipeClass]) -> set[str]:
    """Top-level config keys a recipe reads: its required, section and component keys, ``OPTIONAL``,
    and the ones every recipe shares (``recipe``, ``seed``, ``output_dir``)."""
    keys = {"recipe", "seed", "output_dir", *getattr(recipe, "OPTIONAL", ())}
    for dotted in (*recipe.REQUIRED, *recipe.SECTIONS, *recipe.RUNTIME_ARGS):
        keys.add(dotted.split(".", 1)[0].split("[", 1)[0])
    return keys


def resume_setting(recipe: type[RecipeClass], cfg: DictConfig) -> bool | None:
    """``train.resume`` (or its default) for a recipe whose ``train`` section can resume; ``None`` otherwise."""
    import dataclasses

    from omegaconf import OmegaConf

    section = recipe.SECTIONS.get("train")
    field = next((f for f in dataclasses.fields(section) if f.name == "resume"), None) if section else None
    if field is None:
        return None
    value = OmegaConf.select(cfg, "train.resume", default=None)
    return bool(field.default if value is None else value)


def claim_output_dir(recipe: type[RecipeClass], cfg: DictConfig, *, overwrite: bool = False) -> RunClaim:
    """Checks ``output_dir`` and takes it for this run, before anything is built (one check for every
    recipe; see :mod:`hftl.training.run_dir`). Returns the :class:`~hftl.training.run_dir.RunClaim`."""
    from hftl.training.run_dir import claim_output_dir as claim

    name = recipe.__module__.rsplit(".", 1)[-1]
    return claim(cfg, recipe=name, resume=resume_setting(recipe, cfg), overwrite=overwrite)


def recipe_main(
    recipe: type[RecipeClass], argv: Sequence[str] | None = None, *, prog: str | None = None
) -> int:
    """Parses ``argv``, runs the recipe, prints user errors as one clear message (exit code 2)."""
    args = recipe_parser(prog or f"hftl run {recipe.__module__.rsplit('.', 1)[-1]}").parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("HFTL_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    from hftl.config import granted, redact

    claim = None
    try:
        with granted(trust_remote_code=args.trust_remote_code, allow_env=args.allow_env):
            cfg = load_and_validate(recipe, args.config, args.overrides, allow_any=args.allow_any_component)
            claim = claim_output_dir(recipe, cfg, overwrite=args.overwrite)
            recipe(cfg, allow_any_component=args.allow_any_component).run()
    except (HftlError, OSError) as err:
        if claim is not None:
            claim.release_if_unused()  # a run that failed before writing anything leaves no folder behind
        print(f"error: {redact(_one_line(err))}", file=sys.stderr)  # no --allow-env value in messages
        return 2
    return 0


def _one_line(err: BaseException) -> str:
    """An HftlError as is; an OSError that escaped a writer (disk full, folder gone) with its file and the fix."""
    if isinstance(err, HftlError):
        return str(err)
    where = f" {err.filename}:" if getattr(err, "filename", None) else ""
    return (
        f"cannot read or write{where} {err.strerror or err}. Fix: check that the file or folder exists, "
        "is writable and that the disk has free space, then run the same command again."
    )
