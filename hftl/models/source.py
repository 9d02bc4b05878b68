"""Where a saved model comes from: a local directory, or a Hub repo named explicitly.

A path is local unless it says otherwise: ``hf://user/name`` (optionally ``@revision``: a branch, tag or
commit) or ``from_hub=True`` (``--from-hub`` on the command line) name a Hub repo. A local path that does
not exist is an error, never a Hub lookup, so a typo or a run that has not finished cannot fetch and load
a stranger's repo. A Hub model is pinned: :class:`ModelSource` records the commit that was downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hftl.errors import ModelLoadError
from hftl.outputs import MODEL_META_FILE

MODEL_DIRNAME = "model"
META_FILE = MODEL_META_FILE
HUB_PREFIX = "hf://"
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # user/name
HUB_MODEL_ID = re.compile(
    r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$"
)  # base models: also `bert-base-uncased`
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Never uploaded (hftl.hub.push) nor downloaded: training state, caches, editor/OS junk, and the placeholder
# card peft writes in encoder/.
IGNORE_PATTERNS = [
    "checkpoints/**", "checkpoint-*/**", "**/checkpoints/**", "runs/**", "**/__pycache__/**", ".cache/**",
    "**/.cache/**", "*.tmp", "**/*.tmp", "optimizer.bin", "**/optimizer.bin", "scheduler.bin",
    "**/scheduler.bin", "random_states_*.pkl", "**/random_states_*.pkl", "**/.ipynb_checkpoints/**",
    "**/.DS_Store", "encoder/README.md",
]  # fmt: skip


@dataclass(frozen=True)
class ModelSource:
    """A resolved model directory; ``repo_id`` and ``revision`` (the commit sha) when it came from the Hub."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        if self.repo_id is None:
            return str(self.path)
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def is_hub_source(path: str | Path) -> bool:
    """True for an explicit ``hf://`` reference (a string; a ``Path`` is always local)."""
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_reference(text: str, revision: str | None = None) -> tuple[str, str | None]:
    """``"hf://user/name@rev"`` (or ``"user/name"`` with ``--from-hub``) -> ``("user/name", "rev")``.

    Raises:
        ModelLoadError: not a ``user/name`` repo id, or two different revisions.
    """
    ref = text[len(HUB_PREFIX) :] if text.startswith(HUB_PREFIX) else text
    repo_id, at, pinned = ref.partition("@")
    if not HUB_REPO_ID.match(repo_id) or ".." in repo_id or (at and not pinned):
        raise ModelLoadError(
            f"{text!r} is not a Hub model reference: use hf://user/name or hf://user/name@revision "
            "(a branch, tag or commit)."
        )
    if pinned and revision and pinned != revision:
        raise ModelLoadError(
            f"{text!r} pins revision {pinned!r} but --revision is {revision!r}; give the revision once."
        )
    return repo_id, pinned or revision


def find_model_dir(path: str | Path) -> Path:
    """The hftl model directory at a local ``path``: a run's ``output_dir`` (holding ``model/``) or ``model/``.

    Raises:
        ModelLoadError: the path does not exist (with the Hub syntax, in case a repo was meant) or holds
            no ``hftl_model.json``.
    """
    if is_hub_source(path):
        raise ModelLoadError(f"{path!r} is a Hub reference; load it with hftl.load / --from-hub.")
    path = Path(path)
    for candidate in (path, path / MODEL_DIRNAME):
        if (candidate / META_FILE).is_file():
            return candidate
    if not path.exists():
        if HUB_REPO_ID.match(path.as_posix()):  # shaped like a Hub id: say how to ask for one
            raise ModelLoadError(
                f"Model directory {str(path)!r} does not exist; did you mean hf://{path.as_posix()} or --from-hub? "
                "(A Hub model is loaded only when named explicitly; a local path is never looked up on the Hub.)"
            )
        raise ModelLoadError(
            f"Model directory {str(path)!r} does not exist. Pass the `output_dir` of a finished `hftl run` "
            "(for a Hub model: hf://user/name or --from-hub)."
        )
    raise ModelLoadError(
        f"{str(path)!r} is not an hftl model: no {META_FILE} in it or in {MODEL_DIRNAME}/. "
        "Pass the `output_dir` of a finished `hftl run` (or its model/ folder)."
    )


def resolve_source(
    path: str | Path, *, from_hub: bool = False, revision: str | None = None, trust_remote_code: bool = False
) -> ModelSource:
    """Finds the model directory ``path`` names, downloading it when (and only when) it names a Hub repo.

    Args:
        path: a local directory, or ``hf://user/name[@revision]``.
        from_hub: ``path`` is a Hub repo id (``user/name``), as ``--from-hub`` says.
        revision: Hub branch, tag or commit to download (Hub sources only).
        trust_remote_code: also download the repo's ``.py`` files (they are skipped otherwise).

    Raises:
        ModelLoadError: a missing local path, a malformed repo id, ``revision`` for a local path, or a
            failed download.
    """
    if not (from_hub or is_hub_source(path)):
        if revision is not None:
            raise ModelLoadError(
                f"`revision` = {revision!r} applies to Hub models only; for {str(path)!r} pass --from-hub "
                "(Python: from_hub=True) or write hf://user/name@revision."
            )
        return ModelSource(find_model_dir(path))
    repo_id, revision = parse_hub_reference(str(path), revision)
    folder = download_model(repo_id, revision=revision, trust_remote_code=trust_remote_code)
    sha = folder.name if _COMMIT.match(folder.name) else revision  # the cache stores snapshots/<commit>/
    try:
        model_dir = find_model_dir(folder)
    except ModelLoadError:
        raise ModelLoadError(
            f"Hub repo {repo_id!r} (revision {sha}) is not an hftl model: it has no {META_FILE}. "
            "Load it with transformers, or push an hftl run to it with `hftl push`."
        ) from None
    return ModelSource(model_dir, repo_id=repo_id, revision=sha)


# Never downloaded either: pickles (hftl reads safetensors only, and a pickle runs code when loaded).
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
