"""DAPT/TAPT: the masked-LM collator, the masked-LM head on an encoder, and the dapt recipe end to end."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from helpers import dump, write_text_csv
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from hftl.cli import main as hftl
from hftl.data.keys import EXAMPLE_KEY
from hftl.data.masked_lm import IGNORE_INDEX, MaskedLMCollator, tokenize_for_mlm
from hftl.encoders.mlm import (
    HEAD_FILE,
    PROVENANCE_FILE,
    HeadWarmup,
    MaskedLMConfig,
    build_masked_lm,
    check_encoder_dir,
    head_state,
    predicting_only,
    save_encoder,
)
from hftl.errors import ConfigError, DataError

TEXTS = ["the movie was good", "a very bad film and not a great book", "it", "this is the book of the film"]


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models["bert"])


def rows_of(tokenizer, texts=TEXTS, **kwargs) -> datasets.Dataset:
    data = datasets.Dataset.from_dict({"text": list(texts), "label": list(range(len(texts)))})
    return tokenize_for_mlm(data, tokenizer, max_length=kwargs.pop("max_length", 32), **kwargs)


def keyed(rows: datasets.Dataset, epoch: int = 0, order=None) -> list[dict]:
    order = range(len(rows)) if order is None else order
    return [{**rows[i], "label": 1, EXAMPLE_KEY: (i, epoch)} for i in order]


# -- collator --------------------------------------------------------------------------------------------------
def test_collator_masks_only_real_text_tokens_and_never_labels(tokenizer):
    rows = rows_of(tokenizer)
    assert (
        rows.column_names[:1] == ["input_ids"]
        and "label" not in rows.column_names
        and "text" not in rows.column_names
    )
    collator = MaskedLMCollator(
        tokenizer, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0
    )
    batch = collator(keyed(rows))
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "labels",
    }  # the class label is dropped
    original = tokenizer(TEXTS, padding="longest", return_tensors="pt")
    special = torch.isin(original["input_ids"], torch.tensor(tokenizer.all_special_ids))
    real = (original["attention_mask"] == 1) & ~special
    # every real token is chosen (probability 1) and predicted; [CLS], [SEP] and padding never are
    assert torch.equal(batch["labels"] != IGNORE_INDEX, real)
    assert torch.equal(batch["labels"][real], original["input_ids"][real])
    assert (batch["input_ids"][real] == tokenizer.mask_token_id).all()
    assert torch.equal(batch["input_ids"][~real], original["input_ids"][~real])
    assert torch.equal(batch["attention_mask"], original["attention_mask"])


def test_collator_at_bert_rates_never_touches_special_or_padding_positions(tokenizer):
    rows = rows_of(tokenizer, TEXTS * 25)
    batch = MaskedLMCollator(tokenizer, seed=3)(keyed(rows))
    original = tokenizer(TEXTS * 25, padding="longest", return_tensors="pt")
    special = torch.isin(original["input_ids"], torch.tensor(tokenizer.all_special_ids))
    chosen = batch["labels"] != IGNORE_INDEX
    assert not (chosen & special).any()
    assert torch.equal(batch["input_ids"][special], original["input_ids"][special])
    share = chosen.sum() / (~special).sum()
    assert 0.10 < share < 0.20  # 15 % of the real tokens
    changed = batch["input_ids"] != original["input_ids"]
    assert not (changed & ~chosen).any()  # only chosen tokens are replaced (80 % [MASK], 10 % random)


def test_masks_depend_on_the_example_key_only(tokenizer):
    rows = rows_of(tokenizer, TEXTS * 4)
    collator = MaskedLMCollator(tokenizer, mlm_probability=0.5, seed=0)
    together = collator(keyed(rows))
    alone = collator(keyed(rows, order=[5]))
    width = alone["labels"].shape[1]
    # neither the batch size nor the position in the batch matters
    assert torch.equal(together["labels"][5, :width], alone["labels"][0])
    reversed_batch = collator(keyed(rows, order=list(reversed(range(len(rows))))))
    assert torch.equal(reversed_batch["labels"].flip(0), together["labels"])
    new_epoch = collator(keyed(rows, epoch=1))
    assert not torch.equal(new_epoch["labels"], together["labels"])
    fixed = MaskedLMCollator(tokenizer, mlm_probability=0.5, seed=0, fixed=True)
    assert torch.equal(fixed(keyed(rows, epoch=0))["labels"], fixed(keyed(rows, epoch=7))["labels"])


def test_whole_word_masking_chooses_every_piece_of_a_word(tokenizer):
    texts = ["xylophone quizzically jumped", "zebra wizard"] * 20  # letters only: words split into pieces
    rows = rows_of(tokenizer, texts, whole_word_mask=True)
    assert "offset_mapping" in rows.column_names
    batch = MaskedLMCollator(tokenizer, mlm_probability=0.3, whole_word_mask=True, seed=1)(keyed(rows))
    for ids, labels in zip(tokenizer(texts)["input_ids"], batch["labels"], strict=True):
        tokens = tokenizer.convert_ids_to_tokens(ids)
        chosen = (labels[: len(ids)] != IGNORE_INDEX).tolist()
        words, current = [], []
        for token, flag in zip(tokens[1:-1], chosen[1:-1], strict=True):  # [CLS] ... [SEP]
            if not token.startswith("##") and current:
                words.append(current)
                current = []
            current.append(flag)
        words.append(current)
        assert all(len(set(w)) == 1 for w in words), (tokens, chosen)  # a word is chosen whole or not at all
    assert (batch["labels"] != IGNORE_INDEX).any()


def test_long_texts_become_windows_instead_of_being_cut(tokenizer):
    long = " ".join(["good"] * 40)
    windows = rows_of(tokenizer, [long], max_length=16)
    assert len(windows) == 3  # 40 tokens in windows of 14 (+ [CLS], [SEP])
    assert all(len(ids) <= 16 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
               for ids in windows["input_ids"])  # fmt: skip
    assert len(rows_of(tokenizer, [long], max_length=16, split_long_texts=False)) == 1


def test_collator_and_config_reject_impossible_settings(tokenizer):
    with pytest.raises(ConfigError, match="whole_word_mask"):
        MaskedLMCollator(tokenizer, whole_word_mask=True, mask_replace_prob=0.8)
    with pytest.raises(ConfigError, match="mlm"):
        MaskedLMCollator(tokenizer, mask_replace_prob=0.8, random_replace_prob=0.5)
    no_offsets = rows_of(tokenizer)  # tokenized without word boundaries
    with pytest.raises(DataError, match="offset_mapping"):
        MaskedLMCollator(tokenizer, whole_word_mask=True)(keyed(no_offsets))
    with pytest.raises(ConfigError) as err:
        MaskedLMConfig(mlm_probability=0.0, head_warmup_steps=-1, heldout_size=1.5)
    assert len(err.value.problems) == 3 and "`mlm.heldout_size`" in str(err.value)


# -- the masked-LM head on an encoder --------------------------------------------------------------------------
def test_new_head_is_tied_to_the_encoders_embeddings_and_the_encoder_is_shared(tiny_models):
    backbone = AutoModel.from_pretrained(tiny_models["bert"])
    mlm, source = build_masked_lm(backbone, checkpoint=tiny_models["bert"])
    assert source == "new"  # the tiny directory holds a bare BertModel, like all-MiniLM-L6-v2
    assert mlm.bert is backbone and backbone.pooler is not None  # nothing of the encoder is dropped
    assert mlm.get_output_embeddings().weight is backbone.get_input_embeddings().weight
    assert "cls.predictions.decoder.weight" not in head_state(mlm)  # tied: stored once, in the encoder


def test_predicting_only_the_chosen_positions_gives_their_full_logits(tiny_models, tokenizer):
    mlm, _ = build_masked_lm(AutoModel.from_pretrained(tiny_models["bert"]), checkpoint=None)
    mlm.eval()
    batch = MaskedLMCollator(tokenizer, mlm_probability=0.4, seed=0)(keyed(rows_of(tokenizer)))
    labels = batch.pop("labels")
    chosen = labels != IGNORE_INDEX
    with torch.no_grad():
        full = mlm(**batch).logits
        with predicting_only(mlm, chosen):
            gathered = mlm(**batch).logits
        after = mlm(**batch).logits  # the hook is gone again
    assert gathered.shape == (int(chosen.sum()), full.shape[-1])
    torch.testing.assert_close(gathered, full[chosen])
    assert after.shape == full.shape


def test_saved_encoder_loads_as_automodel_and_brings_its_head_back(tiny_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    mlm, _ = build_masked_lm(AutoModel.from_pretrained(tiny_models["bert"]), checkpoint=tiny_models["bert"])
    with torch.no_grad():
        for p in mlm.parameters():
            p.add_(0.01)  # "trained"
    path = save_encoder(mlm, tokenizer, tmp_path / "encoder", provenance={"steps": 1})
    assert {HEAD_FILE, PROVENANCE_FILE, "config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in path.iterdir()
    }
    reloaded = AutoModel.from_pretrained(path)
    for name, tensor in mlm.bert.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    again, source = build_masked_lm(reloaded, checkpoint=str(path))
    assert source == "head file"
    for name, tensor in head_state(mlm).items():
        assert torch.equal(head_state(again)[name], tensor), name
    save_encoder(again, tokenizer, path, provenance={"steps": 2})  # its own directory is replaced
    assert json.loads((path / PROVENANCE_FILE).read_text())["steps"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_directory_hftl_did_not_write_is_never_replaced(tmp_path):
    foreign = tmp_path / "encoder"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not written by hftl"):
        check_encoder_dir(foreign)
    check_encoder_dir(tmp_path / "absent")  # fine


def test_an_encoder_without_a_masked_lm_class_is_a_config_error(tiny_models):
    with pytest.raises(ConfigError, match="masked-LM"):
        build_masked_lm(AutoModel.from_pretrained(tiny_models["vit"]), checkpoint=None)


def test_head_warmup_freezes_the_encoder_for_its_steps_then_restores_it(tiny_models):
    mlm, _ = build_masked_lm(AutoModel.from_pretrained(tiny_models["bert"]), checkpoint=None)
    mlm.bert.embeddings.position_embeddings.weight.requires_grad_(False)  # frozen by the user: stays frozen
    optimizer = torch.optim.AdamW([p for p in mlm.parameters() if p.requires_grad])
    warmup = HeadWarmup(mlm.bert, optimizer, steps=3)
    head = [p for n, p in mlm.named_parameters() if n.startswith("cls.")]
    warmup(0)
    assert not any(p.requires_grad for p in mlm.bert.parameters()) and all(p.requires_grad for p in head)
    warmup(2)
    assert not mlm.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    warmup(3)
    assert mlm.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    assert not mlm.bert.embeddings.position_embeddings.weight.requires_grad
    resumed = HeadWarmup(mlm.bert, optimizer, steps=3)
    resumed(5)  # a run resumed after the warm-up changes nothing
    assert mlm.bert.encoder.layer[0].attention.self.query.weight.requires_grad


# -- the recipe, end to end through the CLI --------------------------------------------------------------------
def dapt_config(tiny_models, tmp_path: Path, target: str, **over) -> dict:
    cfg = {
        "recipe": "dapt",
        "output_dir": str(tmp_path / "dapt"),
        "seed": 0,
        "encoder": {
            "_component_": "hftl.encoders.TextEncoder",
            "model": tiny_models["bert"],
            "max_length": 16,
        },
        "target": {"_component_": "hftl.data.ClassificationData", "path": target},
        "mlm": {"head_warmup_steps": 2, "heldout_size": 0.25},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 5e-3},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "eval_every_steps": 2,
            "metric_for_best": "loss",
            "log_every_steps": 2,
        },
    }
    for key, value in over.items():
        cfg[key] = value
    return cfg


def test_dapt_then_finetune_and_lora_from_its_encoder_through_the_cli(tiny_models, tmp_path):
    target = tmp_path / "target.csv"  # unlabelled target text: no label column at all
    target.write_text("text\n" + "".join(f"the film was {w} and the book was not\n" for w in TEXTS * 10))
    cfg = dapt_config(tiny_models, tmp_path, str(target))
    assert hftl(["run", "dapt", "--config", dump(cfg, tmp_path / "dapt.yaml")]) == 0

    out = tmp_path / "dapt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["head"] == "new" and metrics["texts"] == {"train": 30, "heldout": 10}
    assert metrics["heldout"]["loss"] < metrics["heldout_before"]["loss"]  # it learned the target text
    assert "heldout_after_head_warmup" in metrics  # the unchanged encoder with a fitted head, for reference
    encoder = out / "encoder"
    before, after = (load_file(str(Path(d) / "model.safetensors")) for d in (tiny_models["bert"], encoder))
    assert set(before) == set(after)  # the same architecture as the input, pooler included
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           after["encoder.layer.0.attention.self.query.weight"])  # fmt: skip
    marker = json.loads((out / ".hftl_run.json").read_text())
    assert "encoder" in marker["outputs"]  # --overwrite knows it is hftl's

    labelled = write_text_csv(tmp_path / "labelled.csv", 48, 0)
    for name, adapter in (("full", "hftl.adapters.FullFinetune"), ("lora", "hftl.adapters.Lora")):
        ft = {
            "recipe": "finetune",
            "output_dir": str(tmp_path / f"ft_{name}"),
            "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": str(encoder), "max_length": 16},
            "adapter": {"_component_": adapter},
            "head": {"_component_": "hftl.models.LinearHead"},
            "data": {"_component_": "hftl.data.ClassificationData", "path": str(labelled)},
            "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
            "train": {"epochs": 1, "batch_size": 8},
        }
        assert hftl(["run", "finetune", "--config", dump(ft, tmp_path / f"ft_{name}.yaml")]) == 0
        meta = json.loads((tmp_path / f"ft_{name}" / "model" / "hftl_model.json").read_text())
        assert meta["base_model"] == str(encoder)
    import hftl as hftl_api

    lora = hftl_api.load(tmp_path / "ft_lora", device="cpu").model.encoder.base_model
    embeddings = lora.get_input_embeddings().weight.detach()  # LoRA left them as the DAPT run wrote them
    assert torch.equal(embeddings, after["embeddings.word_embeddings.weight"])


def test_rerunning_the_same_dapt_command_resumes_the_finished_run(tiny_models, tmp_path, capsys):
    target = write_text_csv(tmp_path / "t.csv", 40, 0)
    config = dump(
        dapt_config(tiny_models, tmp_path, str(target), mlm={"head_warmup_steps": 0}), tmp_path / "d.yaml"
    )
    assert hftl(["run", "dapt", "--config", config]) == 0
    first = load_file(str(tmp_path / "dapt" / "encoder" / "model.safetensors"))
    # the same command again: loads the final checkpoint (tied tensors stored once) and writes the same encoder
    assert hftl(["run", "dapt", "--config", config]) == 0
    second = load_file(str(tmp_path / "dapt" / "encoder" / "model.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    # a file of the user's inside encoder/ is never deleted: the run stops before training
    (tmp_path / "dapt" / "encoder" / "notes.txt").write_text("mine")
    assert hftl(["run", "dapt", "--config", config, "--overwrite", "optimizer.lr=1e-3"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "dapt" / "encoder" / "notes.txt").exists()
    (tmp_path / "dapt" / "encoder" / "notes.txt").unlink()
    # --overwrite keeps encoder/ (it cannot attribute its files one by one); the new run replaces it whole
    assert hftl(["run", "dapt", "--config", config, "--overwrite", "optimizer.lr=1e-3"]) == 0
    third = load_file(str(tmp_path / "dapt" / "encoder" / "model.safetensors"))
    assert not all(
        torch.equal(first[k], third[k]) for k in first
    )  # trained again, with the new learning rate


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.metric_for_best=macro_f1", "macro_f1 means nothing"),
        ("target.streaming=true", "streaming"),
        ("adapter._component_=hftl.adapters.Lora", "adapter"),
        ("mlm.heldout_size=1000", "heldout_size"),
    ],
)
def test_dapt_config_errors_are_one_line_and_write_nothing(tiny_models, tmp_path, capsys, override, message):
    target = write_text_csv(tmp_path / "t.csv", 40, 0)
    config = dump(dapt_config(tiny_models, tmp_path, str(target)), tmp_path / "d.yaml")
    assert hftl(["run", "dapt", "--config", config, override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "dapt").exists()


def test_shipped_tapt_configs_validate(shipped_data):
    from hftl.config import resolve_config_path

    for name in ("text/minilm_tapt_kitchen", "text/minilm_dapt_books_kitchen"):
        shipped_data(name)
        assert hftl(["validate", "--config", name]) == 0
        assert yaml.safe_load(Path(resolve_config_path(name)).read_text())["recipe"] == "dapt"
