"""Atomic, rotated, content-hashed training checkpoints on top of ``accelerator.save_state`` / ``load_state``.

Layout under a run's ``output_dir``::

    checkpoints/
        step-00000100/            # complete: accelerate files + hftl_state.json + COMPLETE
            .hftl_checkpoint      # owner file, written first: hftl removes only folders that hold it
            model.safetensors     # written by accelerator.save_state (names depend on the setup:
            optimizer.bin         #   model_1.safetensors, scheduler.bin, sampler.bin, scaler.pt,
            random_states_0.pkl   #   one random_states_<rank>.pkl per process, FSDP sub-folders, ...)
            hftl_state.json       # the recipe's `state` + {"step", "format", "files": {name: {size, sha256}},
                                  #   "weights": {file: {left_out, signature}}}
            COMPLETE              # sha256 of hftl_state.json, written last
        .tmp-step-00000200/       # a save in progress, or one that crashed: always ignored

A save writes everything into ``.tmp-step-*``, fsyncs it, then renames it to ``step-*`` in one ``os.replace``,
so a crash at any point leaves the earlier checkpoints untouched and at most a ``.tmp-*`` folder that
:func:`latest_checkpoint` skips and the next save removes. A ``step-*`` folder counts only when its ``COMPLETE``
hash matches ``hftl_state.json`` and every file listed there exists with the recorded size; before a resume,
:func:`latest_checkpoint` also checks each file's sha256, so a checkpoint corrupted without a size change
(flipped bytes) is skipped like a truncated one and the previous complete checkpoint is used, with a warning.

hftl deletes only what it wrote: stale ``.tmp-*`` folders, old checkpoints beyond ``keep_last`` and a
checkpoint of the same step are removed only when they hold the ``.hftl_checkpoint`` owner file (or, for
complete checkpoints, a valid manifest); a file or folder of yours that matches the names is left alone.

With a :class:`~hftl.training.checkpoint_weights.TrainableSubset` (the Engine passes one) the weights files
hold only what training can change: trainable and optimized parameters and buffers, not a frozen pretrained
base, so a LoRA checkpoint of MiniLM is a few MiB instead of ~90. ``format`` is the layout version
(:data:`FORMAT_VERSION`): a checkpoint of another version is refused with one line saying so, never loaded.

Assumes all processes see the same filesystem (the usual single-node or shared-storage setup).

Example:
    >>> ckpt = latest_checkpoint(output_dir)  # doctest: +SKIP
    >>> state = load_checkpoint(accelerator, ckpt) if ckpt else {"step": 0}  # doctest: +SKIP
    >>> save_checkpoint(accelerator, output_dir, step=state["step"] + 100, state={"epoch": 1})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from hftl.errors import HftlError
from hftl.outputs import record_output, writing
from hftl.training.checkpoint_listing import (
    CHECKPOINT_DIRNAME,
    TMP_PREFIX,
    latest_checkpoint,
    list_checkpoints,
    scan_complete,
    warn_once,
)
from hftl.training.checkpoint_manifest import (
    FORMAT_VERSION,
    OWNER_FILENAME,
    STEP_DIR,
    check,
    fsync_path,
    json_default,
    owned,
    read_state,
    write_manifest,
)
from hftl.training.checkpoint_weights import TrainableSubset, load_hook

if TYPE_CHECKING:
    import accelerate

__all__ = [
    "BEST_FILENAME", "CHECKPOINT_DIRNAME", "FORMAT_VERSION", "OWNER_FILENAME", "latest_checkpoint",
    "list_checkpoints", "load_checkpoint", "remove_checkpoints", "save_checkpoint",
]  # fmt: skip

logger = logging.getLogger(__name__)

BEST_FILENAME = "best_trainable.safetensors"  # the best validation weights (hftl.training.Engine)
_RESERVED_KEYS = ("format", "files", "weights")


def _rmtree_via_trash(path: Path, kind: str) -> None:
    """Delete ``path`` so that no half-deleted ``step-*`` folder is ever visible: rename to a fresh
    ``.tmp-<kind>-*`` name (never an existing one), then remove."""
    trash = path.parent / f"{TMP_PREFIX}{kind}-{path.name}-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    shutil.rmtree(trash)


def _finalize(tmp: Path, final: Path, payload: dict) -> None:
    """Main process only: hash and record the files, write the state and the marker, fsync, rename into place."""
    write_manifest(tmp, payload)

    root, old = final.parent, None
    if final.exists() or final.is_symlink():
        if final.is_symlink() or not (owned(final) or check(final)[1] is None):
            raise HftlError(
                f"save_checkpoint: {final} exists and was not written by hftl; hftl will not replace it. Move "
                "it out of the checkpoints folder."
            )
        # A directory cannot be os.replace'd over a non-empty one: move the old copy aside first. A crash
        # between the two renames leaves it as a .tmp-* folder (ignored); other checkpoints are untouched.
        old = root / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(root)
    if old is not None:
        shutil.rmtree(old)


def _prune(output_dir: Path, keep_last: int, current: Path, step: int) -> None:
    checkpoints = scan_complete(output_dir)
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
            _rmtree_via_trash(path, "del")


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
        json.dumps(payload, default=json_default)
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
    weights: TrainableSubset | None = None,
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
        weights: keep only what training can change of each model (trainable and optimized parameters,
            parameters written since ``weights`` was captured, buffers); ``None`` saves every tensor.

    Returns:
        The final checkpoint folder.

    Raises:
        HftlError: on a bad argument, a non-serialisable ``state``, an Accelerator configured with
            ``automatic_checkpoint_naming``, or a folder in the way that hftl did not write.
        OutputError: the checkpoint could not be written (disk full, ``output_dir`` gone); the earlier
            checkpoints are untouched.
    """
    payload = _check_save_args(accelerator, step, state, keep_last)
    root = Path(output_dir) / CHECKPOINT_DIRNAME
    final = root / f"step-{step:08d}"
    tmp = root / f"{TMP_PREFIX}step-{step:08d}"

    with writing(f"checkpoint {final.name}", root):
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            record_output(root)
            _remove_stale(root)
        accelerator.wait_for_everyone()
        if tmp.exists() or tmp.is_symlink():  # left by the cleanup: not hftl's (checked on every process)
            raise HftlError(
                f"save_checkpoint: {tmp} exists and was not written by hftl, and hftl does not delete it. Move "
                "it out of the checkpoints folder, then run the same command again."
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tmp.mkdir()
            (tmp / OWNER_FILENAME).write_text("written by hftl.training.checkpoint\n", encoding="utf-8")
        accelerator.wait_for_everyone()

        handle = accelerator.register_save_state_pre_hook(weights.save_hook) if weights is not None else None
        try:
            accelerator.save_state(str(tmp), safe_serialization=True)
        finally:
            if handle is not None:
                handle.remove()
        payload["weights"] = weights.record if weights is not None else {}
        accelerator.wait_for_everyone()

        if accelerator.is_main_process:
            _finalize(tmp, final, payload)
            logger.info("Saved checkpoint %s", final)
            if keep_last is not None:
                _prune(Path(output_dir), keep_last, final, step)
    accelerator.wait_for_everyone()
    return final


def _remove_stale(root: Path) -> None:
    """Removes crashed saves and half-done rotations (``.tmp-*`` folders hftl created); nothing else."""
    for stale in root.glob(f"{TMP_PREFIX}*"):
        if owned(stale):
            logger.info("Removing unfinished checkpoint folder %s", stale)
            shutil.rmtree(stale)
        else:
            warn_once(stale, "its name looks like an unfinished save, but hftl did not write it: left alone")


def remove_checkpoints(output_dir: str | Path) -> None:
    """Deletes what hftl's checkpointing wrote under ``output_dir/checkpoints`` (``--overwrite``): its
    checkpoints and unfinished saves (owner file or valid manifest) and the best weights. Anything else stays,
    and so does the folder then."""
    root = Path(output_dir) / CHECKPOINT_DIRNAME
    if root.is_symlink() or not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_symlink():
            continue
        if owned(child) or (STEP_DIR.match(child.name) and read_state(child)[1] is None):
            shutil.rmtree(child)
        elif child.name in (BEST_FILENAME, Path(BEST_FILENAME).with_suffix(".tmp").name) and child.is_file():
            child.unlink()
    try:
        root.rmdir()
    except OSError:
        pass  # something of yours is still in it


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
        HftlError: if ``path`` is not a complete checkpoint of this hftl's format, or its tensors do not fit
            the prepared objects (a weights subset whose trained tensors or frozen part differ included).
    """
    path = Path(path)
    state, reason = check(path, verify=True)
    if reason:
        raise HftlError(
            f"Cannot resume from checkpoint {path}: {reason}. Pass a complete checkpoint folder; "
            "`latest_checkpoint(output_dir)` returns the newest valid one."
        )
    handle = accelerator.register_load_state_pre_hook(
        load_hook(accelerator, state.get("weights") or {}, path)
    )
    try:
        accelerator.load_state(str(path))
    except RuntimeError as err:
        raise HftlError(
            f"Checkpoint {path} does not fit the prepared model/optimizer ({err}). Resume with the same model, "
            "adapter and optimizer config the checkpoint was trained with, or start a fresh output_dir."
        ) from err
    finally:
        handle.remove()
    state.pop("files", None)
    state.pop("weights", None)
    return state
