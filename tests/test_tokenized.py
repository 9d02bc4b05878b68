"""Pre-tokenized text splits (hftl.data.tokenized): datasets' cache reused and invalidated, collator parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from helpers import base_config, dump, write_text_csv

from hftl.cli import main as hftl
from hftl.data import ClassificationData, text_lengths
from hftl.data.tokenized import pretokenize, pretokenize_splits, tokenized_cache_file
from hftl.encoders import TextCollator
from hftl.errors import DataError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "good", "bad"]
TEXTS = ["a b c good", "bad", "good good good a b c a b c bad", "c"]


def save_tokenizer(path: Path, vocab: list[str] = VOCAB) -> str:
    """A word-piece tokenizer over ``vocab`` saved to ``path`` (loadable in another process)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(vocab=str(path / "vocab.txt")).save_pretrained(path)
    return str(path)


@pytest.fixture
def tok_dir(tmp_path: Path) -> str:
    return save_tokenizer(tmp_path / "tok")


def load_csv(path: Path, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset("csv", data_files=str(path), cache_dir=str(cache))["train"]


def write_csv(path: Path, texts: list[str]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(texts)))
    return path


# Run in a fresh interpreter: the same csv, tokenizer and max_length must find the first run's file.
FRESH = """
import datasets, json, sys, transformers
from hftl.data.tokenized import pretokenize, tokenized_cache_file
csv, cache, tok_dir = sys.argv[1:]
ds = datasets.load_dataset("csv", data_files=csv, cache_dir=cache)["train"]
tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
path = tokenized_cache_file(ds, tok, max_length=8)
existed = path.exists()
out = pretokenize(ds, tok, max_length=8)
print(json.dumps({"path": str(path), "existed": existed, "file": out.cache_files[0]["filename"],
                  "ids": list(out["input_ids"])}))
"""


def test_cache_written_next_to_the_data_and_reused_by_a_fresh_process(tmp_path, tok_dir):
    csv, cache = write_csv(tmp_path / "d.csv", TEXTS), tmp_path / "hf"
    ds, tok = load_csv(csv, cache), transformers.AutoTokenizer.from_pretrained(tok_dir)
    path = tokenized_cache_file(ds, tok, max_length=8)
    assert not path.exists() and path.parent == Path(ds.cache_files[0]["filename"]).parent
    out = pretokenize(ds, tok, max_length=8)
    assert out.cache_files[0]["filename"] == str(path) and path.is_file()
    assert out.column_names == ["label", "input_ids", "token_type_ids", "attention_mask"]
    assert out["input_ids"][0] == [2, 5, 6, 7, 8, 3] and max(map(len, out["input_ids"])) == 8  # truncated
    written = path.stat()
    again = pretokenize(load_csv(csv, cache), tok, max_length=8)  # second call, same process
    assert again.cache_files[0]["filename"] == str(path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(csv), str(cache), tok_dir],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["existed"] and fresh["path"] == fresh["file"] == str(path)  # same fingerprint, same file
    assert fresh["ids"] == list(out["input_ids"])
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (
        written.st_mtime_ns,
        written.st_ino,
    )  # not rewritten


def test_cache_invalidated_by_max_length_tokenizer_and_data(tmp_path, tok_dir):
    csv, cache = write_csv(tmp_path / "d.csv", TEXTS), tmp_path / "hf"
    ds, tok = load_csv(csv, cache), transformers.AutoTokenizer.from_pretrained(tok_dir)
    base = tokenized_cache_file(ds, tok, max_length=8)
    pretokenize(ds, tok, max_length=8)
    assert tokenized_cache_file(ds, tok, max_length=8) == base  # deterministic
    assert tokenized_cache_file(ds, tok, max_length=4) != base
    assert max(map(len, pretokenize(ds, tok, max_length=4)["input_ids"])) == 4  # not the L=8 file
    # Another vocabulary (same words, other ids): other token ids, another file.
    other = transformers.AutoTokenizer.from_pretrained(save_tokenizer(tmp_path / "tok2", VOCAB[::-1]))
    assert tokenized_cache_file(ds, other, max_length=8) != base
    assert pretokenize(ds, other, max_length=8)["input_ids"][1] == [VOCAB[::-1].index(w) for w in ("[CLS]", "bad", "[SEP]")]  # fmt: skip
    # Same vocabulary, other normalization (no lower-casing): another file too.
    cased = transformers.BertTokenizer(vocab=str(Path(tok_dir) / "vocab.txt"), do_lower_case=False)
    assert tokenized_cache_file(ds, cased, max_length=8) != base
    # Changed rows of the csv (datasets hashes the file's path and modification time): new data, new file.
    write_csv(csv, ["bad bad", *TEXTS[1:]])
    os.utime(csv, ns=(csv.stat().st_atime_ns, csv.stat().st_mtime_ns + 10**9))
    changed = load_csv(csv, cache)
    assert tokenized_cache_file(changed, tok, max_length=8) != base
    assert pretokenize(changed, tok, max_length=8)["input_ids"][0] == [2, 9, 9, 3]
    # In-memory data (no Arrow file of its own): a hftl folder, keyed by the rows' content.
    mem = datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0, 1]})
    mem2 = datasets.Dataset.from_dict({"text": TEXTS[::-1], "label": [0, 1, 0, 1]})
    assert tokenized_cache_file(mem, tok, max_length=8, cache_dir=tmp_path / "c").parent == tmp_path / "c"
    assert tokenized_cache_file(mem, tok, max_length=8) != tokenized_cache_file(mem2, tok, max_length=8)
    out = pretokenize(mem, tok, max_length=8, cache_dir=tmp_path / "c")
    assert Path(out.cache_files[0]["filename"]).parent == tmp_path / "c"


def test_pretokenized_rows_collate_like_raw_text(tmp_path, tiny_models):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_models["bert"])
    long = " ".join(["the movie was a gorgeous witty film"] * 6)  # longer than max_length: truncated
    raw = datasets.Dataset.from_dict({"text": [*TEXTS, long], "label": [0, 1, 1, 0, 1]})
    tokenized = pretokenize(raw, tok, max_length=12, cache_dir=tmp_path)
    collate = TextCollator(tok, max_length=12)
    for rows in ([0, 1], [2, 4, 3], [4]):
        a, b = collate([tokenized[i] for i in rows]), collate([raw[i] for i in rows])
        assert sorted(a) == sorted(b) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
        for key in b:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert (
        text_lengths(tokenized)
        == [len(x) for x in tokenized["input_ids"]]
        != [len(t.split()) for t in raw["text"]]
    )
    assert text_lengths(tokenized)[-1] == 12 and text_lengths(raw)[-1] == 42  # tokens vs words
    assert text_lengths([tokenized[0]]) == [len(tokenized[0]["input_ids"])]
    with pytest.raises(DataError, match="max_length"):  # tokenized for a longer max_length
        TextCollator(tok, max_length=8)([tokenized[4]])


def test_streaming_data_is_tokenized_lazily(tmp_path, tok_dir):
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    raw = datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0, 1]})
    splits = pretokenize_splits(
        {"train": raw.to_iterable_dataset()}, tok, max_length=8, cache_dir=tmp_path / "c"
    )
    stream = splits["train"]
    assert isinstance(splits, datasets.IterableDatasetDict) and isinstance(stream, datasets.IterableDataset)
    assert not (tmp_path / "c").exists()  # nothing cached
    rows = list(stream)
    assert [r["input_ids"] for r in rows] == pretokenize(raw, tok, max_length=8, cache_dir=tmp_path / "c")["input_ids"][:]  # fmt: skip
    assert "text" not in rows[0] and [r["label"] for r in rows] == [0, 1, 0, 1]
    assert torch.equal(TextCollator(tok, max_length=8)(rows)["input_ids"], TextCollator(tok, max_length=8)(raw.to_list())["input_ids"])  # fmt: skip


def test_missing_text_column_is_a_data_error(tok_dir):
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    with pytest.raises(DataError, match="'sentence'.*pretokenize=false"):
        pretokenize(datasets.Dataset.from_dict({"text": ["a"]}), tok, max_length=8, input_column="sentence")


def test_finetune_same_losses_with_and_without_pretokenizing(tmp_path, tiny_models):
    files = {s: str(write_text_csv(tmp_path / f"{s}.csv", n, i)) for i, (s, n) in enumerate([("train", 32), ("validation", 16), ("test", 16)])}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 8}
    metrics = {}
    for on in (True, False):
        out = tmp_path / f"out_{on}"
        cfg = base_config(enc, {"path": "csv", "data_files": files}, out, epochs=2, group_by_length=False)
        cfg["encoder"] = {**enc, "pretokenize": on}
        assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / f"cfg_{on}.yaml")]) == 0
        metrics[on] = json.loads((out / "metrics.json").read_text())
    splits = ClassificationData(path="csv", data_files=files).load()  # what the recipe tokenized
    tok = transformers.AutoTokenizer.from_pretrained(tiny_models["bert"])
    assert all(tokenized_cache_file(ds, tok, max_length=8).is_file() for ds in splits.values())
    on, off = metrics[True], metrics[False]
    assert on["steps"] == off["steps"] == 8
    assert on["test"]["loss"] == pytest.approx(off["test"]["loss"], rel=1e-6)
    assert [h["eval_loss"] for h in on["history"]] == pytest.approx([h["eval_loss"] for h in off["history"]], rel=1e-6)  # fmt: skip
    assert on["test"]["accuracy"] == off["test"]["accuracy"]
    # Length-grouped batches are built from token counts with pre-tokenized data (word counts otherwise).
    cfg = base_config(cfg["encoder"] | {"pretokenize": True}, {"path": "csv", "data_files": files}, tmp_path / "g", epochs=1)  # fmt: skip
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "g.yaml")]) == 0
