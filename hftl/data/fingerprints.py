"""Content hashes of what a processor does to raw inputs, identical in every process.

Caches that store processed data key their files on these hashes: the tokenized splits of
:mod:`hftl.data.tokenized` and the frozen-encoder features of :mod:`hftl.embeddings.cache`. A hash of
the Python object (its pickle) would differ between processes; these hash the settings that decide the
output instead, so a changed vocabulary or extractor setting gives a new key and an unchanged one reuses
the cached file.

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")  # doctest: +SKIP
    >>> key = processor_fingerprint(tokenizer)  # doctest: +SKIP
    >>> key == processor_fingerprint(AutoTokenizer.from_pretrained("bert-base-uncased"))  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def processor_fingerprint(processor: Any) -> str:
    """A hash of what a processor does to the raw inputs (tokenizer model and settings, or extractor config).

    Args:
        processor: a transformers fast or slow tokenizer, feature extractor or image processor (anything
            else is hashed by its ``repr``).

    Returns:
        32 hex characters.
    """
    parts = [type(processor).__name__]
    backend = getattr(processor, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizer: vocabulary, normalizer, pre-tokenizer, post-processor
        spec = json.loads(backend.to_str())
        for transient in ("truncation", "padding"):  # set by each call (the collator's own arguments)
            spec.pop(transient, None)
        parts += [
            json.dumps(spec, sort_keys=True),
            str(processor.padding_side),
            str(processor.truncation_side),
        ]
    elif hasattr(processor, "to_json_string"):  # feature extractor / image processor
        parts.append(processor.to_json_string())
    elif hasattr(processor, "get_vocab"):  # slow tokenizer
        parts.append(json.dumps(sorted(processor.get_vocab().items())))
    else:
        parts.append(repr(processor))
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
