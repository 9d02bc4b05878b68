"""Tests for hftl.data loading: sources, label mapping, carving, errors, Blitzer, digits, audio decoding."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf

from hftl.data import ClassificationData, LabelSpace, crop_or_pad, decode_audio, read_blitzer_domain
from hftl.data.builtin import sklearn_digits
from hftl.errors import ConfigError, DataError

DATA_DIR = Path(
    os.environ.get("HFTL_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def real_data(*parts: str) -> Path:
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set HFTL_DATA_DIR to the shared data folder)")
    return path


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_wav(
    path: Path, seconds: float, *, rate: int = 8000, channels: int = 1, value: float = 0.25
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * rate)
    sf.write(path, np.full((frames, channels), value, dtype=np.float32), rate)
    return path


@pytest.fixture
def ab_csv(tmp_path: Path) -> Path:
    """100 rows, labels 'a' x 70 and 'b' x 30, text 'row i'."""
    return write_csv(
        tmp_path / "ab.csv", "text,label", [f"row {i},{'a' if i < 70 else 'b'}" for i in range(100)]
    )


# --- tabular sources and labels ----------------------------------------------------------------------
def test_csv_string_labels_and_stratified_seeded_carve(ab_csv: Path):
    data = ClassificationData(path=str(ab_csv), validation_size=10)
    dd = data.load()
    assert list(dd) == ["train", "validation"]
    assert dd.label_names == ["a", "b"] and dd.modality == "text"
    assert dd["train"].features["label"] == datasets.ClassLabel(names=["a", "b"])
    train, val = set(dd["train"]["text"]), set(dd["validation"]["text"])
    assert len(train) == 90 and len(val) == 10 and not train & val
    assert train | val == {f"row {i}" for i in range(100)}
    assert Counter(dd["validation"]["label"]) == {0: 7, 1: 3}  # stratified: 70/30 -> 7/3
    again = ClassificationData(path=str(ab_csv), validation_size=10).load()
    assert again["validation"]["text"] == dd["validation"]["text"]
    other = ClassificationData(path=str(ab_csv), validation_size=10, seed=7).load()
    assert set(other["validation"]["text"]) != val


def test_carve_fraction_test_size_and_label_names_order(ab_csv: Path):
    data = ClassificationData(path=str(ab_csv), validation_size=0.1, test_size=0.2, label_names=["b", "a"])
    dd = data.load()
    assert {s: len(d) for s, d in dd.items()} == {"train": 70, "validation": 10, "test": 20}
    assert dd.label_names == ["b", "a"] and dd.labels.names == ("b", "a")
    assert Counter(dd["test"]["label"]) == {1: 14, 0: 6}  # 'a' is now class 1


def test_tsv_sentence_column_int_labels(tmp_path: Path):
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\nit 's \"good\t1\nNA\t0\nbad , bad\t2\n")
    data = ClassificationData(path=str(path), validation_size=0)
    dd = data.load()
    assert dd["train"]["text"] == ["it 's \"good", "NA", "bad , bad"]  # no quoting, "NA" is a word
    assert dd["train"]["label"] == [1, 0, 2] and dd.label_names == ["0", "1", "2"]
    named = ClassificationData(path=str(path), validation_size=0, label_names=["neg", "neu", "pos"])
    assert named.load().label_names == ["neg", "neu", "pos"]


def test_jsonl_review_column_and_unlabeled_split(tmp_path: Path):
    rows = [{"id": i, "review": f"review {i}", "stars": "pos" if i % 2 else "neg"} for i in range(20)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = ClassificationData(
        path=str(path), label_column="stars", validation_size=4, unlabeled_splits=["train"]
    )
    dd = data.load()
    assert dd["train"].column_names == ["text"] and len(dd["train"]) == 16
    assert dd["validation"].column_names == ["text", "label"] and dd.label_names == ["neg", "pos"]


def test_builder_with_split_mapping_and_max_samples(tmp_path: Path, ab_csv: Path):
    dev = write_csv(tmp_path / "dev.csv", "text,label", ["x,a", "y,b", "z,b"])
    data = ClassificationData(
        path="csv",
        data_files={"train": str(ab_csv), "dev": str(dev)},
        splits={"test": "dev"},
        validation_size=0,
        max_samples={"train": 25},
    )
    dd = data.load()
    assert list(dd) == ["train", "test"]
    assert dd["test"]["text"] == ["x", "y", "z"] and len(dd["train"]) == 25
    again = ClassificationData(
        path="csv",
        data_files={"train": str(ab_csv), "dev": str(dev)},
        splits={"test": "dev"},
        validation_size=0,
        max_samples={"train": 25},
    ).load()
    assert again["train"]["text"] == dd["train"]["text"]


def test_loading_never_writes_into_the_data_folder(ab_csv: Path):
    before = sorted(p.name for p in ab_csv.parent.iterdir())
    ClassificationData(path=str(ab_csv), test_size=5).load()
    assert sorted(p.name for p in ab_csv.parent.iterdir()) == before


def test_the_spec_is_frozen_and_load_returns_its_result(ab_csv: Path):
    data = ClassificationData(path=str(ab_csv), validation_size=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.seed = 7
    dd = data.load()
    assert data == ClassificationData(path=str(ab_csv), validation_size=10)  # loading wrote nothing back
    assert data.label_names is None and data.modality is None  # the configured values, not the loaded ones
    assert isinstance(dd, datasets.DatasetDict) and dd.labels == LabelSpace(["a", "b"])


# --- every bad input names the field/file ----------------------------------------------------------
def _bad_cases(tmp: Path) -> dict[str, tuple[dict, type, list[str]]]:
    good = write_csv(tmp / "good.csv", "text,label", ["a,x", "b,y", "c,x", "d,y"])
    return {
        "missing file": ({"path": str(tmp / "nope.csv")}, DataError, ["nope.csv", "not found"]),
        "missing data_files": ({"path": "csv", "data_files": str(tmp / "gone.csv")}, DataError, ["gone.csv"]),
        "missing blitzer dir": ({"path": "blitzer", "data_files": str(tmp / "books")}, DataError, ["books"]),
        "unknown split": ({"path": str(good), "splits": {"test": "dev"}}, DataError, ["dev", "'train'"]),
        "no input column": (
            {"path": str(write_csv(tmp / "c.csv", "words,label", ["a,x"]))},
            DataError,
            ["data.input_column", "words"],
        ),
        "no label column": (
            {"path": str(write_csv(tmp / "l.csv", "text,y", ["a,x"]))},
            DataError,
            ["data.label_column", "'y'"],
        ),
        "empty text": (
            {"path": str(write_csv(tmp / "t.csv", "text,label", ["a,x", '"  ",y']))},
            DataError,
            ["row 1", "'train'"],
        ),
        "missing text": (
            {"path": str(write_csv(tmp / "n.csv", "text,label", ["a,x", "b,y", ",x"]))},
            DataError,
            ["row 2"],
        ),
        "label not allowed": (
            {"path": str(good), "label_names": ["x", "z"]},
            DataError,
            ["'y'", "row 1", "['x', 'z']"],
        ),
        "int label out of range": (
            {"path": str(write_csv(tmp / "i.csv", "text,label", ["a,0", "b,5"])), "label_names": ["p", "q"]},
            DataError,
            ["5", "row 1", "0..1"],
        ),
        "empty split": (
            {"path": str(write_csv(tmp / "e.csv", "text,label", []))},
            DataError,
            ["e.csv", "0 rows"],
        ),
        "unlabeled split absent": (
            {"path": str(good), "unlabeled_splits": ["test"]},
            DataError,
            ["data.unlabeled_splits", "test"],
        ),
        "hub id offline": ({"path": "someone/not-a-local-dataset"}, DataError, ["Hub", "local"]),
        "bad modality": ({"path": str(good), "modality": "video"}, ConfigError, ["data.modality", "video"]),
        "bad validation_size": (
            {"path": str(good), "validation_size": 1.5},
            ConfigError,
            ["data.validation_size"],
        ),
        "bad splits key": (
            {"path": str(good), "splits": {"dev": "train"}},
            ConfigError,
            ["data.splits", "dev"],
        ),
        "bad max_samples": ({"path": str(good), "max_samples": 0}, ConfigError, ["data.max_samples"]),
        "builder without files": ({"path": "csv"}, ConfigError, ["data.data_files"]),
    }


BAD_CASES = [
    "missing file", "missing data_files", "missing blitzer dir", "unknown split", "no input column",
    "no label column", "empty text", "missing text", "label not allowed", "int label out of range",
    "empty split", "unlabeled split absent", "hub id offline", "bad modality", "bad validation_size",
    "bad splits key", "bad max_samples", "builder without files",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_naming_the_problem(tmp_path: Path, case: str):
    kwargs, error, fragments = _bad_cases(tmp_path)[case]
    with pytest.raises(error) as info:
        ClassificationData(**kwargs).load()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in: {info.value}"


# --- Blitzer -----------------------------------------------------------------------------------------
REVIEW = """<review>
<rating>
{rating}
</rating>
<title>
{title}
</title>
<review_text>
{text}
</review_text>
</review>
"""


def test_blitzer_tiny_files(tmp_path: Path):
    pos = REVIEW.format(rating="5.0", title="Great  book", text="I loved it &amp; more.\n\nReally.")
    neg = REVIEW.format(rating="1.0", title="Bad", text="Caf\udcff boring").encode("utf-8", "surrogateescape")
    (tmp_path / "positive.review").write_text(pos + REVIEW.format(rating="4.0", title="", text="Fine"))
    (tmp_path / "negative.review").write_bytes(neg)
    ds = read_blitzer_domain(tmp_path)
    assert ds.features["label"].names == ["negative", "positive"]
    assert ds["text"] == ["Bad. Caf\ufffd boring", "Great book. I loved it & more. Really.", "Fine"]
    assert ds["label"] == [0, 1, 1]
    data = ClassificationData(path=str(tmp_path), validation_size=0)
    assert data.load()["train"]["text"] == ds["text"]
    via_builder = ClassificationData(path="blitzer", data_files=str(tmp_path), validation_size=0).load()
    assert via_builder["train"]["label"] == [0, 1, 1]
    (tmp_path / "unlabeled.review").write_text(REVIEW.format(rating="3.0", title="Meh", text="ok"))
    assert read_blitzer_domain(tmp_path, unlabeled=True).column_names == ["text"]
    target = ClassificationData(
        path=str(tmp_path), splits={"train": "unlabeled"}, unlabeled_splits=["train"], validation_size=0
    ).load()
    assert list(target) == ["train"] and target["train"].to_dict() == {"text": ["Meh. ok"]}


def test_imagefolder_inferred(tmp_path: Path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (5, 4), (i, 0, 0)).save(tmp_path / label / f"{i}.png")
    data = ClassificationData(path=str(tmp_path), validation_size=0)
    dd = data.load()
    assert dd.modality == "image" and dd.label_names == ["cat", "dog"]
    assert dd["train"].column_names == ["image", "label"] and dd["train"][0]["image"].size == (5, 4)


def test_blitzer_real_books():
    books = real_data("amazon_mds_raw_bertaad", "books")
    ds = read_blitzer_domain(books)
    assert len(ds) == 2000 and Counter(ds["label"]) == {0: 1000, 1: 1000}
    assert all(t.strip() == t and "  " not in t for t in ds["text"][:50])


# --- real SST-2 and built-in digits ------------------------------------------------------------------
def test_sst2_tsv_with_max_samples():
    test_tsv = real_data("sst2_agnews_alps", "SST-2", "test.tsv")
    full = ClassificationData(path=str(test_tsv), validation_size=0).load()
    assert len(full["train"]) == 872 and set(full["train"]["label"]) == {0, 1}
    data = ClassificationData(path=str(test_tsv), validation_size=0, max_samples=100)
    loaded = data.load()
    small = loaded["train"]
    assert len(small) == 100 and loaded.label_names == ["0", "1"]
    assert set(small["text"]) <= set(full["train"]["text"])


def test_sklearn_digits():
    data = ClassificationData(path="hftl:sklearn_digits")
    dd = data.load()
    assert sum(len(d) for d in dd.values()) == 1797 and list(dd) == ["train", "validation", "test"]
    assert dd.modality == "image" and dd.label_names == [str(d) for d in range(10)]
    image = dd["train"][0]["image"]
    assert image.mode == "L" and image.size == (32, 32)
    pixels = np.asarray(sklearn_digits(seed=0)["train"][0]["image"])
    assert (pixels == np.kron(pixels[::4, ::4], np.ones((4, 4), dtype=np.uint8))).all()  # nearest 4x upscale
    assert pixels.max() <= 255 and pixels.dtype == np.uint8


# --- audio -------------------------------------------------------------------------------------------
def test_audiofolder_and_decode(tmp_path: Path):
    root = tmp_path / "clips"
    for i in range(3):
        write_wav(root / "no" / f"n{i}.wav", 1.0)
        write_wav(root / "yes" / f"y{i}.wav", 0.5, channels=2 if i == 0 else 1)
    data = ClassificationData(path=str(root), validation_size=0)
    dd = data.load()
    assert dd.modality == "audio" and dd.label_names == ["no", "yes"]
    item = dd["train"][0]["audio"]
    assert set(item) == {"path", "bytes"} and Path(item["path"]).is_file()
    lengths = sorted(len(decode_audio(ex["audio"], sampling_rate=16000)) for ex in dd["train"])
    assert lengths == [8000] * 3 + [16000] * 3  # 0.5 s and 1 s at 16 kHz


def test_decode_stereo_averages_channels(tmp_path: Path):
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([np.full(800, 0.5), np.full(800, -0.25)], axis=1).astype(np.float32), 8000)
    wave = decode_audio(str(path), sampling_rate=8000)
    assert wave.shape == (800,) and wave.dtype == np.float32 and np.allclose(wave, 0.125)
    assert decode_audio({"path": None, "bytes": path.read_bytes()}, sampling_rate=16000).shape == (1600,)


def test_csv_manifest_relative_paths(tmp_path: Path):
    write_wav(tmp_path / "wavs" / "a.wav", 0.25)
    write_wav(tmp_path / "wavs" / "b.wav", 0.5)
    manifest = write_csv(tmp_path / "manifest.csv", "path,label", ["wavs/a.wav,cat", "wavs/b.wav,dog"])
    data = ClassificationData(path=str(manifest), validation_size=0)
    dd = data.load()
    assert dd.modality == "audio" and dd["train"].column_names == ["audio", "label"]
    assert dd["train"][1]["audio"]["path"] == str(tmp_path / "wavs" / "b.wav")
    assert decode_audio(dd["train"][1]["audio"], sampling_rate=16000).shape == (8000,)
    write_csv(tmp_path / "bad.csv", "path,label", ["wavs/a.wav,cat", "wavs/zzz.wav,dog"])
    with pytest.raises(DataError, match="zzz.wav"):
        ClassificationData(path=str(tmp_path / "bad.csv"), validation_size=0).load()


@pytest.mark.parametrize("kind", ["garbage", "empty", "nan", "missing"])
def test_decode_bad_audio_names_the_file(tmp_path: Path, kind: str):
    path = tmp_path / f"{kind}.wav"
    if kind == "garbage":
        path.write_bytes(b"not a wav file at all")
    elif kind == "empty":
        sf.write(path, np.zeros((0, 1), dtype=np.float32), 8000)
    elif kind == "nan":
        sf.write(path, np.array([0.0, np.nan, 0.1], dtype=np.float32), 8000, subtype="FLOAT")
    with pytest.raises(DataError, match=f"{kind}.wav"):
        decode_audio(str(path), sampling_rate=16000)


def test_decode_real_fsdd_file():
    path = real_data("fsdd", "recordings", "0_george_0.wav")
    assert sf.info(str(path)).frames == 2384
    wave = decode_audio(str(path), sampling_rate=16000)
    assert wave.shape == (4768,) and wave.dtype == np.float32 and np.isfinite(wave).all()


def test_crop_or_pad():
    wave = np.arange(10, dtype=np.float32)
    assert crop_or_pad(wave, 4, random=False).tolist() == [3, 4, 5, 6]
    assert crop_or_pad(wave, 12, random=False).tolist() == list(range(10)) + [0, 0]
    a = crop_or_pad(wave, 4, random=True, generator=np.random.default_rng(1))
    b = crop_or_pad(wave, 4, random=True, generator=np.random.default_rng(1))
    assert a.tolist() == b.tolist() and np.diff(a).tolist() == [1, 1, 1]


# --- built-in MNIST / USPS (shared data folder) ----------------------------------------------------
@pytest.mark.parametrize(
    ("name", "sizes", "first_label"), [("mnist", (60000, 10000), 5), ("usps", (7291, 2007), 6)]
)
def test_builtin_mnist_usps(
    monkeypatch: pytest.MonkeyPatch, name: str, sizes: tuple[int, int], first_label: int
):
    from hftl.data.builtin import load_builtin

    monkeypatch.setenv("HFTL_DATA_DIR", str(real_data(name).parent))
    dd = load_builtin(f"hftl:{name}", seed=0)
    assert list(dd) == ["train", "test"] and (len(dd["train"]), len(dd["test"])) == sizes
    assert dd["train"].features["label"].names == [str(d) for d in range(10)]
    row = dd["train"][0]
    assert row["image"].mode == "L" and row["image"].size == (28, 28) and row["label"] == first_label
    pixels = np.asarray(dd["test"][0]["image"])
    assert pixels.dtype == np.uint8 and np.median(pixels) < 64 and pixels.max() > 192  # white digit on black


def test_builtin_usps_matches_the_text_file(monkeypatch: pytest.MonkeyPatch):
    import gzip

    from PIL import Image

    folder = real_data("usps")
    monkeypatch.setenv("HFTL_DATA_DIR", str(folder.parent))
    with gzip.open(folder / "zip.test.gz", "rt") as f:
        first = np.array(f.readline().split(), dtype=np.float64)
    small = np.rint((first[1:].reshape(16, 16) + 1) * 127.5).astype(np.uint8)  # [-1, 1] -> 0..255
    data = ClassificationData(path="hftl:usps", validation_size=0)
    dd = data.load()
    assert dd.modality == "image" and dd.label_names == [str(d) for d in range(10)]
    assert dd["test"][0]["label"] == int(first[0])
    expected = np.asarray(Image.fromarray(small).resize((28, 28), Image.BILINEAR))
    assert (np.asarray(dd["test"][0]["image"]) == expected).all()


def test_builtin_mnist_missing_data_folder_is_a_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from hftl.data.builtin import load_builtin

    monkeypatch.setenv("HFTL_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="HFTL_DATA_DIR"):
        load_builtin("hftl:mnist", seed=0)
    monkeypatch.setenv("HFTL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="mnist_train.npz") as err:
        load_builtin("hftl:mnist", seed=0)
    assert str(tmp_path) in str(err.value) and "HFTL_DATA_DIR" in str(err.value)
