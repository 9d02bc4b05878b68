"""Per-example lengths, for length-grouped batching (``train.group_by_length``), read without decoding.

:func:`text_lengths` counts tokens (or the stored token ids of a pre-tokenized split); :func:`audio_lengths`
reads each audio file's header only.

Example:
    >>> text_lengths([{"text": "a b c"}, {"text": "d"}])
    [3, 1]
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from hftl.data.tokenized import is_pretokenized
from hftl.errors import DataError


def text_lengths(dataset: Iterable[dict], tokenizer=None, *, batch_size: int = 1000) -> list[int]:
    """Per-example lengths of ``text``, for length-grouped sampling.

    Pre-tokenized data (an ``input_ids`` column, see :mod:`hftl.data.tokenized`) gives its real token
    counts (after truncation), whatever ``tokenizer`` is.

    Args:
        dataset: a ``datasets.Dataset`` (or any sequence of dicts) with a ``text`` or ``input_ids`` column.
        tokenizer: count tokens (special tokens included) with it; None counts whitespace-separated words.
        batch_size: texts tokenized per call.

    Returns:
        One length per example, in dataset order.
    """
    if is_pretokenized(dataset):
        import pyarrow.compute as pc

        return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()
    if hasattr(dataset, "with_format"):
        texts = dataset.with_format("arrow")["text"].to_pylist()
    else:
        rows = list(dataset)
        if rows and "input_ids" in rows[0]:
            return [len(ex["input_ids"]) for ex in rows]
        texts = [ex["text"] for ex in rows]
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    lengths = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start : start + batch_size], truncation=False)["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths


def audio_lengths(dataset: Iterable[dict], *, sampling_rate: int = 16_000) -> list[int]:
    """Per-example lengths of ``audio`` in samples at ``sampling_rate``, for length-grouped sampling.

    Reads only each file's header (``soundfile.info``): nothing is decoded.

    Args:
        dataset: a ``datasets.Dataset`` (or any sequence of dicts) with an undecoded ``audio`` column
            (paths or ``{"path", "bytes"}`` items).
        sampling_rate: the rate the clips will be decoded at (the encoder's).

    Returns:
        One length per example, in dataset order: ``ceil(frames × sampling_rate / file_rate)``.

    Raises:
        DataError: naming a file that is missing or whose header cannot be read.
    """
    import soundfile as sf

    if hasattr(dataset, "with_format"):
        items = dataset.with_format("arrow")["audio"].to_pylist()
    else:
        items = [ex["audio"] for ex in dataset]
    lengths = []
    for item in items:
        if isinstance(item, dict):
            name = item.get("path") or "<in-memory audio bytes>"
            source = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
        else:
            name = source = item
        try:
            info = sf.info(source)
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise DataError(
                f"Cannot read the header of audio file {name}: {err}. Fix or remove the file (group_by_length "
                "reads every training clip's duration)."
            ) from err
        lengths.append(-(-int(info.frames) * sampling_rate // int(info.samplerate)))
    return lengths
