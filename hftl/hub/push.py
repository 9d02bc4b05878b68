"""Upload a model directory to the Hugging Face Hub, and download one back for ``hftl.load``.

The token comes from huggingface_hub's own sources (``HF_TOKEN``, ``hf auth login``); hftl never reads,
prints, logs or writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftl.errors import ConfigError, HftlError, ModelLoadError
from hftl.models.io import find_model_dir

# Never uploaded: training state, caches, editor/OS junk, and the placeholder card peft writes in encoder/.
IGNORE_PATTERNS = [
    "checkpoints/**", "checkpoint-*/**", "**/checkpoints/**", "runs/**", "**/__pycache__/**", ".cache/**",
    "**/.cache/**", "*.tmp", "**/*.tmp", "optimizer.bin", "**/optimizer.bin", "scheduler.bin",
    "**/scheduler.bin", "random_states_*.pkl", "**/random_states_*.pkl", "**/.ipynb_checkpoints/**",
    "**/.DS_Store", "encoder/README.md",
]  # fmt: skip


def push_to_hub(
    output_dir: str | Path,
    *,
    repo_id: str,
    private: bool = True,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    render: bool = True,
) -> str:
    """Renders the card and uploads ``OUTPUT_DIR/model`` to the Hub repo ``repo_id``; returns its URL.

    Args:
        output_dir: the ``output_dir`` of a finished ``hftl run`` (or its ``model/`` folder).
        repo_id: ``user/name`` or ``org/name``; created when missing.
        private: visibility of a newly created repo (an existing repo keeps its visibility).
        revision: branch to commit to (created from the default branch when missing).
        create_pr: open a pull request against the default branch instead of committing to it.
        commit_message: the commit title; default "Upload <folder> with hftl".
        render: (re)write ``README.md`` and the plots first, with ``repo_id`` in the loading example.

    Returns:
        The URL of the commit, or of the pull request with ``create_pr``.

    Raises:
        HftlError: bad arguments, offline mode, no token, or the Hub refused the upload.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = find_model_dir(Path(output_dir)) if Path(output_dir).exists() else None
    if model_dir is None:
        raise HftlError(
            f"{str(output_dir)!r} does not exist: pass the `output_dir` of a finished `hftl run`."
        )
    if create_pr and revision:
        raise HftlError(
            f"--revision {revision!r} and --create-pr cannot be combined: a pull request always targets the "
            "default branch. Drop one of them."
        )
    if constants.HF_HUB_OFFLINE:
        raise HftlError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (or set it to 0) to push.")
    if get_token() is None:
        raise HftlError(
            "No Hugging Face token found. Run `hf auth login` or set the HF_TOKEN environment variable to a "
            "token with write access, then push again."
        )
    if render:
        from hftl.hub.card import render_card

        render_card(model_dir, repo_id=repo_id)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=model_dir,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or f"Upload {model_dir.parent.name or model_dir.name} with hftl",
            ignore_patterns=list(IGNORE_PATTERNS),
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
    return info.pr_url or info.commit_url


# Never downloaded for loading: pickles (hftl loads safetensors only) and, unless the caller trusts remote
# code, Python files (fnmatch's `*` also matches `/`, so these cover every folder).
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib", "*.npy", "*.npz"]


def download_model(repo_id: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Path:
    """Downloads (or reuses the cached copy of) a Hub model repo pushed by hftl; returns its local folder.

    The folder is ``.../snapshots/<commit sha>``: the commit actually downloaded, which callers pin.

    Args:
        repo_id: ``user/name``.
        revision: branch, tag or commit (default: the default branch).
        trust_remote_code: also download ``.py`` files (skipped otherwise: nothing could import them).

    Raises:
        ModelLoadError: the repo cannot be downloaded.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    ignore = [*IGNORE_PATTERNS, *PICKLE_PATTERNS, *([] if trust_remote_code else ["*.py"])]
    try:
        path = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=ignore))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        at = f" at revision {revision!r}" if revision else ""
        raise ModelLoadError(
            f"Downloading the Hub model {repo_id!r}{at} failed: {reason}. Check the repo id and revision "
            "(log in with `hf auth login` for private repos; unset HF_HUB_OFFLINE when it is not cached yet)."
        ) from None
    return path


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
