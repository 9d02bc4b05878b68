"""Who owns a run's ``output_dir``: the owner marker, the checks before any work, and ``--overwrite``.

hftl deletes or replaces only what it wrote. A run's folder holds an owner marker, ``.hftl_run.json``::

    {"written_by": "hftl", "format": 1, "hftl_version": "0.1.0", "created": "2025-01-31T12:00:00+00:00",
     "recipe": "finetune", "config_fingerprint": "4f1c...", "data_fingerprint": "9be0...",
     "config_keys": {"optimizer.lr": "<hash>", ...}, "data_keys": {"data.data_files.train": "<hash>"},
     "outputs": ["checkpoints", "model", "metrics.json"]}

``outputs`` lists the top-level entries hftl wrote there (:func:`hftl.outputs.record_output` adds them
as they are written); ``--overwrite`` deletes exactly those, never anything else. The fingerprints
(:mod:`hftl.training.fingerprint`) decide whether a later command is the same run.

:func:`claim_output_dir` runs before weights or data load and refuses, each with a one-line
:class:`~hftl.errors.ConfigError` naming ``output_dir``, what was found and the fix:

* an empty value, a path starting with ``~`` (never expanded), a filesystem root or mount point, the home
  folder, the current folder or one of its parents, a path that is or lies below a regular file or a
  dangling symlink, and a folder that contains one of the run's inputs (data, models);
* an existing non-empty folder without the marker (hftl cannot tell its files from yours);
* an hftl run folder holding results (checkpoints, model, metrics) whose config or data fingerprint differs
  (naming the keys that changed), or holding any results when ``train.resume`` is false, unless
  ``--overwrite`` is given. The same config and data resume (or, for recipes that cannot resume, run
  again); a marked folder without results (the earlier run failed first) is simply taken over.

Only the main process (``RANK`` 0) writes the marker or deletes anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hftl.errors import ConfigError, OutputError
from hftl.outputs import (
    MARKER_FILE,
    MODEL_META_FILE,
    WRITTEN_BY,
    WRITTEN_BY_KEY,
    is_hftl_json,
    is_hftl_model_dir,
    is_marker_file,
    read_marker,
    record_output,
    write_marker,
    writing,
)
from hftl.training.checkpoint import CHECKPOINT_DIRNAME, remove_checkpoints
from hftl.training.fingerprint import (
    RECIPE_KEY,
    Fingerprint,
    config_fingerprint,
    data_fingerprint,
    local_inputs,
)
from hftl.version import __version__

MARKER_FORMAT = 1
__all__ = [  # the output bookkeeping of hftl.outputs, re-exported: a run folder is where it is used most
    "MARKER_FILE", "MODEL_META_FILE", "WRITTEN_BY", "WRITTEN_BY_KEY", "OutputError", "RunClaim",
    "check_location", "claim_output_dir", "is_hftl_json", "is_hftl_model_dir", "is_main_process",
    "read_marker", "record_output", "writing",
]  # fmt: skip


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch`` / ``torchrun`` job, or a single process (before any Accelerator)."""
    return int(os.environ.get("RANK", "0")) == 0


# -- where a run may write -------------------------------------------------------------------------------
def check_location(value: Any, *, key: str = "output_dir") -> Path:
    """``value`` as a path a run may own; ConfigError (naming ``key``) for places that can never be one.

    Symlinks to existing folders are followed; the checks apply to where they point.
    """
    text = "" if value is None else str(value).strip()
    if text in ("", "None", "null"):
        raise ConfigError(f"`{key}` is empty; set it to a new folder, e.g. `{key}=outputs/my_run`")
    if text.startswith("~"):
        raise ConfigError(
            f"`{key}` = {text!r} starts with `~`, which hftl does not expand (it would create a folder named "
            f"`~`); write the full path, e.g. `{key}={os.path.expanduser(text)}`"
        )
    path = Path(os.path.abspath(text))
    for part in [*reversed(path.parents), path]:
        if part.is_symlink() and not part.exists():
            raise ConfigError(
                f"`{key}`: {part} is a dangling symlink (it points to {os.readlink(part)}, which does not "
                f"exist); create its target or choose another `{key}`"
            )
        if part.exists() and not part.is_dir():
            where = "is" if part == path else "lies below"
            raise ConfigError(
                f"`{key}`: {text} {where} the file {part}, not a folder; choose a new folder for `{key}`"
            )
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    reason = None
    if resolved == Path(resolved.anchor) or (resolved.exists() and os.path.ismount(resolved)):
        reason = "a filesystem root or mount point"
    elif resolved == Path.home().resolve():
        reason = "your home folder"
    elif resolved == cwd or resolved in cwd.parents:
        reason = "the current folder" if resolved == cwd else "a parent of the current folder"
    if reason:
        raise ConfigError(
            f"`{key}` = {text!r} is {reason}; hftl writes model/, checkpoints/ and metrics.json there, so give "
            f"it a folder of its own, e.g. `{key}=outputs/my_run`"
        )
    return path


def _check_inputs_outside(cfg: DictConfig, out: Path) -> None:
    """An input in ``out`` could be overwritten; in a marked run folder the ownership rules protect it."""
    resolved = out.resolve()
    marked = (resolved / MARKER_FILE).is_file()
    for key, path in local_inputs(cfg).items():
        if path == resolved or (resolved in path.parents and not marked):
            raise ConfigError(
                f"`output_dir` {out} contains `{key}` ({path}), an input of this run; hftl would write over "
                "it. Choose an `output_dir` outside your data and models"
            )


def _listing(path: Path, names: list[str]) -> str:
    shown = [f"{n}/" if (path / n).is_dir() else n for n in sorted(names)[:4]]
    return ", ".join(shown) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _refuse_foreign(path: Path, entries: list[str]) -> None:
    legacy = is_hftl_model_dir(path / "model") or (path / "checkpoints").is_dir()
    what = (
        "what looks like an hftl run written before run markers (no .hftl_run.json), so hftl cannot tell its "
        "files from yours"
        if legacy
        else "files hftl did not write"
    )
    raise ConfigError(
        f"`output_dir`: {path} is not empty and holds {what} ({_listing(path, entries)}); hftl never writes "
        "into such a folder, `--overwrite` included. Fix: choose a new `output_dir` (e.g. a subfolder), or "
        "move the folder away yourself"
    )


def _check_replaceable(path: Path) -> None:
    """The entries a run replaces at its end must be hftl's, checked before any work."""
    model, metrics = path / "model", path / "metrics.json"
    if (model.exists() or model.is_symlink()) and not is_hftl_model_dir(model):
        raise ConfigError(
            f"`output_dir`: {model} was not written by hftl (no {MODEL_META_FILE} in it); hftl will not replace "
            "it. Move it away, or choose a new `output_dir`"
        )
    if (metrics.exists() or metrics.is_symlink()) and (metrics.is_symlink() or not is_hftl_json(metrics)):
        raise ConfigError(
            f'`output_dir`: {metrics} was not written by hftl (no "written_by": "hftl" in it); hftl will not '
            "merge into or replace it. Move it away, or choose a new `output_dir`"
        )


def _remove_output(entry: Path, *, top: bool) -> None:
    """Deletes what hftl wrote at ``entry`` (``--overwrite``), keeping anything of yours inside its folders.

    A symlink goes itself (never where it points); a model folder (``hftl_model.json``) and ``logs/`` go whole;
    ``checkpoints/`` loses only the checkpoints and files hftl wrote; a JSON file only if it carries
    ``"written_by": "hftl"``; other files only when the marker lists them (``top``). Other folders
    (``runs/``, ``plain_finetune/``) are walked with the same rules and removed once empty.
    """
    if entry.is_symlink():
        entry.unlink()
    elif entry.is_file():
        if is_hftl_json(entry) if entry.suffix == ".json" else top:
            entry.unlink()
    elif is_hftl_model_dir(entry) or (top and entry.name == "logs"):
        shutil.rmtree(entry)
    elif entry.name == CHECKPOINT_DIRNAME:
        remove_checkpoints(entry.parent)
    elif entry.is_dir():
        for child in entry.iterdir():
            _remove_output(child, top=False)
        with contextlib.suppress(OSError):
            entry.rmdir()  # kept when something of yours is left in it


def _describe_change(kind: str, old: dict[str, Any], now: Fingerprint, keys: list[str]) -> str:
    names = ["the recipe" if k == RECIPE_KEY else f"`{k}`" for k in keys]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{kind} fingerprint {old.get(f'{kind}_fingerprint')} -> {now.digest} (changed: {shown})"


@dataclass
class RunClaim:
    """A run's hold on its ``output_dir``; :meth:`release_if_unused` undoes it when the run wrote nothing.

    Args:
        path: the folder.
        created: folders this claim created (deepest last).
        new_marker: whether this claim wrote the marker into a folder that had none.
    """

    path: Path
    created: list[Path] = field(default_factory=list)
    new_marker: bool = False

    def release_if_unused(self) -> None:
        """After a failed run: removes the marker and the folders this claim created if nothing else was written."""
        with contextlib.suppress(OSError):  # best effort: the run's own error is what gets reported
            if not self.new_marker or [p.name for p in self.path.iterdir()] != [MARKER_FILE]:
                return
            (self.path / MARKER_FILE).unlink()
            for folder in reversed(self.created):
                folder.rmdir()


def _new_marker(cfg: DictConfig, recipe: str, config_fp: Fingerprint, data_fp: Fingerprint) -> dict[str, Any]:
    trackers = OmegaConf.select(cfg, "train.report_to", default=None)
    return {
        WRITTEN_BY_KEY: WRITTEN_BY,
        "format": MARKER_FORMAT,
        "hftl_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "recipe": recipe,
        "config_fingerprint": config_fp.digest,
        "data_fingerprint": data_fp.digest,
        "config_keys": config_fp.parts,
        "data_keys": data_fp.parts,
        "outputs": ["logs"] if trackers else [],  # accelerate's trackers write to output_dir/logs
    }


def claim_output_dir(
    cfg: DictConfig, *, recipe: str, resume: bool | None, overwrite: bool = False
) -> RunClaim:
    """Checks ``cfg.output_dir`` and takes it for this run, before any weights or data load.

    Args:
        cfg: the validated run config.
        recipe: the recipe's name (part of the config fingerprint).
        resume: ``train.resume`` of a recipe that can resume, ``None`` for one that cannot (embed, meta).
        overwrite: ``--overwrite``: delete the files an earlier hftl run wrote there first.

    Returns:
        The claim; call :meth:`RunClaim.release_if_unused` if the run then fails.

    Raises:
        ConfigError: the folder is no place for a run, is foreign, or holds a different or finished run (see
            the module docstring), each with the fix.
    """
    path = check_location(cfg.get("output_dir"))
    _check_inputs_outside(cfg, path)
    if not is_main_process():
        return RunClaim(path)
    config_fp, data_fp = config_fingerprint(cfg, recipe=recipe), data_fingerprint(cfg, output_dir=path)
    marker = _new_marker(cfg, recipe, config_fp, data_fp)
    if not path.exists():
        created = [p for p in [*reversed(path.parents), path] if not p.exists()]
        with writing("the run folder", path):
            path.mkdir(parents=True)
            write_marker(path, marker)
        return RunClaim(path, created=created, new_marker=True)
    old = read_marker(path)
    entries = [p.name for p in path.iterdir() if not is_marker_file(p.name)]
    if old is None and entries:
        _refuse_foreign(path, entries)
    if old is not None:
        _check_replaceable(path)
    results = [
        n
        for n in (old or {}).get("outputs", [])
        if n != "logs" and ((path / n).exists() or (path / n).is_symlink())
    ]
    if old is None or not results:  # empty, or an earlier run that failed before writing any result
        with writing("the run marker", path / MARKER_FILE):
            write_marker(path, marker)
        return RunClaim(path, new_marker=old is None)
    if overwrite:
        with writing("the run folder", path):
            for name in old.get("outputs", []):
                _remove_output(path / name, top=True)
            write_marker(path, marker)
        return RunClaim(path)
    _check_same_run(path, old, config_fp, data_fp, resume=resume)
    return RunClaim(path)


def _check_same_run(
    path: Path, old: dict[str, Any], config_fp: Fingerprint, data_fp: Fingerprint, *, resume: bool | None
) -> None:
    when = f"{old.get('recipe', '?')} run of {old.get('created', '?')}"
    fix = "Fix: pass `--overwrite` to replace that run's files, or choose a new `output_dir`"
    if resume is False:
        raise ConfigError(
            f"`output_dir`: {path} holds an earlier hftl run ({when}) and `train.resume` is false, so this run "
            f"would start over on top of it. {fix}"
        )
    changes = []
    config_keys = config_fp.changed(old.get("config_keys") or {})
    if config_keys:
        changes.append(_describe_change("config", old, config_fp, config_keys))
    data_keys = data_fp.changed(old.get("data_keys") or {}, ignore_new=True)
    if data_keys:
        changes.append(_describe_change("data", old, data_fp, data_keys))
    if changes:
        verb = "resuming it" if resume else "re-running into it"
        raise ConfigError(
            f"`output_dir`: {path} holds an hftl run ({when}) with other settings: {'; '.join(changes)}; "
            f"{verb} would mix two runs. {fix}"
        )
