"""Upload a model directory to the Hugging Face Hub, and download one back for ``hftl.load``.

The token comes from huggingface_hub's own sources (``HF_TOKEN``, ``hf auth login``); hftl never reads,
prints, logs or writes it.

``hftl push`` uploads an allow-list, not a folder: the files hftl's writers put in a model directory
(:func:`publishable_files`: ``hftl_model.json``, ``config.yaml``, ``head.safetensors``, ``metrics.json``,
``tasks.json`` + ``tasks/<task>.safetensors``, the card's ``README.md`` and ``plots/``, and in ``encoder/``
what ``save_pretrained`` writes for a transformers model, a peft adapter and their processor). Training
state and caches are skipped; a symlink or special file anywhere in the folder is refused (it could point
at a token or key), and so is any other file, by default: the error lists it, and ``--skip-unknown``
pushes without it. The card is rendered into a temporary folder and uploaded from there; it replaces
``model/README.md`` only after the upload succeeded, and never when the user edited it
(:func:`hftl.hub.card.card_state`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hftl.errors import ConfigError, HftlError
from hftl.hub.card_files import CARD_FILE, CARD_MARKER, card_state, install_card
from hftl.hub.plots import PLOT_FILE, PLOTS_DIRNAME
from hftl.models.io import META_FILE, find_model_dir
from hftl.models.source import IGNORE_PATTERNS

logger = logging.getLogger(__name__)

# hftl's own bookkeeping in a model directory: kept local, never uploaded (and never an "unknown file").
LOCAL_FILES = [CARD_MARKER, "*.hftl-tmp", "**/*.hftl-tmp"]
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def push_to_hub(
    output_dir: str | Path,
    *,
    repo_id: str,
    private: bool = True,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    render: bool = True,
    skip_unknown: bool = False,
) -> str:
    """Uploads the allow-listed files of ``OUTPUT_DIR/model`` (+ a fresh card) to ``repo_id``; returns its URL.

    Args:
        output_dir: the ``output_dir`` of a finished ``hftl run`` (or its ``model/`` folder).
        repo_id: ``user/name`` or ``org/name``; created when missing.
        private: visibility of a newly created repo (an existing repo keeps its visibility).
        revision: branch to commit to (created from the default branch when missing).
        create_pr: open a pull request against the default branch instead of committing to it.
        commit_message: the commit title; default "Upload <folder> with hftl".
        render: render the card (``README.md`` + plots, with ``repo_id`` in the loading example) unless the
            user edited ``model/README.md``; ``False`` uploads the folder's README as it is.
        skip_unknown: push without the files hftl did not write (default: refuse them).

    Returns:
        The URL of the commit, or of the pull request with ``create_pr``.

    Raises:
        HftlError: bad arguments, a symlink or unknown file in the folder, offline mode, no token, the Hub
            cannot be reached, or it refused the upload. ``model/`` is unchanged then.
    """
    model_dir = find_model_dir(Path(output_dir)) if Path(output_dir).exists() else None
    if model_dir is None:
        raise HftlError(
            f"{str(output_dir)!r} does not exist: pass the `output_dir` of a finished `hftl run`."
        )
    _check_arguments(repo_id, revision, create_pr)
    files = publishable_files(model_dir, skip_unknown=skip_unknown)
    _check_hub_access()
    with tempfile.TemporaryDirectory(prefix="hftl-push-") as tmp:
        staged = _stage_card(model_dir, Path(tmp), repo_id, files) if render else False
        message = commit_message or f"Upload {model_dir.parent.name or model_dir.name} with hftl"
        url = _upload(
            files, repo_id, private=private, revision=revision, create_pr=create_pr, message=message
        )
        if staged:  # the upload succeeded: the local card becomes the one on the Hub
            _install_card(Path(tmp), model_dir)
    return url


def _install_card(staged: Path, model_dir: Path) -> None:
    """After a successful upload: the pushed card replaces the local one (a failure here is only a warning)."""
    try:
        install_card(staged, model_dir)
    except (OSError, HftlError) as err:
        logger.warning("Pushed, but %s/README.md was not updated to the pushed card: %s", model_dir, err)


def publishable_files(model_dir: Path, *, skip_unknown: bool = False) -> dict[str, Path]:
    """The files of ``model_dir`` that ``hftl push`` uploads: ``{path in the repo: local path}``.

    Raises:
        HftlError: a symlink or a file that is not a regular file (anywhere, even among skipped files), or
            files hftl did not write (unless ``skip_unknown``: then they are left out with a warning).
    """
    allowed = _allowed(model_dir)
    files: dict[str, Path] = {}
    unknown: list[str] = []
    for root, dirs, names in os.walk(model_dir):
        here = Path(root)
        for name in sorted(dirs) + sorted(names):
            path = here / name
            rel = path.relative_to(model_dir).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                what = f"a symlink to {os.readlink(path)}" if stat.S_ISLNK(mode) else "not a regular file"
                raise HftlError(
                    f"{path} is {what}: hftl push uploads only regular files it wrote, never a link or device "
                    "(it could expose a token or key). Remove it, or replace a link with a copy of a file "
                    "hftl wrote, then push again."
                )
            if stat.S_ISDIR(mode):
                if _matches(rel + "/", IGNORE_PATTERNS) or _matches(rel + "/x", IGNORE_PATTERNS):
                    dirs.remove(name)
            elif _matches(rel, IGNORE_PATTERNS + LOCAL_FILES):
                continue
            elif allowed(rel):
                files[rel] = path
            else:
                unknown.append(rel)
    if unknown and not skip_unknown:
        more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:6])})" if len(unknown) > 1 else ""
        raise HftlError(
            f"{model_dir / unknown[0]}{more} was not written by hftl, so `hftl push` will not upload it (it "
            f"uploads only {ALLOWED_SUMMARY}). Move it out of the model folder, or pass --skip-unknown to push "
            "without it."
        )
    if unknown:
        logger.warning("Not uploaded (not written by hftl): %s", ", ".join(unknown))
    return files


# What `hftl push` uploads, for messages (the rules are _allowed's).
ALLOWED_SUMMARY = (
    f"{META_FILE}, config.yaml, head.safetensors, metrics.json, tasks.json, tasks/<task>.safetensors, "
    "README.md, plots/*.png and the transformers/peft/processor files save_pretrained writes in encoder/"
)


def _allowed(model_dir: Path) -> Callable[[str], bool]:
    """The allow-list of a model directory, from what hftl's writers put there.

    ``hftl.models.io.save_model`` (the top-level files and ``encoder/``), ``hftl.models.multitask``
    (``tasks.json``, ``tasks/<task>.safetensors`` for the tasks it lists) and the card (README, plots).
    """
    from hftl.models.multitask import TASKS_FILE

    top = {META_FILE, "config.yaml", "head.safetensors", "metrics.json", TASKS_FILE, CARD_FILE}
    tasks = {f"tasks/{name}.safetensors" for name in _task_names(model_dir / TASKS_FILE)}
    encoder = encoder_files(model_dir / "encoder")

    def allowed(rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        return (
            (not folder and name in top)
            or rel in tasks
            or (folder == PLOTS_DIRNAME and bool(PLOT_FILE.fullmatch(name)))
            or (folder == "encoder" and name in encoder)
        )

    return allowed


def encoder_files(encoder_dir: Path) -> set[str]:
    """The file names ``save_pretrained`` writes into ``encoder/``: model, peft adapter and processor.

    The names are transformers' and peft's own constants; a tokenizer's vocabulary files are those its
    class declares (``vocab_files_names`` of the ``tokenizer_class`` in ``tokenizer_config.json``).
    """
    from peft.utils import CONFIG_NAME as ADAPTER_CONFIG
    from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS
    from transformers import tokenization_utils_base as tok
    from transformers import utils

    names = {
        utils.CONFIG_NAME, utils.SAFE_WEIGHTS_NAME, utils.SAFE_WEIGHTS_INDEX_NAME, utils.GENERATION_CONFIG_NAME,
        utils.FEATURE_EXTRACTOR_NAME, utils.IMAGE_PROCESSOR_NAME, utils.PROCESSOR_NAME, utils.CHAT_TEMPLATE_FILE,
        tok.TOKENIZER_CONFIG_FILE, tok.FULL_TOKENIZER_FILE, tok.SPECIAL_TOKENS_MAP_FILE, tok.ADDED_TOKENS_FILE,
        ADAPTER_CONFIG, ADAPTER_WEIGHTS,
    }  # fmt: skip
    if encoder_dir.is_dir():  # sharded weights, as the index names them
        names |= {
            p.name
            for p in encoder_dir.glob("model-*-of-*.safetensors")
            if re.fullmatch(r"model-\d+-of-\d+\.safetensors", p.name)
        }
    return names | _vocab_files(encoder_dir / tok.TOKENIZER_CONFIG_FILE)


def _vocab_files(tokenizer_config: Path) -> set[str]:
    """``vocab_files_names`` of the tokenizer class a saved tokenizer names (a transformers class only)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        name = json.loads(tokenizer_config.read_text()).get("tokenizer_class")
        cls = tokenizer_class_from_name(name) if isinstance(name, str) else None
    except (OSError, ValueError, AttributeError, ImportError):
        return set()
    files = getattr(cls, "vocab_files_names", None) or {}
    return {v for v in files.values() if isinstance(v, str) and "/" not in v}


def _task_names(tasks_file: Path) -> list[str]:
    try:
        tasks = json.loads(tasks_file.read_text()).get("tasks", []) if tasks_file.is_file() else []
        return [str(t["name"]) for t in tasks if "/" not in str(t["name"])]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return []


def _matches(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _check_arguments(repo_id: str, revision: str | None, create_pr: bool) -> None:
    if not HUB_REPO.match(repo_id) or ".." in repo_id:
        raise HftlError(
            f"--repo-id {repo_id!r} is not a Hub repo id: use user/name or org/name (letters, digits, `-`, "
            "`_`, `.`)."
        )
    if create_pr and revision:
        raise HftlError(
            f"--revision {revision!r} and --create-pr cannot be combined: a pull request always targets the "
            "default branch. Drop one of them."
        )


def _check_hub_access() -> None:
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HftlError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (or set it to 0) to push.")
    if get_token() is None:
        raise HftlError(
            "No Hugging Face token found. Run `hf auth login` or set the HF_TOKEN environment variable to a "
            "token with write access, then push again."
        )


def _stage_card(model_dir: Path, tmp: Path, repo_id: str, files: dict[str, Path]) -> bool:
    """Renders the card into ``tmp`` and points ``files`` at it, unless the user's README is to be kept."""
    from hftl.hub.card import stage_card

    if card_state(model_dir) == "edited":
        logger.warning(
            "%s was edited after hftl wrote it (or hftl did not write it): uploading it unchanged. "
            "`hftl card %s --force` replaces it with a freshly rendered card.",
            model_dir / CARD_FILE,
            model_dir,
        )
        return False
    written = stage_card(model_dir, tmp, repo_id=repo_id)
    for rel in [r for r in files if r == CARD_FILE or r.startswith(f"{PLOTS_DIRNAME}/")]:
        del files[rel]  # the previous card's files: the fresh card replaces them
    files.update({rel: tmp / rel for rel in written})
    return True


def _upload(
    files: dict[str, Path],
    repo_id: str,
    *,
    private: bool,
    revision: str | None,
    create_pr: bool,
    message: str,
) -> str:
    """Creates the repo (and branch) and commits exactly ``files``; Hub errors become one-line HftlErrors."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    operations = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in sorted(files.items())
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id, operations=operations, commit_message=message, revision=revision, create_pr=create_pr
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = {
            401: "the token is invalid or expired: run `hf auth login` again",
            403: "the token cannot write to this namespace: use a write token, or a repo id under your user",
            404: "the repo or revision was not found: check --repo-id and --revision",
        }.get(status, "check --repo-id, your network and the Hub status")
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise HftlError(f"Pushing to {repo_id!r} failed (HTTP {status}: {reason}); {hint}.") from None
    except _network_errors() as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0] or type(err).__name__
        raise HftlError(
            f"Pushing to {repo_id!r} failed: the Hub endpoint {constants.ENDPOINT} cannot be reached "
            f"({type(err).__name__}: {reason}). Check your network connection, proxy and the HF_ENDPOINT "
            "environment variable (unset it for huggingface.co), then push again; nothing was changed locally."
        ) from None
    return info.pr_url or info.commit_url


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP clients huggingface_hub versions use (and the OS's)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (
        ("httpx2", ("TransportError", "TimeoutException")),
        ("httpx", ("TransportError", "TimeoutException")),
        ("requests.exceptions", ("ConnectionError", "Timeout")),
        ("urllib3.exceptions", ("HTTPError",)),
    ):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(found)


# Never downloaded for loading: pickles (hftl loads safetensors only) and, unless the caller trusts remote
# code, Python files (fnmatch's `*` also matches `/`, so these cover every folder).
PUSH_KEYS = ("repo_id", "private", "revision", "create_pr", "commit_message")


def push_from_config(node: Any, output_dir: str | Path) -> str:
    """Pushes a finished run as a recipe config's ``push_to_hub: {repo_id: ..., private: true}`` asks.

    Raises:
        ConfigError: the node is not a mapping with ``repo_id`` and only the keys of :func:`push_to_hub`.
    """
    from omegaconf import OmegaConf

    args = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    unknown = sorted(set(args) - set(PUSH_KEYS)) if isinstance(args, dict) else []
    if not isinstance(args, dict) or "repo_id" not in args or unknown:
        raise ConfigError(
            f"`push_to_hub` must be a mapping with `repo_id` and optionally {', '.join(PUSH_KEYS[1:])}; got "
            f"{args!r}{f' (unknown keys {unknown})' if unknown else ''}. The model is saved: push it with "
            f"`hftl push {output_dir} --repo-id user/name`."
        )
    return push_to_hub(output_dir, **args)
