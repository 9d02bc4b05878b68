"""An adapt run resumes each method from its own checkpoints, which hold that run's state only.

`hftl run adapt` trains source-only, then the method, each with a fresh Accelerator state: a method's
checkpoint holds its own model, optimizer and scheduler (one weights file), and of a LoRA model only what
trains. The second method is resumed from a mid-run checkpoint (ADDA: in stage 2, after the frozen source
encoder was copied) and must end exactly where the uninterrupted run ended.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import adapt_config
from safetensors import safe_open
from safetensors.torch import load_file

from hftl.cli import main as hftl

LORA = {"_component_": "hftl.adapters.Lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]}
CASES = {
    "dann_lora": ("hftl.adaptation.DANN", LORA),
    "adda_full": ("hftl.adaptation.ADDA", {"_component_": "hftl.adapters.FullFinetune"}),
}


def _run(cfg: dict, path: Path, capsys) -> str:
    path.write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(path)]) == 0
    return capsys.readouterr().out


def _keys(checkpoint: Path) -> set[str]:
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("case", CASES)
def test_second_method_resumes_from_its_own_small_checkpoint(tmp_path, tiny_models, capsys, case):
    method, adapter = CASES[case]
    cfg = adapt_config(tmp_path, tiny_models["bert"], method, hidden_features=16)
    cfg["adapter"] = adapter
    cfg["report"]["baselines"] = ["source_only"]
    cfg["train"].update(save_every_steps=3, keep_last=4)  # 2 epochs x 5 steps: saves at 3, 6, 9, 10
    reference = Path(cfg["output_dir"])
    _run(cfg, tmp_path / "reference.yaml", capsys)
    name = method.rsplit(".", 1)[-1].lower()
    checkpoints = reference / "runs" / name / "checkpoints"

    mid = checkpoints / "step-00000006"
    files = {p.name for p in mid.iterdir()}
    assert (
        "model_1.safetensors" not in files and "optimizer_1.bin" not in files
    )  # source-only's state is not here
    keys = _keys(mid)
    if adapter is LORA:  # the frozen base stays out, the adapter, head and discriminator are in
        assert not any("base_layer" in k or "word_embeddings" in k for k in keys), sorted(keys)[:5]
        assert any("lora_A" in k for k in keys) and any(k.startswith("method.") for k in keys)
    else:  # full fine-tuning, and ADDA's frozen source encoder: copied in place at stage 2, so saved
        assert any(k.startswith("method.source_encoder.") for k in keys)

    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)  # the run marker comes along: the same run, moved
    for step in ("step-00000009", "step-00000010"):
        shutil.rmtree(resumed / "runs" / name / "checkpoints" / step)
    cfg["output_dir"] = str(resumed)
    out = _run(cfg, tmp_path / "resumed.yaml", capsys)
    assert f"Resumed from {resumed / 'runs' / name / 'checkpoints' / 'step-00000006'} (step 6" in out, out[
        -2000:
    ]

    ref_metrics = json.loads((reference / "metrics.json").read_text())["results"]
    got_metrics = json.loads((resumed / "metrics.json").read_text())["results"]
    for run in ("source_only", name):
        for key in ("selected_step", "target_test_acc", "source_val_acc"):
            assert got_metrics[run][key] == ref_metrics[run][key], (run, key)
        # every score of every evaluation; `eval_train_*` are the loss's means since the previous evaluation,
        # which a resumed run has only from the checkpoint on (they are not part of the checkpoint)
        scores = [[{k: v for k, v in h.items() if not k.startswith("eval_train_")} for h in m[run]["history"]]
                  for m in (ref_metrics, got_metrics)]  # fmt: skip
        assert scores[0] == scores[1], run
    for file in sorted((reference / "model").rglob("*.safetensors")):
        ref, got = load_file(str(file)), load_file(str(resumed / file.relative_to(reference)))
        assert ref.keys() == got.keys()
        assert all((ref[k] == got[k]).all() for k in ref), file.name
