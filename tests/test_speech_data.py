"""Speech data for domain adaptation: ``data.filters``, the ``hftl:fsdd`` built-in, synthetic spoken digits."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hftl.cli import main as cli_main
from hftl.data import ClassificationData
from hftl.data.spoken_digits import SAMPLING_RATE, make_spoken_digits
from hftl.errors import ConfigError, DataError, HftlError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng not installed (apt-get install -y espeak-ng); it synthesizes the spoken digits",
)
VOICES = ["en-us", "en-us+f2"]


# --- data.filters -------------------------------------------------------------------------------------


@pytest.fixture()
def speakers_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    rows = [(f"word {i}", i % 2, ["ann", "bob", "cy"][i % 3]) for i in range(30)]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label", "speaker"), *rows])
    return path


def test_filters_keep_only_listed_values_before_carving(speakers_csv: Path):
    data = ClassificationData(path=str(speakers_csv), filters={"speaker": ["ann", "cy"]}, validation_size=4)
    splits = data.load()
    assert len(splits["train"]) == 16 and len(splits["validation"]) == 4  # 20 rows kept, then carved
    texts = list(splits["train"]["text"]) + list(splits["validation"]["text"])
    assert all(int(t.split()[1]) % 3 != 1 for t in texts)  # no bob rows (i % 3 == 1)
    assert splits["train"].column_names == ["text", "label"]  # the filter column is not kept


def test_filters_unknown_column_names_the_available_ones(speakers_csv: Path):
    with pytest.raises(DataError, match=r"`data.filters`.*'accent'") as err:
        ClassificationData(path=str(speakers_csv), filters={"accent": ["x"]}).load()
    assert "available columns" in str(err.value) and "'speaker'" in str(err.value)


def test_filters_leaving_a_split_empty_names_the_values_found(speakers_csv: Path):
    with pytest.raises(DataError, match=r"leaves split 'train'.*empty.*\['ann', 'bob', 'cy'\]"):
        ClassificationData(path=str(speakers_csv), filters={"speaker": ["dee"]}).load()


def test_filters_must_be_lists():
    with pytest.raises(ConfigError, match=r"`data.filters.speaker` is 'ann'.*non-empty list"):
        ClassificationData(path="x.csv", filters={"speaker": "ann"})


# --- hftl:fsdd ----------------------------------------------------------------------------------------


@pytest.fixture()
def fsdd_dir(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if not (data_dir / "fsdd" / "recordings").is_dir():
        pytest.skip(f"FSDD not found in {data_dir}/fsdd/recordings (see that folder's PROVENANCE.md)")
    monkeypatch.setenv("HFTL_DATA_DIR", str(data_dir))
    return data_dir / "fsdd"


def test_fsdd_builtin_counts_and_official_split(fsdd_dir: Path):
    from hftl.data.builtin import load_builtin

    splits = load_builtin("hftl:fsdd", seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2700, "test": 300}  # 3000 clips
    assert splits["train"].features["label"].names == [str(d) for d in range(10)]
    test = splits["test"]
    assert Counter(test["speaker"]) == {
        s: 50 for s in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
    }
    assert set(test["take"]) == set(range(5)) and min(splits["train"]["take"]) == 5  # takes 0-4 are test
    per_pair = Counter(zip(test["speaker"], test["label"], strict=True))
    assert len(per_pair) == 60 and set(per_pair.values()) == {5}  # 5 takes of each (speaker, digit)
    first = test[0]
    assert Path(first["audio"]["path"]).name == f"{first['label']}_{first['speaker']}_{first['take']}.wav"


def test_fsdd_speaker_filter_gives_one_speaker_domain(fsdd_dir: Path):
    data = ClassificationData(
        path="hftl:fsdd", filters={"speaker": ["nicolas"]}, validation_size=0, unlabeled_splits=["train"]
    )
    splits = data.load()
    assert splits.modality == "audio" and splits.label_names == [str(d) for d in range(10)]
    assert len(splits["train"]) == 450 and len(splits["test"]) == 50
    assert "label" not in splits["train"].column_names
    assert all("_nicolas_" in Path(a["path"]).name for a in splits["test"]["audio"])


# --- synthetic spoken digits (espeak-ng) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip(
            "espeak-ng not installed (apt-get install -y espeak-ng); it synthesizes the spoken digits"
        )
    out = tmp_path_factory.mktemp("synth") / "digits"
    return make_spoken_digits(out, voices=VOICES, digits=[3, 7], per_digit=1, seed=0)


def test_generator_writes_8khz_mono_non_silent_clips_and_manifest(synth: Path):
    with open(synth) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["voice"] for r in rows} == set(VOICES)
    assert {r["group"] for r in rows} == {"source", "target"}  # one voice per group
    assert {r["label"] for r in rows} == {"3", "7"}
    for row in rows:
        path = synth.parent / row["path"]
        assert path.parent.name == row["group"] and path.name.startswith(f"{row['label']}_")
        info = sf.info(path)
        assert info.samplerate == SAMPLING_RATE == 8000 and info.channels == 1
        wave, _ = sf.read(path, dtype="float32")
        assert 0.15 < len(wave) / 8000 < 1.5 and np.sqrt(np.mean(wave**2)) > 0.01  # a word, not silence
    assert sorted(p.name for p in synth.parent.iterdir()) == ["manifest.csv", "source", "target"]


def test_generator_manifest_loads_as_audio_data_with_group_filter(synth: Path):
    data = ClassificationData(path=str(synth), filters={"group": ["source"]}, validation_size=0)
    splits = data.load()
    assert splits.modality == "audio" and len(splits["train"]) == 2
    assert all(Path(a["path"]).is_file() for a in splits["train"]["audio"])


@needs_espeak
def test_generator_refuses_a_non_empty_folder_unless_forced(tmp_path: Path):
    out = tmp_path / "digits"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HftlError, match="not empty; pass --force"):
        make_spoken_digits(out, voices=VOICES, digits=[1], per_digit=1)
    assert (out / "keep.txt").exists()
    make_spoken_digits(out, voices=VOICES, digits=[1], per_digit=1, force=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no temp folders left behind


@needs_espeak
def test_generator_unknown_voice_fails_leaving_nothing(tmp_path: Path):
    with pytest.raises(HftlError, match="voice 'xx-nosuch'.*--voices=en"):
        make_spoken_digits(tmp_path / "digits", voices=["en-us", "xx-nosuch"], digits=[1], per_digit=1)
    assert list(tmp_path.iterdir()) == []


def test_generator_without_espeak_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(HftlError, match=r"apt-get install -y espeak-ng"):
        make_spoken_digits(tmp_path / "digits", voices=VOICES, digits=[1], per_digit=1)


def test_generator_rejects_bad_arguments(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        make_spoken_digits(tmp_path / "d", voices=["en-us"], digits=[1, 12], per_digit=0)
    assert all(f"`{k}`" in str(err.value) for k in ("voices", "digits", "per_digit"))


@needs_espeak
def test_cli_make_spoken_digits(tmp_path: Path, capsys: pytest.CaptureFixture):
    argv = ["data", "make-spoken-digits", "--out", str(tmp_path / "d"), "--voices", *VOICES]
    assert cli_main([*argv, "--digits", "0", "--per-digit", "1", "--seed", "1"]) == 0
    assert "Wrote 2 clips" in capsys.readouterr().out
    assert cli_main([*argv, "--digits", "0"]) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
