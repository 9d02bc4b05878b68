"""Atomic, rotated training checkpoints on top of ``accelerator.save_state`` / ``load_state``.

Layout under a run's ``output_dir``::

    checkpoints/
        step-00000100/            # complete: accelerate files + hftl_state.json + COMPLETE
            model.safetensors     # written by accelerator.save_state (names depend on the setup:
            optimizer.bin         #   model_1.safetensors, scheduler.bin, sampler.bin, scaler.pt,
            random_states_0.pkl   #   one random_states_<rank>.pkl per process, FSDP sub-folders, ...)
            hftl_state.json       # the recipe's `state` + {"step", "format", "files": {name: bytes}}
            COMPLETE              # sha256 of hftl_state.json, written last
        .tmp-step-00000200/       # a save in progress, or one that crashed: always ignored

A save writes everything into ``.tmp-step-*``, fsyncs it, then renames it to ``step-*`` in one ``os.replace``,
so a crash at any point leaves the earlier checkpoints untouched and at most a ``.tmp-*`` folder that
:func:`latest_checkpoint` skips and the next save removes. A ``step-*`` folder counts only when its ``COMPLETE``
hash matches ``hftl_state.json`` and every file listed there exists with the recorded size.

Assumes all processes see the same filesystem (the usual single-node or shared-storage setup).

Example:
    >>> ckpt = latest_checkpoint(output_dir)  # doctest: +SKIP
    >>> state = load_checkpoint(accelerator, ckpt) if ckpt else {"step": 0}  # doctest: +SKIP
    >>> save_checkpoint(accelerator, output_dir, step=state["step"] + 100, state={"epoch": 1})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.errors import HftlError

if TYPE_CHECKING:
    import accelerate

logger = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoints"
STATE_FILENAME = "hftl_state.json"
COMPLETE_FILENAME = "COMPLETE"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_RESERVED_KEYS = ("format", "files")
_warned: set[tuple[str, str]] = set()


def _warn_once(path: Path, reason: str) -> None:
    key = (str(path), reason)
    if key not in _warned:
        _warned.add(key)
        logger.warning("Skipping checkpoint %s: %s.", path, reason)


def _json_default(value: Any) -> Any:
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):  # NumPy / torch scalars
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _check(path: Path) -> tuple[dict | None, str | None]:
    """Return ``(state, None)`` for a complete checkpoint, else ``(None, why it is not)``."""
    if not path.is_dir():
        return None, "it is not a directory"
    marker = path / COMPLETE_FILENAME
    if not marker.is_file():
        return None, f"no {COMPLETE_FILENAME} marker (the save did not finish)"
    try:
        expected = marker.read_text(encoding="utf-8").strip()
        raw = (path / STATE_FILENAME).read_bytes()
    except OSError as err:
        return None, f"cannot read {COMPLETE_FILENAME} or {STATE_FILENAME} ({err})"
    if hashlib.sha256(raw).hexdigest() != expected:
        return None, f"{STATE_FILENAME} does not match the sha256 in {COMPLETE_FILENAME} (changed or corrupt)"
    try:
        state = json.loads(raw)
    except ValueError as err:
        return None, f"{STATE_FILENAME} is not valid JSON ({err})"
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        return None, f"{STATE_FILENAME} has format {found!r}, this hftl reads format {FORMAT_VERSION}"
    match = _STEP_DIR.match(path.name)
    if match and int(match.group(1)) != state.get("step"):
        return None, f"{STATE_FILENAME} says step {state.get('step')!r} but the folder is {path.name}"
    files = state.get("files", {})
    if not isinstance(files, dict):
        return None, f"{STATE_FILENAME} has a malformed `files` list"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return None, f"accelerate file {name} is missing"
        if file.stat().st_size != size:
            return (
                None,
                f"accelerate file {name} has {file.stat().st_size} bytes, expected {size} (truncated?)",
            )
    return state, None


def _scan(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / CHECKPOINT_DIRNAME
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(TMP_PREFIX):
            _warn_once(child, "unfinished save (a .tmp-* folder); it is ignored and removed by the next save")
            continue
        match = _STEP_DIR.match(child.name)
        if not match:
            continue
        _, reason = _check(child)
        if reason:
            _warn_once(child, reason)
            continue
        found.append((int(match.group(1)), child))
    return sorted(found)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest to newest by step.

    Incomplete or corrupt ``step-*`` folders are skipped with a warning that names the folder and the reason;
    ``.tmp-*`` folders (saves in progress or crashed) are ignored.

    Args:
        output_dir: the run's output directory (the parent of ``checkpoints/``).

    Returns:
        Paths of the valid checkpoint folders; empty if there are none.
    """
    return [path for _, path in _scan(output_dir)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints``, or ``None``.

    Args:
        output_dir: the run's output directory (the parent of ``checkpoints/``).

    Returns:
        The folder to pass to :func:`load_checkpoint`, or ``None`` when there is no valid checkpoint.
    """
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rmtree_via_trash(path: Path, trash: Path) -> None:
    """Delete ``path`` so that no half-deleted ``step-*`` folder is ever visible: rename, then remove."""
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash)


def _finalize(tmp: Path, final: Path, payload: dict) -> None:
    """Main process only: record the files, write the state and the marker, fsync, rename into place."""
    files = {}
    for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
        files[file.relative_to(tmp).as_posix()] = file.stat().st_size
        _fsync_path(file)
    raw = json.dumps({**payload, "files": files}, indent=2, default=_json_default).encode("utf-8")
    _write_synced(tmp / STATE_FILENAME, raw)
    _write_synced(tmp / COMPLETE_FILENAME, (hashlib.sha256(raw).hexdigest() + "\n").encode("ascii"))
    for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        _fsync_path(folder)

    root = final.parent
    old = root / f"{TMP_PREFIX}old-{final.name}"
    if final.exists():
        # A directory cannot be os.replace'd over a non-empty one: move the old copy aside first. A crash
        # between the two renames leaves both as .tmp-* folders (ignored); other checkpoints are untouched.
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_path(root)
    if old.exists():
        shutil.rmtree(old)


def _prune(output_dir: Path, keep_last: int, current: Path, step: int) -> None:
    checkpoints = _scan(output_dir)
    newer = [path.name for other, path in checkpoints if other > step]
    if newer:
        logger.warning(
            "Saved %s, but %s already holds later checkpoints %s (from an earlier run?): latest_checkpoint() "
            "will resume from those. Use a fresh output_dir or delete them.",
            current.name,
            output_dir,
            newer,
        )
    for _, path in checkpoints[:-keep_last]:
        if path != current:
            logger.info("Removing old checkpoint %s (keep_last=%d)", path, keep_last)
            _rmtree_via_trash(path, path.parent / f"{TMP_PREFIX}del-{path.name}")


def _check_save_args(
    accelerator: accelerate.Accelerator, step: int, state: dict, keep_last: int | None
) -> dict:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise HftlError(f"save_checkpoint: `step` must be an int >= 0, found {step!r}.")
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
    ):
        raise HftlError(
            f"save_checkpoint: `keep_last` must be an int >= 1 or None (keep all), found {keep_last!r}."
        )
    if not isinstance(state, dict):
        raise HftlError(f"save_checkpoint: `state` must be a dict, found {type(state).__name__}.")
    clashes = [key for key in _RESERVED_KEYS if key in state]
    if clashes or state.get("step", step) != step:
        raise HftlError(
            f"save_checkpoint: `state` uses reserved keys {clashes or ['step']} (hftl writes `step`, `format` "
            f"and `files` itself). Rename them; `state['step']`, if given, must equal step={step}."
        )
    if accelerator.project_configuration.automatic_checkpoint_naming:
        raise HftlError(
            "save_checkpoint: the Accelerator has `ProjectConfiguration(automatic_checkpoint_naming=True)`, "
            "which makes save_state ignore the target folder. Build the Accelerator without it; "
            "hftl names and rotates checkpoints itself."
        )
    payload = {**state, "step": step, "format": FORMAT_VERSION}
    try:  # fail on every process, before any file is written, rather than hang the others later
        json.dumps(payload, default=_json_default)
    except (TypeError, ValueError) as err:
        raise HftlError(f"save_checkpoint: `state` must be JSON-serialisable: {err}.") from err
    return payload


def save_checkpoint(
    accelerator: accelerate.Accelerator,
    output_dir: str | Path,
    *,
    step: int,
    state: dict,
    keep_last: int | None = 2,
) -> Path:
    """Save model, optimizer, scheduler and RNG states plus ``state`` as ``output_dir/checkpoints/step-{step}``.

    Call it on **all** processes: ``accelerator.save_state`` writes one RNG file per process and the function
    synchronises with ``accelerator.wait_for_everyone()``. Everything is written into a ``.tmp-step-*`` folder
    first (``safe_serialization=True``: weights as safetensors; optimizer / scheduler / RNG states are pickled by
    accelerate); the main process then writes ``hftl_state.json`` and, last, the ``COMPLETE`` marker, fsyncs,
    and renames the folder into place. An existing checkpoint of the same step is replaced. Older complete
    checkpoints beyond ``keep_last`` are then deleted (the one just written never is).

    Args:
        accelerator: the Accelerator that prepared the model, optimizer, scheduler and dataloaders.
        output_dir: the run's output directory; checkpoints go to ``output_dir/checkpoints/``.
        step: the optimizer step reached; names the folder (``step-00000100``).
        state: JSON-serialisable recipe state to restore (epoch, best metric, ...). ``step`` and ``format``
            are added; the keys ``format`` and ``files`` are reserved.
        keep_last: how many complete checkpoints to keep; ``None`` keeps all.

    Returns:
        The final checkpoint folder.

    Raises:
        HftlError: on a bad argument, a non-serialisable ``state``, or an Accelerator configured with
            ``automatic_checkpoint_naming``.
    """
    payload = _check_save_args(accelerator, step, state, keep_last)
    root = Path(output_dir) / CHECKPOINT_DIRNAME
    final = root / f"step-{step:08d}"
    tmp = root / f"{TMP_PREFIX}step-{step:08d}"

    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TMP_PREFIX}*"):  # crashed saves, half-done rotations: nobody uses them
            logger.info("Removing unfinished checkpoint folder %s", stale)
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
    accelerator.wait_for_everyone()

    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        _finalize(tmp, final, payload)
        logger.info("Saved checkpoint %s", final)
        if keep_last is not None:
            _prune(Path(output_dir), keep_last, final, step)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: accelerate.Accelerator, path: str | Path) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into the prepared objects; return its state.

    Call it on all processes, after ``accelerator.prepare``. ``accelerator.load_state`` unpickles the
    optimizer, scheduler, sampler and RNG files (``torch.load``; the RNG states with ``weights_only=False``):
    only load checkpoints you or your team wrote, never ones downloaded from untrusted sources.

    Args:
        accelerator: the Accelerator that prepared the same model / optimizer / scheduler setup.
        path: a checkpoint folder, e.g. from :func:`latest_checkpoint`.

    Returns:
        The ``state`` given to :func:`save_checkpoint`, plus ``"step"`` and ``"format"``.

    Raises:
        HftlError: if ``path`` is not a complete checkpoint, or its tensors do not fit the prepared objects.
    """
    path = Path(path)
    state, reason = _check(path)
    if reason:
        raise HftlError(
            f"Cannot resume from checkpoint {path}: {reason}. Pass a complete checkpoint folder; "
            "`latest_checkpoint(output_dir)` returns the newest valid one."
        )
    try:
        accelerator.load_state(str(path))
    except RuntimeError as err:
        raise HftlError(
            f"Checkpoint {path} does not fit the prepared model/optimizer ({err}). Resume with the same model, "
            "adapter and optimizer config the checkpoint was trained with, or start a fresh output_dir."
        ) from err
    state.pop("files", None)
    return state
