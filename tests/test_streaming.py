"""Streamed training data (``data.streaming: true``): splits, per-epoch shuffles, row checks, the adapt
recipe with streamed source and target, and the errors. Exact kill-and-resume of a streamed run is in
tests/test_resume.py."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml

import hftl as hftl_pkg
from hftl.cli import main as hftl
from hftl.data import ClassificationData
from hftl.data.paired import PairedLoader
from hftl.errors import ConfigError, DataError
from hftl.training.builders import batches_per_epoch, build_loader


def write_rows(path: Path, rows: list[tuple], header: tuple[str, ...] = ("text", "label")) -> str:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return str(path)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "train": write_rows(tmp_path / "train.csv", [(f"row {i}", ["neg", "pos"][i % 2]) for i in range(20)]),
        "test": write_rows(tmp_path / "test.csv", [("x y", "pos"), ("z w", "neg")]),
    }


def _data(files: dict[str, str], **kwargs) -> ClassificationData:
    args = {"path": "csv", "data_files": files, "label_names": ["neg", "pos"], "validation_size": 4}
    return ClassificationData(**(args | {"streaming": True, "shuffle_buffer": 8} | kwargs))


def _texts(stream) -> list[str]:
    return [row["text"] for row in stream]


def test_train_is_a_stream_and_the_first_rows_are_validation(files):
    data = _data(files)
    splits = data.load()
    assert isinstance(splits["train"], datasets.IterableDataset)
    assert splits["validation"]["text"] == [f"row {i}" for i in range(4)]  # the stream's first rows
    assert splits["test"]["label"] == [1, 0] and splits.label_names == ["neg", "pos"]
    train = _texts(splits["train"])
    assert sorted(train) == sorted(f"row {i}" for i in range(4, 20))  # each remaining row once
    assert {row["label"] for row in splits["train"]} == {0, 1}
    assert splits.modality == "text"


def test_each_epoch_reshuffles_reproducibly(files):
    stream = _data(files).load()["train"]
    orders = []
    for epoch in (0, 1, 0):
        stream.set_epoch(epoch)
        orders.append(_texts(stream))
    assert orders[0] != orders[1] and orders[0] == orders[2]


def test_max_samples_and_filters_apply_to_the_stream(tmp_path, files):
    assert len(_texts(_data(files, max_samples={"train": 5}).load()["train"])) == 5
    rows = [(f"row {i}", ["neg", "pos"][i % 2], ["a", "b"][i // 10]) for i in range(20)]
    path = write_rows(tmp_path / "spk.csv", rows, header=("text", "label", "speaker"))
    data = _data({"train": path}, validation_size=2, filters={"speaker": ["b"]})
    splits = data.load()  # filtered before the first rows become validation, as for in-memory data
    assert splits["validation"]["text"] == ["row 10", "row 11"]
    assert sorted(_texts(splits["train"])) == sorted(f"row {i}" for i in range(12, 20))


def test_bad_rows_stop_with_the_row_named(tmp_path):
    rows = [("fine", "pos"), ("also fine", "neg"), ("odd", "maybe")]
    stream = _data({"train": write_rows(tmp_path / "bad.csv", rows)}, validation_size=0).load()["train"]
    with pytest.raises(DataError, match=r"Label 'maybe' at row 2 of the streamed train split.*label_names"):
        list(stream)


def test_stream_needs_label_names_a_row_count_and_a_file_source(files):
    with pytest.raises(ConfigError, match="label_names` is required with `data.streaming"):
        _data(files, label_names=None).load()
    with pytest.raises(ConfigError, match=r"validation_size` is 0.2, a fraction.*row count"):
        _data(files, validation_size=0.2).load()
    with pytest.raises(ConfigError, match="parses into memory"):
        ClassificationData(path="hftl:sklearn_digits", streaming=True).load()
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        _data(files, shuffle_buffer=0)


def _loader(stream, seed: int = 0):
    def collate(rows):
        return [row["text"] for row in rows]

    return build_loader(stream, collate_fn=collate, batch_size=4, shuffle=True, seed=seed)


def test_paired_loader_over_a_streamed_source_resumes_exactly(files, tmp_path):
    source = _loader(_data(files).load()["train"])  # 16 rows: 4 batches per epoch
    target_rows = [(f"t{i}", "pos") for i in range(6)]  # 2 batches: cycles twice per epoch
    target_data = _data({"train": write_rows(tmp_path / "t.csv", target_rows)}, validation_size=0)
    paired = PairedLoader(source, _loader(target_data.load()["train"], seed=1))
    assert batches_per_epoch(paired) is None
    paired.set_epoch(3)
    full = list(paired)
    assert len(full) == 4 and len({t for _, batch in full for t in batch}) == 6
    assert list(paired.skip_first_batches(3)) == full[3:]
    paired.set_epoch(4)
    assert list(paired) != full


def _adapt_config(tmp_path: Path, tiny: str, files: dict[str, str], target: dict[str, str]) -> dict:
    stream = {"_component_": "hftl.data.ClassificationData", "label_names": ["neg", "pos"], "streaming": True}
    return {
        "recipe": "adapt",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny, "max_length": 16},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead"},
        "source": {**stream, "path": "csv", "data_files": {"train": files["train"]}, "validation_size": 4},
        "target": {**stream, "path": "csv", "data_files": target},
        "method": {"_component_": "hftl.adaptation.DANN", "hidden_features": 16},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"max_steps": 6, "batch_size": 4, "eval_every_steps": 3},
        "report": {"baselines": ["source_only", "target_oracle"], "diagnostics": True, "plot": "pca"},
    }


def test_adapt_streams_source_and_target(tmp_path, tiny_models, files):
    target = {
        "train": write_rows(tmp_path / "tt.csv", [(f"t {i}", ["neg", "pos"][i % 2]) for i in range(10)]),
        "test": files["test"],
    }
    cfg = _adapt_config(tmp_path, tiny_models["bert"], files, target)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics["results"]) == ["source_only", "target_oracle", "dann"]
    for result in metrics["results"].values():
        assert result["steps"] == 6 and result["target_test_acc"] in (0.0, 0.5, 1.0)  # two test rows
    # the reported accuracy is the saved (DANN) model's on the target test rows
    predicted = [r["label"] for r in hftl_pkg.load(tmp_path / "out", device="cpu")(["x y", "z w"])]
    correct = sum(p == y for p, y in zip(predicted, ["pos", "neg"], strict=True))
    assert metrics["results"]["dann"]["target_test_acc"] == correct / 2


def test_streamed_run_without_max_steps_is_refused(tmp_path, tiny_models, files, capsys):
    cfg = _adapt_config(
        tmp_path, tiny_models["bert"], files, {"train": files["train"], "test": files["test"]}
    )
    del cfg["train"]["max_steps"]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "`train.max_steps` is required when the training data is streamed" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_keyed_stream_gives_each_row_its_position_and_epoch(files):
    from hftl.data.keys import EXAMPLE_KEY, KeyedStream

    keyed = KeyedStream(_data(files).load()["train"])
    keyed.set_epoch(2)
    keys = [row[EXAMPLE_KEY] for row in keyed]
    assert keys == [(i, 2) for i in range(16)]
    assert isinstance(keyed, torch.utils.data.IterableDataset)


def test_audio_manifest_paths_resolve_in_carved_and_streamed_rows(tmp_path, wavs):
    import shutil

    (tmp_path / "clips").mkdir()
    rows = []
    for i in range(6):
        shutil.copy(wavs[i % 2]["audio"], tmp_path / "clips" / f"{i}.wav")
        rows.append((f"clips/{i}.wav", ["neg", "pos"][i % 2]))
    manifest = write_rows(tmp_path / "manifest.csv", rows, header=("path", "label"))
    data = _data({"train": manifest}, validation_size=2)
    splits = data.load()
    assert splits.modality == "audio"
    carved = [item["path"] if isinstance(item, dict) else item for item in splits["validation"]["audio"]]
    assert carved == [str(tmp_path / "clips" / f"{i}.wav") for i in range(2)]  # against the manifest's folder
    streamed = sorted(row["audio"] for row in splits["train"])
    assert streamed == [str(tmp_path / "clips" / f"{i}.wav") for i in range(2, 6)]


def test_bad_evaluation_audio_is_reported_before_training(tmp_path, wavs):
    import shutil

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "0.wav").write_bytes(b"RIFF garbage")
    for i in range(1, 4):
        shutil.copy(wavs[0]["audio"], tmp_path / "clips" / f"{i}.wav")
    rows = [(f"clips/{i}.wav", ["neg", "pos"][i % 2]) for i in range(4)]
    manifest = write_rows(tmp_path / "manifest.csv", rows, header=("path", "label"))
    with pytest.raises(DataError, match="0.wav"):  # a carved validation row: scanned like in-memory data
        _data({"train": manifest}, validation_size=2).load()


@pytest.mark.parametrize(
    "recipe,config,node",
    [
        ("embed", "text/minilm_sentence_sst2", "data"),
        ("multitask", "text/multitask_sst2_kitchen_airline", "tasks.sst2.data"),
    ],
)
def test_recipes_that_need_whole_splits_refuse_a_stream(recipe, config, node, capsys, shipped_data):
    shipped_data(config)
    assert hftl(["run", recipe, "--config", config, f"{node}.streaming=true"]) == 2
    err = capsys.readouterr().err
    assert f"`{node}.streaming` is true, but the {recipe} recipe needs its whole splits" in err
