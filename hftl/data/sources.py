"""Reading a data source into a raw ``datasets.DatasetDict`` (before columns are standardised).

Sources: packaged builders (csv/json/parquet/audiofolder/imagefolder) with ``data_files``, a single
local file, a folder (audio/images or a Blitzer domain), ``hftl:`` built-ins, or a Hub dataset id.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import datasets

from hftl.data.audio import AUDIO_EXTENSIONS
from hftl.data.blitzer import is_blitzer_domain, read_blitzer_splits
from hftl.data.builtin import PREFIX as BUILTIN_PREFIX
from hftl.data.builtin import load_builtin
from hftl.errors import ConfigError, DataError, HftlError

logger = logging.getLogger(__name__)

PACKAGED_BUILDERS = ("csv", "json", "parquet", "audiofolder", "imagefolder")
TABULAR_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
)
_LOCAL_HINT = (
    "To use local data instead, set `data.path` to a .csv/.tsv/.jsonl/.parquet file or a folder, or "
    "`data.path: csv` with `data.data_files: {train: train.csv, test: test.csv}`."
)


def flat_files(files: str | list | dict | None) -> list[str]:
    """Every file name in a ``data_files`` value (a name, a list, or ``{split: name or list}``)."""
    files = list(files.values()) if isinstance(files, dict) else [files] if isinstance(files, str) else files
    return [str(n) for x in files or [] for n in ([x] if isinstance(x, str) else x)]


def read_source(
    path: str,
    *,
    data_files: str | list[str] | dict[str, str | list[str]] | None = None,
    name: str | None = None,
    revision: str | None = None,
    seed: int = 42,
    delimiter: str | None = None,
    trust_remote_code: bool = False,
    streaming: bool = False,
) -> tuple[datasets.DatasetDict | datasets.IterableDatasetDict, dict[str, Path]]:
    """Reads the source splits of ``path`` as ``datasets`` loaded them (arguments as in ClassificationData).

    Returns:
        The source splits (``IterableDataset`` splits read lazily when ``streaming``), and per split the
        folder that relative media paths are resolved against.

    Raises:
        DataError: if a file or folder is missing or unreadable, or the Hub cannot be reached.
        ConfigError: if a builder is named without ``data_files``, or ``streaming`` is asked of a source
            that is parsed into memory (``hftl:`` built-ins, Blitzer domains).
    """
    in_memory = (
        path.startswith(BUILTIN_PREFIX) or path == "blitzer" or is_blitzer_domain(Path(path).expanduser())
    )
    if streaming and in_memory:
        raise ConfigError(
            f"`data.streaming` is true, but `data.path` {path} is a data set hftl parses into memory (a "
            "built-in or a Blitzer domain); stream files or Hub datasets instead, or set `data.streaming: false`."
        )
    if path.startswith(BUILTIN_PREFIX):
        return load_builtin(path, seed=seed), {}
    if path == "blitzer":
        return read_blitzer_splits(data_files), {}
    if path in PACKAGED_BUILDERS:
        return _read_builder(path, data_files, delimiter, streaming=streaming)
    local = Path(path).expanduser()
    if local.is_file():
        builder = TABULAR_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise DataError(
                f"`data.path` {path}: unsupported file type {local.suffix!r}; allowed: "
                f"{', '.join(TABULAR_BUILDERS)}, or a folder / builder name."
            )
        dd = _load(builder, delimiter, data_files={"train": str(local)}, streaming=streaming)
        return dd, {"train": local.resolve().parent}
    if local.is_dir():
        return _read_folder(local, data_files, delimiter, streaming=streaming)
    if local.suffix.lower() in TABULAR_BUILDERS or path.startswith(("/", ".", "~")):
        raise DataError(
            f"`data.path`: file or folder not found: {path} (absolute: {local.resolve()}). "
            "Check the path; relative paths are resolved from the current directory."
        )
    return _read_hub(
        path, data_files=data_files, name=name, revision=revision, trust_remote_code=trust_remote_code,
        streaming=streaming,
    ), {}  # fmt: skip


def _read_folder(
    folder: Path, data_files, delimiter: str | None, *, streaming: bool = False
) -> tuple[datasets.DatasetDict, dict[str, Path]]:
    if is_blitzer_domain(folder):
        return read_blitzer_splits(str(folder)), {}
    suffixes = {p.suffix.lower() for p in folder.rglob("*") if p.is_file()}
    if suffixes & AUDIO_EXTENSIONS:
        return _load("audiofolder", delimiter, data_dir=str(folder), streaming=streaming), {}
    if suffixes & IMAGE_EXTENSIONS:
        return _load("imagefolder", delimiter, data_dir=str(folder), streaming=streaming), {}
    builders = {TABULAR_BUILDERS[s] for s in suffixes if s in TABULAR_BUILDERS}
    if len(builders) != 1:
        raise DataError(
            f"`data.path` folder {folder}: cannot tell the data format from its file types "
            f"{sorted(suffixes) or 'none'}; expected audio, image, Blitzer .review files or one of "
            f"{', '.join(TABULAR_BUILDERS)}. Set `data.path` to a builder name and `data.data_files`."
        )
    dd = _load(builders.pop(), delimiter, data_dir=str(folder), data_files=data_files, streaming=streaming)
    return dd, {split: folder.resolve() for split in dd}


def _read_builder(
    builder: str, files, delimiter: str | None, *, streaming: bool = False
) -> tuple[datasets.DatasetDict, dict[str, Path]]:
    if files is None:
        raise ConfigError(
            f"`data.data_files` is missing for `data.path: {builder}`; give a file, a list "
            "or {split: files}" + (", or a folder." if builder.endswith("folder") else ".")
        )
    folders = {}
    for split, value in (files if isinstance(files, dict) else {"train": files}).items():
        for f in flat_files(value):
            if not any(c in f for c in "*?[") and not Path(f).expanduser().exists():
                raise DataError(
                    f"`data.data_files` ({split}): file not found: {f} (absolute: "
                    f"{Path(f).expanduser().resolve()})."
                )
            folders.setdefault(split, Path(f).expanduser().resolve().parent)
    if builder.endswith("folder") and isinstance(files, str) and Path(files).is_dir():
        return _load(builder, delimiter, data_dir=files, streaming=streaming), {}
    return _load(builder, delimiter, data_files=files, streaming=streaming), folders


def _load(builder: str, delimiter: str | None, **kwargs) -> datasets.DatasetDict:
    """``datasets.load_dataset`` for a local builder, with csv options and errors naming the files."""
    if builder == "csv":
        names = flat_files(kwargs.get("data_files"))
        names += [str(p) for p in Path(kwargs.get("data_dir") or "/nonexistent").glob("*.tsv")]
        delimiter = delimiter or ("\t" if any(n.lower().endswith(".tsv") for n in names) else ",")
        # "NA"/"null" are real words in reviews: only an empty field is missing; tsv fields are unquoted.
        kwargs.update(delimiter=delimiter, keep_default_na=False, na_values=[""])
        if delimiter == "\t":
            kwargs["quoting"] = 3  # csv.QUOTE_NONE, as GLUE/SST-2 files need
    try:
        return datasets.load_dataset(builder, **kwargs)
    except HftlError:
        raise
    except Exception as err:
        where = kwargs.get("data_files") or kwargs.get("data_dir")
        if "corresponds to no data" in str(err):  # header-only file: datasets finds no rows
            raise DataError(
                f"Empty split in {where}: {err} (0 rows). Add rows or map another split with `data.splits`."
            ) from err
        if type(err).__name__ == "DatasetGenerationCastError" and isinstance(where, dict):
            raise DataError(_column_mismatch(where, kwargs.get("delimiter") or ",")) from err
        if isinstance(where, dict) and (empty := _empty_files(where)):
            raise DataError(
                f"`data.data_files`: {', '.join(empty)} is empty (0 bytes). Fix: point it at a file with "
                "a header and rows, or remove that split."
            ) from err
        cause = err
        while cause is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise DataError(
                f"Cannot read {where}: not UTF-8 text ({cause.reason} at byte {cause.start}). Fix: re-save "
                "the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)."
            ) from err
        raise DataError(
            f"Cannot read {where} with the `{builder}` builder: {type(err).__name__}: {err}"
        ) from err


def _read_hub(path: str, *, trust_remote_code: bool, **kwargs) -> datasets.DatasetDict:
    if trust_remote_code:
        if "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters:
            kwargs["trust_remote_code"] = True
        else:
            logger.warning(
                "`data.trust_remote_code` ignored: datasets %s runs no loading scripts.", datasets.__version__
            )
    try:
        dd = datasets.load_dataset(path, **kwargs)
    except Exception as err:
        raise DataError(
            f"`data.path` {path!r} is not a local file or folder and loading it from the "
            f"Hugging Face Hub failed ({type(err).__name__}: {err}): the Hub cannot be reached "
            f"(offline?) or the dataset id was not found. {_LOCAL_HINT}"
        ) from err
    if not isinstance(dd, datasets.DatasetDict | datasets.IterableDatasetDict):
        raise DataError(f"`data.path` {path!r} returned {type(dd).__name__}, expected splits.")
    return dd


def _column_mismatch(files: dict, delimiter: str) -> str:
    """Names the columns of each split's file when they differ (datasets reports only a cast error)."""
    import csv

    headers = {}
    for split, paths in files.items():
        path = paths[0] if isinstance(paths, list | tuple) else paths
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as fh:
                headers[split] = (path, next(csv.reader(fh, delimiter=delimiter), []))
        except OSError:
            headers[split] = (path, ["?"])
    listing = "; ".join(f"{split} ({path}): {cols}" for split, (path, cols) in headers.items())
    return (
        f"The files of `data.data_files` do not have the same columns: {listing}. Fix: give every split "
        "the same header (e.g. rename the text column), or load the files as separate data configs."
    )


def _empty_files(files: dict) -> list[str]:
    paths = [p for v in files.values() for p in (v if isinstance(v, list | tuple) else [v])]
    return [str(p) for p in paths if Path(str(p)).is_file() and Path(str(p)).stat().st_size == 0]
