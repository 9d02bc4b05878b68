"""Finding checkpoints: the complete ``step-*`` folders of a run, newest valid one first for a resume.

Part of :mod:`hftl.training.checkpoint` (which re-exports everything here); warnings go to that module's
logger, ``hftl.training.checkpoint``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hftl.errors import TrainingError
from hftl.training.checkpoint_manifest import OLD_FORMAT, STEP_DIR, check, owned

logger = logging.getLogger("hftl.training.checkpoint")

CHECKPOINT_DIRNAME = "checkpoints"
TMP_PREFIX = ".tmp-"
_warned: set[tuple[str, str]] = set()


def warn_once(path: Path, reason: str) -> None:
    """Logs that checkpoint ``path`` is skipped for ``reason``, once per process (a poll must not repeat it)."""
    key = (str(path), reason)
    if key not in _warned:
        _warned.add(key)
        logger.warning("Skipping checkpoint %s: %s.", path, reason)


def step_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``step-*`` folder, oldest first, valid or not; warns once about ``.tmp-*`` leftovers."""
    root = Path(output_dir) / CHECKPOINT_DIRNAME
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(TMP_PREFIX):
            if owned(child):
                warn_once(
                    child, "unfinished save (a .tmp-* folder); it is ignored and removed by the next save"
                )
            continue
        match = STEP_DIR.match(child.name)
        if match and child.is_symlink():
            warn_once(child, "it is a symlink; hftl only uses (and removes) checkpoint folders it wrote")
        elif match:
            found.append((int(match.group(1)), child))
    return sorted(found)


def scan_complete(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (sizes checked, not hashes), oldest first; the others are warned about."""
    found = []
    for step, child in step_dirs(output_dir):
        _, reason = check(child)
        if reason:
            warn_once(child, reason)
            continue
        found.append((step, child))
    return found


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest to newest by step.

    Incomplete or corrupt ``step-*`` folders are skipped with a warning that names the folder and the reason;
    ``.tmp-*`` folders (saves in progress or crashed) are ignored. File sizes are checked, not content
    hashes (this is cheap enough to poll); :func:`latest_checkpoint` checks the hashes too.

    Args:
        output_dir: the run's output directory (the parent of ``checkpoints/``).

    Returns:
        Paths of the valid checkpoint folders; empty if there are none.
    """
    return [path for _, path in scan_complete(output_dir)]


def latest_checkpoint(output_dir: str | Path, *, strict: bool = False) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints`` whose files match their sha256.

    Checkpoints are tried newest first; one that is incomplete, truncated or corrupt (a file whose content
    no longer matches the sha256 recorded when it was saved) is skipped with a warning naming the folder
    and the reason, and the previous one is tried.

    Args:
        output_dir: the run's output directory (the parent of ``checkpoints/``).
        strict: raise instead of returning ``None`` when ``step-*`` folders exist but none is valid.

    Returns:
        The folder to pass to :func:`load_checkpoint`, or ``None`` when there is no valid checkpoint.

    Raises:
        TrainingError: with ``strict``, when every checkpoint found is damaged.
    """
    candidates = step_dirs(output_dir)
    reasons = []
    for _, path in reversed(candidates):
        _, reason = check(path, verify=True)
        if reason is None:
            return path
        warn_once(path, reason)
        reasons.append(f"{path.name}: {reason}")
    if strict and candidates and all(OLD_FORMAT in r for r in reasons):
        raise TrainingError(
            f"cannot resume from {Path(output_dir) / CHECKPOINT_DIRNAME}: its checkpoints were written by another "
            f"hftl version ({reasons[0].split('(', 1)[-1].rstrip(')')}) and are never loaded into this one's "
            "models. Fix: run again with `--overwrite` to start over (or `train.resume=false` with a new `output_dir`)."
        )
    if strict and candidates:
        raise TrainingError(
            f"cannot resume from {Path(output_dir) / CHECKPOINT_DIRNAME}: none of its checkpoints is intact "
            f"({'; '.join(reasons[:3])}). Fix: run again with `--overwrite` to start over (or "
            "`train.resume=false` with a new `output_dir`)."
        )
    return None
