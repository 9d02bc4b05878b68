"""Bad audio is found before training: each bad file named once with the fix; ``on_bad_audio: stop | skip``."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from hftl.cli import main as hftl
from hftl.data import ClassificationData
from hftl.data.audio import decode_audio, resample
from hftl.data.audio_checks import BadAudioError, probe_audio, scan_audio
from hftl.errors import ConfigError, DataError

RATE = 8000


def tone(seconds: float = 0.5, *, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def good_wav(path: Path, seconds: float = 0.5, **kw) -> Path:
    sf.write(path, tone(seconds, **kw), kw.get("rate", RATE), subtype="PCM_16")
    return path


def _set_wav_rate(path: Path, rate: int) -> None:
    header = bytearray(path.read_bytes())
    header[24:28], header[28:32] = struct.pack("<I", rate), struct.pack("<I", 2 * rate)  # rate, bytes/s
    path.write_bytes(bytes(header))


def make_bad(folder: Path, kind: str) -> Path:
    """Writes one bad file of ``kind`` into ``folder`` (for "missing", only returns a path)."""
    if kind == "missing":
        return folder / "missing.wav"
    if kind == "empty":
        path = folder / "empty.wav"
        path.write_bytes(b"")
    elif kind == "garbage":
        path = folder / "garbage.wav"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    elif kind == "truncated_wav":
        path = good_wav(folder / "truncated.wav", 1.0)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "truncated_flac":
        path = folder / "truncated.flac"
        sf.write(path, tone(1.0) + 0.05 * np.random.default_rng(0).standard_normal(RATE), RATE)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "zero_samples":
        path = folder / "zero_samples.wav"
        sf.write(path, np.zeros(0, np.float32), RATE, subtype="PCM_16")
    elif kind == "all_nan":
        path = folder / "all_nan.wav"
        sf.write(path, np.full(RATE // 2, np.nan, np.float32), RATE, subtype="FLOAT")
    elif kind == "some_inf":
        path = folder / "some_inf.wav"
        wave = tone()
        wave[10:13] = np.inf
        sf.write(path, wave, RATE, subtype="FLOAT")
    elif kind == "unsupported":
        path = folder / "clip.xyz"
        path.write_bytes(b"\x00\x01 not audio in any format " * 20)
    elif kind == "rate_100hz":
        path = good_wav(folder / "rate_100hz.wav")
        _set_wav_rate(path, 100)
    else:
        raise ValueError(kind)
    return path


# kind -> words the problem must contain, words the fix must contain
BAD_KINDS = {
    "missing": ("file not found", "manifest"),
    "empty": ("empty file (0 bytes)", "re-export"),
    "garbage": ("corrupt", "re-export"),
    "truncated_wav": ("truncated", "re-export"),
    "truncated_flac": ("truncated", "re-export"),
    "zero_samples": ("0 samples", "re-export"),
    "all_nan": ("all samples are NaN", "re-export"),
    "some_inf": ("3 of 4,000 samples are NaN or infinite", "re-export"),
    "unsupported": ("unsupported format '.xyz'", "ffmpeg"),
    "rate_100hz": ("sampling rate 100 Hz", "-ar 16000"),
}


def manifest(folder: Path, paths: list[Path], name: str = "clips.csv") -> Path:
    """A csv manifest (path,label) with paths relative to its folder; labels alternate yes/no."""
    path = folder / name
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([os.path.relpath(p, folder), ["yes", "no"][i % 2]] for i, p in enumerate(paths))
    return path


@pytest.fixture
def good(tmp_path: Path) -> list[Path]:
    (tmp_path / "good").mkdir()
    return [good_wav(tmp_path / "good" / f"g{i}.wav", freq=300 + 100 * i) for i in range(6)]


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_each_bad_file_stops_with_its_name_problem_and_fix(tmp_path: Path, good: list[Path], kind: str):
    bad = make_bad(tmp_path, kind)
    data = ClassificationData(path=str(manifest(tmp_path, [*good[:3], bad, *good[3:]])), validation_size=0)
    with pytest.raises(DataError) as err:
        data.load()
    message, (problem, fix) = str(err.value), BAD_KINDS[kind]
    assert message.count(bad.name) == 1, message  # named exactly once
    assert problem in message and fix in message and "row 3" in message, message
    assert "1 of 7 audio files" in message and "on_bad_audio: skip" in message


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_probe_gives_problem_and_fix_separately(tmp_path: Path, kind: str):
    with pytest.raises(BadAudioError) as err:
        probe_audio(str(make_bad(tmp_path, kind)))
    assert BAD_KINDS[kind][0] in err.value.problem and BAD_KINDS[kind][1] in err.value.fix


def test_corrupt_in_memory_bytes_are_caught(tmp_path: Path):
    data = make_bad(tmp_path, "truncated_flac").read_bytes()
    with pytest.raises(BadAudioError, match="truncated"):
        probe_audio({"path": None, "bytes": data})
    good_bytes = good_wav(tmp_path / "ok.wav").read_bytes()
    assert probe_audio({"path": "ok.wav", "bytes": good_bytes}).frames == RATE // 2


def test_every_bad_file_listed_in_one_error_and_the_report(tmp_path: Path, good: list[Path]):
    bad = [make_bad(tmp_path, k) for k in BAD_KINDS]
    report = tmp_path / "out" / "bad_audio.csv"
    data = ClassificationData(
        path=str(manifest(tmp_path, [*good, *bad])), validation_size=0, bad_audio_report=str(report)
    )
    with pytest.raises(DataError) as err:
        data.load()
    message = str(err.value)
    assert f"{len(bad)} of {len(bad) + len(good)} audio files" in message
    assert f"and {len(bad) - 5} more (all in {report})" in message  # 5 shown, the rest in the report
    rows = list(csv.DictReader(open(report)))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in bad)
    assert all(r["problem"] and r["fix"] and r["split"] == "train" for r in rows)


def test_skip_keeps_only_the_good_rows_and_reports_once(tmp_path: Path, good: list[Path], caplog):
    bad = [make_bad(tmp_path, k) for k in ("missing", "garbage", "all_nan", "unsupported")]
    path = manifest(tmp_path, [bad[0], *good[:3], bad[1], bad[2], *good[3:], bad[3]])
    report = tmp_path / "out" / "skipped.csv"
    kwargs = {
        "path": str(path),
        "validation_size": 0,
        "on_bad_audio": "skip",
        "bad_audio_report": str(report),
    }
    with caplog.at_level(logging.WARNING, logger="hftl.data.audio_checks"):
        dd = ClassificationData(**kwargs).load()
        again = ClassificationData(**kwargs).load()  # a data set loaded twice (adapt: target) warns once
    kept = [Path(item["path"]).name for item in dd["train"]["audio"]]
    assert kept == [p.name for p in good]
    assert [Path(item["path"]).name for item in again["train"]["audio"]] == kept
    warnings = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    assert len(warnings) == 1 and "Skipping 4 of 10 audio files" in warnings[0]
    assert all(p.name in warnings[0] for p in bad) and str(report) in warnings[0]
    assert len(list(csv.DictReader(open(report)))) == 4


def test_skip_refuses_to_empty_a_split(tmp_path: Path):
    bad = [make_bad(tmp_path, "empty"), make_bad(tmp_path, "garbage")]
    data = ClassificationData(path=str(manifest(tmp_path, bad)), validation_size=0, on_bad_audio="skip")
    with pytest.raises(DataError, match=r"Every audio file of split 'train'.*nothing to train on"):
        data.load()


def test_stereo_and_other_rates_are_mixed_down_and_resampled_not_errors(tmp_path: Path, good: list[Path]):
    stereo = tmp_path / "stereo.wav"
    left, right = tone(0.5), tone(0.5, freq=880.0)
    sf.write(stereo, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    surround = tmp_path / "six_channels.flac"
    sf.write(surround, np.tile(tone(0.5)[:, None], (1, 6)), RATE)
    cd = good_wav(tmp_path / "cd.wav", 0.5, rate=44_100)
    odd = good_wav(tmp_path / "odd.wav", 0.5)
    _set_wav_rate(odd, 7919)  # a prime: gcd 1 with every encoder rate
    dd = ClassificationData(
        path=str(manifest(tmp_path, [*good, stereo, surround, cd, odd])), validation_size=0
    ).load()
    assert len(dd["train"]) == 10
    np.testing.assert_allclose(decode_audio(str(stereo), sampling_rate=RATE), (left + right) / 2, atol=1e-6)
    assert decode_audio(str(surround), sampling_rate=RATE).shape == (RATE // 2,)
    assert decode_audio(str(cd), sampling_rate=16_000).shape == (8000,)  # 0.5 s at 16 kHz
    assert decode_audio(str(odd), sampling_rate=16_000).shape == (math.ceil(4000 * 16_000 / 7919),)


def test_odd_rate_resampling_is_accurate(tmp_path: Path):
    """7919 -> 16000 Hz takes scipy's polyphase path (torchaudio's kernel would take seconds): same signal."""
    t_in, t_out = np.arange(7919) / 7919, np.arange(16_000) / 16_000
    out = resample(np.sin(2 * np.pi * 50 * t_in).astype(np.float32), 7919, 16_000)
    assert out.shape == (16_000,) and out.dtype == np.float32
    inner = slice(800, -800)  # away from the edges, where the filter sees zero padding
    np.testing.assert_allclose(out[inner], np.sin(2 * np.pi * 50 * t_out)[inner], atol=2e-3)


def test_long_clips_warned_once_with_the_count(tmp_path: Path, good: list[Path], caplog):
    long = [good_wav(tmp_path / f"long{i}.wav", seconds) for i, seconds in enumerate((2.0, 3.5, 1.5))]
    path = manifest(tmp_path, [*good, *long])
    with caplog.at_level(logging.WARNING, logger="hftl.data.audio_checks"):
        dd = ClassificationData(path=str(path), validation_size=0, max_duration=0.5).load()
        ClassificationData(path=str(path), validation_size=0, max_duration=0.5).load()
    assert len(dd["train"]) == 9  # long clips are kept (the encoder crops them)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert (
        "3 of 9 audio clips" in warnings[0]
        and "longest 3.5 s (" in warnings[0]
        and "long1.wav" in warnings[0]
    )
    assert "encoder.max_duration" in warnings[0]


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError) as err:
        ClassificationData(path="x.csv", on_bad_audio="ignore", max_duration=-1)
    assert "`data.on_bad_audio` is 'ignore'" in str(err.value) and "`data.max_duration` is -1" in str(
        err.value
    )


def test_missing_data_error_carries_the_hint(tmp_path: Path):
    hint = "Make it with `hftl data make-spoken-digits --out data/spoken_digits`."
    with pytest.raises(DataError) as err:
        ClassificationData(path=str(tmp_path / "nowhere" / "manifest.csv"), missing_hint=hint).load()
    assert "nowhere/manifest.csv" in str(err.value) and str(err.value).endswith(hint)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed: cannot write an m4a file")
def test_formats_libsndfile_lacks_are_decoded_with_torchcodec(tmp_path: Path):
    pytest.importorskip("torchcodec.decoders", reason="torchcodec not installed (pip install hftl[audio])")
    import subprocess

    wav, m4a = good_wav(tmp_path / "a.wav"), tmp_path / "a.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), str(m4a)], check=True)
    assert probe_audio(str(m4a)).sampling_rate == RATE
    assert abs(len(decode_audio(str(m4a), sampling_rate=RATE)) - RATE // 2) < 1024  # AAC priming frames


def test_scan_of_a_hub_style_dataset_with_bytes(tmp_path: Path):
    import datasets

    items = [{"path": f"{i}.wav", "bytes": good_wav(tmp_path / f"{i}.wav").read_bytes()} for i in range(3)]
    items.append({"path": "broken.flac", "bytes": make_bad(tmp_path, "truncated_flac").read_bytes()})
    ds = datasets.Dataset.from_dict({"audio": items, "label": [0, 1, 0, 1]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    dd = scan_audio(datasets.DatasetDict(train=ds), source="hub/x", on_bad_audio="skip")
    assert [item["path"] for item in dd["train"]["audio"]] == ["0.wav", "1.wav", "2.wav"]


# --- through the recipe: stop before any training, or train on the good rows -------------------------
def _finetune_config(tmp_path: Path, tiny_models: dict[str, str], clips: Path) -> Path:
    cfg = {
        "recipe": "finetune",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "encoder": {
            "_component_": "hftl.encoders.AudioEncoder",
            "model": tiny_models["wav2vec2"],
            "max_duration": 0.5,
        },
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": {
            "_component_": "hftl.data.ClassificationData",
            "path": str(clips),
            "validation_size": 2,
            "test_size": 2,
            "bad_audio_report": "${output_dir}/bad_audio.csv",
        },
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 4},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_recipe_stops_before_training_or_skips(tmp_path: Path, good: list[Path], tiny_models, capsys, caplog):
    extra = [good_wav(tmp_path / "good" / f"h{i}.wav", freq=900 + 50 * i) for i in range(4)]
    bad = make_bad(tmp_path, "truncated_flac")
    cfg = _finetune_config(tmp_path, tiny_models, manifest(tmp_path, [*good, bad, *extra]))
    assert hftl(["run", "finetune", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "truncated.flac" in err and "on_bad_audio: skip" in err
    out = tmp_path / "out"
    assert not (out / "model").exists() and not (out / "checkpoints").exists()  # nothing trained
    assert (out / "bad_audio.csv").is_file()

    assert hftl(["run", "finetune", "--config", str(cfg), "data.on_bad_audio=skip"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2  # 10 good clips - 2 validation - 2 test = 6 train rows, batch 4
    assert "Skipping 1 of 11 audio files" in caplog.text and "truncated.flac" in caplog.text
