"""``auto_map``: configs that ask transformers to import Python code shipped with a model.

hftl never turns ``trust_remote_code`` on by itself: a model (or its base model) whose configs have an
``auto_map`` is refused unless the caller passed ``trust_remote_code=True`` / ``--trust-remote-code``, and
then a warning names the ``.py`` files that transformers may import.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hftl.errors import ModelLoadError
from hftl.models.records import read_json

logger = logging.getLogger("hftl.models.io")


def _auto_map_modules(files: list[Path]) -> tuple[list[Path], list[str]]:
    """The config files among ``files`` with an ``auto_map``, and the ``.py`` modules it names."""
    hits, modules = [], set()
    for file in files:
        data = read_json(file)
        if not isinstance(data, dict) or "auto_map" not in data:
            continue
        hits.append(file)
        refs = data["auto_map"].values() if isinstance(data["auto_map"], dict) else []
        for ref in (r for v in refs for r in (v if isinstance(v, list) else [v])):
            if isinstance(ref, str) and "." in ref:  # "module.Class" or "other/repo--module.Class"
                repo, _, name = ref.rpartition("--")
                modules.add(f"{name.rsplit('.', 1)[0]}.py" + (f" (from {repo})" if repo else ""))
    return hits, sorted(modules)


def check_remote_code(files: list[Path], *, trust_remote_code: bool, what: str, shipped: list[str]) -> None:
    """Refuses ``auto_map`` in ``files`` unless the caller trusts remote code; then warns naming the code."""
    hits, modules = _auto_map_modules(files)
    code = sorted({*modules, *shipped})
    if trust_remote_code and (hits or shipped):
        logger.warning(
            "trust_remote_code=True: transformers may import and run Python code of %s: %s. Do this only for a "
            "model whose code you have read.",
            what, ", ".join(code),
        )  # fmt: skip
    elif hits:
        raise ModelLoadError(
            f"{hits[0]} has `auto_map`: loading {what} would import and run Python code ({', '.join(code)}). "
            "Refused; if you have read that code and trust it, pass --trust-remote-code (Python: "
            "trust_remote_code=True)."
        )


def check_folder(folder: Path, *, trust_remote_code: bool, what: str) -> None:
    """:func:`check_remote_code` for the config files and ``.py`` files of a local model folder."""
    shipped = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py")) if folder.is_dir() else []
    configs = sorted(folder.glob("*config.json")) if folder.is_dir() else []
    check_remote_code(
        configs, trust_remote_code=trust_remote_code, what=f"{what} ({folder})", shipped=shipped
    )


def check_hub_config(repo_id: str, revision: str | None, *, trust_remote_code: bool, what: str) -> None:
    """:func:`check_remote_code` for the ``config.json`` of a Hub model (fetched as transformers would)."""
    from transformers.utils import cached_file

    try:  # the file transformers reads next (the same request, then cached)
        config = cached_file(repo_id, "config.json", revision=revision)
    except (OSError, ValueError):
        return  # not reachable: building the encoder reports it in one line
    check_remote_code([Path(config)], trust_remote_code=trust_remote_code, what=what, shipped=[])
