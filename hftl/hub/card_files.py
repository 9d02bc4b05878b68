"""The files of a model card in a model directory, and who wrote them.

``model/.hftl_card.json`` (:data:`CARD_MARKER`) records the SHA-256 of the ``README.md`` hftl last wrote
and the plots it drew. :func:`card_state` tells hftl's own unchanged card from one the user edited or
wrote; :func:`install_card` moves a card rendered into a temporary folder into the model directory,
replacing only hftl's own files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from hftl.errors import HftlError
from hftl.hub.plots import PLOTS_DIRNAME

CARD_FILE = "README.md"
CARD_MARKER = ".hftl_card.json"  # what hftl's last card wrote: the README's hash and the plots
CardState = Literal["missing", "hftl", "edited"]


class CardEditedError(HftlError):
    """``hftl card`` would replace a README.md that hftl did not write or that was edited since."""


def card_state(model_dir: Path) -> CardState:
    """``missing`` (no README), ``hftl`` (the README hftl's last card wrote, unchanged) or ``edited``.

    A README without hftl's marker (hand-written, or rendered by an hftl without markers) counts as edited.
    """
    readme = model_dir / CARD_FILE
    if not readme.exists() and not readme.is_symlink():
        return "missing"
    marker = _read_marker(model_dir)
    if readme.is_symlink() or not readme.is_file() or marker is None:
        return "edited"
    return "hftl" if _sha256(readme) == marker.get("readme_sha256") else "edited"


def install_card(staged: Path, model_dir: Path) -> None:
    """Moves a card staged by :func:`stage_card` into ``model_dir`` and records it in the card marker.

    Only hftl's own files are replaced or removed: the README (the caller checked :func:`card_state`) and
    the plots the previous card recorded; other files in ``plots/`` are left alone.
    """
    if (model_dir / PLOTS_DIRNAME).is_symlink():
        raise HftlError(
            f"{model_dir / PLOTS_DIRNAME} is a symlink; hftl writes the card's plots only into a real folder. "
            "Replace it with a folder (or remove it), then render the card again."
        )
    old = _read_marker(model_dir) or {}
    plots = sorted(p.name for p in (staged / PLOTS_DIRNAME).glob("*.png"))
    for name in old.get("plots", []):
        path = model_dir / PLOTS_DIRNAME / Path(name).name
        if Path(name).name not in plots and path.is_file() and not path.is_symlink():
            path.unlink()
    if plots:
        (model_dir / PLOTS_DIRNAME).mkdir(exist_ok=True)
    for name in plots:
        _replace_file(staged / PLOTS_DIRNAME / name, model_dir / PLOTS_DIRNAME / name)
    _replace_file(staged / CARD_FILE, model_dir / CARD_FILE)
    marker = {"format": 1, "readme_sha256": _sha256(model_dir / CARD_FILE), "plots": plots}
    tmp = model_dir / f"{CARD_MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, model_dir / CARD_MARKER)


def _read_marker(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / CARD_MARKER
    try:
        marker = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _replace_file(src: Path, dst: Path) -> None:
    """Copies ``src`` over ``dst`` atomically (a temporary sibling renamed over it; a symlink is replaced)."""
    tmp = dst.with_name(f".{dst.name}.hftl-tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
