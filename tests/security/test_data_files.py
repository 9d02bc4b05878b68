"""Data files are untrusted input: labels, images and audio headers are checked before anything trains.

Issue 13, class 6 (silent wrong results: a single-class data set scoring 100 %, one label in two Unicode
forms becoming two classes, NaN/inf/1.5 labels becoming classes) and class 7 (decompression-bomb images,
absurd audio headers, ``--batch-size 0``): each test here failed before the guard it covers.
"""

from __future__ import annotations

import logging
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hftl.cli import main as hftl
from hftl.data import ClassificationData, decode_audio
from hftl.data.audio_checks import probe_audio
from hftl.data.image_checks import open_image
from hftl.data.labels import canonical_label
from hftl.errors import ConfigError, DataError, HftlError

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def write_csv(path: Path, rows: list[str], header: str = "text,label") -> str:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def load(path: str, **kwargs) -> tuple[ClassificationData, dict]:
    data = ClassificationData(path=path, **{"validation_size": 0, **kwargs})
    return data, data.load()


# --- labels: one canonical form -------------------------------------------------------------------------
def test_one_label_in_nfc_and_nfd_is_one_class(tmp_path):
    assert NFC != NFD
    path = write_csv(tmp_path / "d.csv", [f"a,{NFC}", f"b,{NFD}", "c,tea", "d,tea"])
    data, dd = load(path)
    assert dd.label_names == [NFC, "tea"]
    assert dd["train"]["label"] == [0, 0, 1, 1]


def test_surrounding_spaces_do_not_make_a_class(tmp_path):
    path = write_csv(tmp_path / "d.csv", ['a,"pos "', "b,pos", 'c," neg"', "d,neg"])
    data, dd = load(path)
    assert dd.label_names == ["neg", "pos"]
    assert dd["train"]["label"] == [1, 1, 0, 0]


def test_configured_names_match_labels_in_another_normal_form(tmp_path):
    path = write_csv(tmp_path / "d.csv", [f"a,{NFC}", "b,tea"])
    data, dd = load(path, label_names=[NFD, "tea"])
    assert dd.label_names == [NFC, "tea"]
    assert dd["train"]["label"] == [0, 1]


def test_label_names_equal_after_normalisation_are_refused():
    with pytest.raises(ConfigError) as info:
        ClassificationData(path="x.csv", label_names=[NFC, NFD, "tea"])
    assert "data.label_names" in str(info.value) and repr(NFD) in str(info.value)


@pytest.mark.parametrize("names", [["only"], ["a", ""], ["a", " "]])
def test_label_names_need_two_non_empty_classes(names):
    with pytest.raises(ConfigError, match="data.label_names"):
        ClassificationData(path="x.csv", label_names=names)


# --- labels: numeric columns ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, kind",
    [("1.5", "not a whole number"), ("nan", "not a number"), ("inf", "infinite"), ("", "Missing label")],
)
def test_non_integral_nan_inf_or_empty_labels_name_row_column_and_fix(tmp_path, bad, kind):
    path = write_csv(tmp_path / "num.csv", ["a,0", "b,1", f"c,{bad}", "d,1"])
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    for fragment in ("num.csv", "column 'label'", "row 2", kind, "data.filters"):
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert "\n" not in message
    data, dd = load(path, filters={"label": [0, 1]})  # the fix the message names works
    assert dd.label_names == ["0", "1"] and dd["train"]["label"] == [0, 1, 1]


def test_nan_in_parquet_float_column_is_refused(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"  # pandas writes NaN as a null cell
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.0, float("nan"), 1.0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"Missing label at row 1 .*d\.parquet"):
        load(str(path))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0.5, None, [0], ""])
def test_label_cells_that_are_no_class(value):
    with pytest.raises(DataError, match="row 7"):
        canonical_label(value, "row 7 of split 'train' (d.jsonl, column 'label')")


def test_filters_drop_the_bad_rows_of_a_float_column(tmp_path):
    """The fix the error names works: `1.0`-style cells match `filters: {label: [0, 1]}`."""
    import pandas as pd

    path = tmp_path / "d.parquet"
    labels = [0.0, 1.0, float("nan"), 1.0, 0.0]
    pd.DataFrame({"text": list("abcde"), "label": labels}).to_parquet(path)
    data, dd = load(str(path), filters={"label": [0, 1]})
    assert dd.label_names == ["0", "1"]
    assert dd["train"]["label"] == [0, 1, 1, 0]


def test_booleans_are_class_ids_0_and_1(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a,true", "b,false", "c,true"])
    data, dd = load(path, label_names=["ham", "spam"])
    assert dd["train"]["label"] == [1, 0, 1]


def test_sparse_integer_codes_are_not_a_label_space(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a,0", "b,1", "c,100000", "d,1"])
    with pytest.raises(DataError, match=r"100000 .*renumber"):
        load(path)


# --- labels: a single class ----------------------------------------------------------------------------
def test_single_class_data_set_is_refused(tmp_path):
    path = write_csv(tmp_path / "d.csv", [f"row {i},pos" for i in range(20)])
    with pytest.raises(DataError) as info:
        load(path, validation_size=4)
    assert "'pos'" in str(info.value) and "single class" in str(info.value)
    # an adaptation target: the train split's labels are dropped, so nothing is checked
    data, dd = load(path, label_names=["neg", "pos"], unlabeled_splits=["train"])
    assert "label" not in dd["train"].column_names and dd.label_names == ["neg", "pos"]


def test_single_class_train_split_is_refused(tmp_path):
    files = {
        "train": write_csv(tmp_path / "train.csv", ["a,pos", "b,pos", "c,pos"]),
        "test": write_csv(tmp_path / "test.csv", ["a,pos", "b,neg"]),
    }
    with pytest.raises(DataError) as info:
        load("csv", data_files=files, label_names=["neg", "pos"])
    message = str(info.value)
    assert "'train'" in message and "'pos'" in message and "single class" in message
    files["train"], files["test"] = files["test"], files["train"]  # a one-class test split is fine
    _, dd = load("csv", data_files=files, label_names=["neg", "pos"])
    assert dd["test"]["label"] == [1, 1, 1]


def test_single_class_after_filters_is_refused(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a,pos,x", "b,neg,y", "c,pos,x", "d,neg,y"], "text,label,group")
    with pytest.raises(DataError, match="single class"):
        load(path, filters={"group": ["x"]}, label_names=["neg", "pos"])


def test_scoring_a_one_class_file_is_allowed(tmp_path):
    """What `hftl eval --data` does: the file is read as `train` but only scored."""
    path = write_csv(tmp_path / "d.csv", ["a,pos", "b,pos"])
    data, dd = load(path, label_names=["neg", "pos"], check_train_classes=False)
    assert dd["train"]["label"] == [1, 1]


def test_classes_missing_from_train_are_warned_about(tmp_path, caplog):
    path = write_csv(tmp_path / "d.csv", ["a,pos", "b,neg"])
    with caplog.at_level(logging.WARNING, logger="hftl.data.labels"):
        load(path, label_names=["neg", "neutral", "pos"])
    assert "neutral" in caplog.text and "'train'" in caplog.text


# --- labels: streamed data --------------------------------------------------------------------------------
def _stream_rows(data: ClassificationData) -> list[dict]:
    return list(data.load()["train"])


def test_streamed_labels_are_normalised(tmp_path):
    path = write_csv(tmp_path / "d.csv", [f"a,{NFD}", "b,tea ", f"c,{NFC}"])
    data = ClassificationData(path=path, streaming=True, label_names=[NFC, "tea"], validation_size=0)
    assert sorted(row["label"] for row in _stream_rows(data)) == [0, 0, 1]


@pytest.mark.parametrize("bad, kind", [(1.5, "not a whole number"), (None, "Missing label")])
def test_streamed_bad_label_names_the_row_and_what_is_wrong(tmp_path, bad, kind):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": list("abc"), "label": [0.0, 1.0, bad]}).to_parquet(path)
    data = ClassificationData(path=str(path), streaming=True, label_names=["neg", "pos"], validation_size=0)
    with pytest.raises(DataError) as info:
        _stream_rows(data)
    assert "row 2" in str(info.value) and kind in str(info.value)


# --- images -----------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(path: Path, width: int, height: int, *, complete: bool = True) -> Path:
    """A 1-bit grayscale PNG of ``width`` × ``height`` zeros (complete: every row, a few KB compressed)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = bytes(((width + 7) // 8 + 1) * (height if complete else 1))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )
    return path


def image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        folder = root / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root / "images"


@pytest.mark.parametrize(
    "width, height, complete",
    [(50_000, 50_000, False), (10_000, 10_000, True)],  # over PIL's error limit; over its warning limit only
    ids=["huge-header", "complete-100-megapixels"],
)
def test_decompression_bomb_is_a_data_error_naming_file_and_limit(tmp_path, width, height, complete):
    folder = image_folder(tmp_path)
    png_declaring(folder / "a" / "bomb.png", width, height, complete=complete)
    with pytest.raises(DataError) as info:
        load(str(folder), modality="image")
    message = str(info.value)
    assert "bomb.png" in message and "89,478,485" in message and "data.max_image_pixels" in message


def test_streamed_images_are_checked_before_decoding(tmp_path):
    folder = image_folder(tmp_path)
    data = ClassificationData(path=str(folder), streaming=True, label_names=["a", "b"], validation_size=0)
    assert sorted(row["image"].size for row in _stream_rows(data)) == [(16, 16)] * 6
    png_declaring(folder / "a" / "bomb.png", 10_000, 10_000)
    data = ClassificationData(path=str(folder), streaming=True, label_names=["a", "b"], validation_size=0)
    with pytest.raises(DataError) as info:
        _stream_rows(data)
    message = str(info.value)
    assert "bomb.png" in message and "data.max_image_pixels" in message and "streamed" in message


def test_max_image_pixels_is_configurable(tmp_path):
    folder = image_folder(tmp_path)
    with pytest.raises(DataError, match=r"16×16 = 256 pixels, over the limit of 100"):
        load(str(folder), modality="image", max_image_pixels=100)
    with pytest.raises(ConfigError, match="data.max_image_pixels"):
        ClassificationData(path=str(folder), max_image_pixels=0)


def test_truncated_jpeg_is_caught_before_training(tmp_path):
    from PIL import Image

    folder = image_folder(tmp_path)
    jpeg = folder / "a" / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size * 6 // 10])
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated"):
        load(str(folder), modality="image")


def test_inference_refuses_a_decompression_bomb(tmp_path):
    bomb = png_declaring(tmp_path / "bomb.png", 50_000, 50_000, complete=False)
    with pytest.raises(DataError, match="bomb.png"):
        open_image(bomb)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert open_image(tmp_path / "ok.png").size == (8, 8)


# --- audio ------------------------------------------------------------------------------------------------
def wav_with_rate(path: Path, rate: int) -> Path:
    """A 16-bit PCM WAV of 1,600 samples whose header claims ``rate`` Hz."""
    data = np.zeros(1600, dtype="<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, (2 * rate) & 0xFFFFFFFF, 2, 16)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + fmt
    path.write_bytes(header + b"data" + struct.pack("<I", len(data)) + data)
    return path


def test_audio_header_with_absurd_sampling_rate_is_refused(tmp_path):
    path = wav_with_rate(tmp_path / "odd.wav", 1_999_999_973)  # prime: resampling would need ~300 GiB
    with pytest.raises(DataError, match="768,000"):
        probe_audio(str(path))
    with pytest.raises(DataError, match=r"odd\.wav.*768,000"):
        decode_audio(str(path), sampling_rate=16_000)


def test_audio_scan_reports_the_absurd_header_by_name(tmp_path):
    rows = []
    for i in range(4):
        sf.write(tmp_path / f"ok{i}.wav", np.zeros(1600, dtype="float32"), 16_000)
        rows.append(f"{tmp_path / f'ok{i}.wav'},{'yes' if i % 2 else 'no'}")
    rows.append(f"{wav_with_rate(tmp_path / 'odd.wav', 2_000_000_000)},yes")
    path = write_csv(tmp_path / "manifest.csv", rows, "audio,label")
    with pytest.raises(DataError, match=r"odd\.wav"):
        load(path)


# --- batch sizes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["eval", "./no_such_run"], ["predict", "./no_such_run", "text"]])
@pytest.mark.parametrize("value", ["0", "-4"])
def test_batch_size_flag_must_be_positive(capsys, command, value):
    with pytest.raises(SystemExit) as info:
        hftl([*command, "--batch-size", value])
    assert info.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_predictor_refuses_batch_size_zero():
    from hftl.predict import Predictor

    with pytest.raises(HftlError, match="batch_size"):
        Predictor.__call__(object.__new__(Predictor), ["text"], batch_size=0)


def test_episode_classes_are_matched_like_labels():
    from hftl.data.episodes import class_ids

    assert class_ids([NFC, "tea"], [NFD, " tea"], key="episodes.test_classes") == [0, 1]
    with pytest.raises(ConfigError, match="episodes.test_classes"):
        class_ids([NFC, "tea"], ["coffee"], key="episodes.test_classes")
