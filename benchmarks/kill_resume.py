"""Kill and resume: SIGKILL `hftl run finetune` at random moments, restart it, compare with an uninterrupted run.

Run:
    python benchmarks/kill_resume.py --quick     # CPU: tiny BERT, full + LoRA + streamed, 5 kills each (~4-8 min)
    python benchmarks/kill_resume.py             # GPU: all-MiniLM-L6-v2, bf16, more data and 8 kills each
    python benchmarks/kill_resume.py --quick --model minilm --adapters lora --kills 3

For each variant (full fine-tuning, LoRA, and full fine-tuning on a streamed train split with
`data.streaming=true train.max_steps=N`) the script trains an SST-2 slice (the first `--rows` phrases of
SST-2 train, validation = the first `--val-rows` of the ALPS dev split, test = GLUE SST-2 dev, 872
sentences) once without interruption, then runs the same command again in a fresh output folder and
SIGKILLs it `--kills` times, restarting the same command after every kill until it finishes. Kill moments
are drawn from a seeded RNG, three kinds mixed:

* `save` (3 of 5 kills by default, see `MODE_CYCLE`): during the first checkpoint save after a random step, at a
  random stage: once its `.tmp-step-*` folder holds k of the files a checkpoint has (k = 0 up to all of
  them, `COMPLETE` written but the folder not yet renamed), or during the rotation that deletes the oldest
  checkpoint or the write of the best weights (`.tmp-del-*`, `.tmp-old-*`, `*.tmp`); the interesting case,
  since the process dies with a half-written checkpoint on disk;
* `step`: when the progress bar reaches a random step;
* `time`: at a random wall-clock moment after launch (start-up included).

The step is read from the recipe's own progress bar (`TQDM_MININTERVAL=0`, so every step is printed), the
checkpoint a restart resumes from from its "Resumed from ... (step N" line. After every kill the script
checks that each `step-*` folder on disk is a complete checkpoint (`list_checkpoints`), i.e. that no kill
left a half-written checkpoint where resume would look. At the end every tensor of the saved model
(`model/**/*.safetensors`) must equal the reference bit for bit and `metrics.json` (test and validation
reports, every validation in `history`, best step) must be equal as JSON. On a GPU (or with `--control`)
a second uninterrupted run shows whether two plain runs are bit-identical at all there (cuDNN/atomics).
Writes benchmarks/results/kill_resume.md and kill_resume.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from recipe_watch import REPO, ChildRun, dir_bytes, machine, model_path, read_sst2, run_recipe

RESULTS = REPO / "benchmarks" / "results"
KillMode = Literal["save", "step", "time"]
MODE_CYCLE: tuple[KillMode, ...] = ("save", "step", "save", "time")  # K=5: 3 during a save, 1 step, 1 time
LORA = {"_component_": "hftl.adapters.Lora", "r": 8, "alpha": 16, "dropout": 0.1,
        "target_modules": ["query", "value"]}  # fmt: skip


# -- data, configs, kills ---------------------------------------------------------------------------------
def prepare_data(workdir: Path, *, rows: int, val_rows: int) -> dict[str, str]:
    files = {"train": ("train.tsv", rows), "validation": ("dev.tsv", val_rows), "test": ("test.tsv", None)}
    out = {}
    for split, (name, n) in files.items():
        out[split] = str(workdir / f"{split}.csv")
        with open(out[split], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(read_sst2(name, n))
    return out


@dataclass
class Variant:
    name: str
    adapter: Literal["full", "lora"]
    streaming_steps: int | None = None  # train.max_steps of a streamed run; None: in-memory, epochs


def write_config(path: Path, variant: Variant, args: argparse.Namespace, model: str, data: dict) -> Path:
    import yaml

    train = {"epochs": args.epochs, "batch_size": args.batch_size, "save_every_steps": args.save_every,
             "eval_every_steps": args.eval_every, "keep_last": args.keep_last, "log_every_steps": 10,
             "mixed_precision": args.precision}  # fmt: skip
    data_cfg = {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": data,
                "input_column": "text", "label_column": "label", "label_names": ["negative", "positive"]}  # fmt: skip
    if variant.streaming_steps:
        train["max_steps"] = variant.streaming_steps
        data_cfg.update(streaming=True, shuffle_buffer=args.shuffle_buffer)
    cfg = {
        "recipe": "finetune",
        "seed": 7,
        "encoder": {
            "_component_": "hftl.encoders.TextEncoder",
            "model": model,
            "max_length": args.max_length,
        },
        "adapter": LORA if variant.adapter == "lora" else {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.1},
        "data": data_cfg,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": args.lr},
        "train": train,
    }
    path.write_text(f"# Run: hftl run finetune --config {path} output_dir=DIR\n" + yaml.safe_dump(cfg))
    return path


def checkpoint_dir_state(out: Path) -> dict:
    """Step folders on disk, which of them are complete checkpoints, leftovers and bytes used."""
    from hftl.training.checkpoint import list_checkpoints

    root = out / "checkpoints"
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    valid = [p.name for p in list_checkpoints(out)]
    used = dir_bytes(root)
    return {"step_dirs": [n for n in names if n.startswith("step-")], "valid": valid,
            "leftovers": [n for n in names if n.startswith(".tmp-") or n.endswith(".tmp")], "bytes": used}  # fmt: skip


class KillPlan:
    """The seeded kill moment of each attempt: a mode and a step (or a delay) inside the part still to run.

    A `save` kill also draws how far into the save to strike: once the `.tmp-step-*` folder holds k of the
    ``files_per_save`` files a complete checkpoint has (k = 0: just created; k = all: `COMPLETE` written,
    not yet renamed), or k = all + 1: during the rotation or the best-weights write (`.tmp-del-*`,
    `.tmp-old-*`, `*.tmp`). A save that ends between two polls is a miss; after two misses any stage counts.
    """

    def __init__(
        self, *, kills: int, seed: int, total_steps: int, startup_s: float, step_s: float, files_per_save: int
    ):
        self.rng, self.kills, self.total = random.Random(seed), kills, total_steps
        self.startup_s, self.step_s, self.files = startup_s, step_s, files_per_save
        self.modes = [MODE_CYCLE[i % len(MODE_CYCLE)] for i in range(kills)]
        self.rng.shuffle(self.modes)

    def trigger(
        self, attempt: int, resumed: int, out: Path
    ) -> tuple[dict, Callable[[ChildRun, float], str | None]]:
        """Attempt ``attempt`` (0-based) starting from step ``resumed``: its plan and its kill trigger."""
        mode, left = self.modes[attempt], self.kills - attempt
        hi = resumed + max(1, (self.total - resumed) // left)  # leaves room for the kills still to come
        at = self.rng.randint(min(resumed + 1, self.total), min(hi, self.total))
        delay = self.rng.uniform(
            0.0, 0.8 * (self.startup_s + self.step_s * (hi - resumed))
        )  # 0.8: load varies
        stage = self.rng.randint(0, self.files + 1)
        if mode == "time":
            return (
                {"mode": mode, "delay_s": round(delay, 2)},
                lambda run, elapsed: f"{elapsed:.1f} s after launch" if elapsed >= delay else None,
            )
        if mode == "step":
            return (
                {"mode": mode, "from_step": at},
                lambda run, elapsed: (
                    f"step {run.step} reached" if run.step is not None and run.step >= at else None
                ),
            )
        return {"mode": mode, "from_step": at, "stage": stage}, self._save_trigger(
            out / "checkpoints", at, stage
        )

    def _save_trigger(self, root: Path, at: int, stage: int) -> Callable[[ChildRun, float], str | None]:
        seen, misses = set(), [0]

        def fire(run: ChildRun, elapsed: float) -> str | None:
            if run.step is None or run.step < at:
                return None
            try:
                names = [
                    e.name for e in os.scandir(root) if e.name.startswith(".tmp-") or e.name.endswith(".tmp")
                ]
            except FileNotFoundError:
                return None
            saves = [n for n in names if n.startswith(".tmp-step-")]
            misses[0] += len(seen - set(saves))  # a save we watched ended before its stage came
            seen.intersection_update(saves)
            seen.update(saves)
            for name in sorted(names):
                if name not in saves:  # rotation (.tmp-del-*, .tmp-old-*) or the best-weights file
                    if stage > self.files or misses[0] >= 2:
                        return f"during save: {name}"
                    continue
                try:
                    files = len(os.listdir(root / name))
                except FileNotFoundError:  # renamed into place since the scan
                    continue
                if files >= stage or misses[0] >= 2:
                    return f"during save: {name} ({files}/{self.files} files)"
            return None

        return fire


# -- comparison -------------------------------------------------------------------------------------------
def compare(reference: Path, other: Path) -> dict:
    """Every tensor of ``model/**/*.safetensors`` bit for bit, and metrics.json as JSON."""
    import torch
    from safetensors.torch import load_file

    names = sorted(p.relative_to(reference / "model") for p in (reference / "model").rglob("*.safetensors"))
    tensors = different = 0
    max_diff, first_diffs = 0.0, []
    for name in names:
        ref, got = (load_file(str(reference / "model" / name)), load_file(str(other / "model" / name)))
        if ref.keys() != got.keys():
            raise SystemExit(f"{other / 'model' / name}: tensor names differ from the reference")
        for key, tensor in ref.items():
            tensors += 1
            if not torch.equal(tensor, got[key]):
                different += 1
                first_diffs.append(f"{name}:{key}")
                max_diff = max(max_diff, (tensor.float() - got[key].float()).abs().max().item())
    ref_m = json.loads((reference / "metrics.json").read_text())
    got_m = json.loads((other / "metrics.json").read_text())
    return {
        "files": [str(n) for n in names], "tensors": tensors, "tensors_different": different,
        "max_abs_diff": max_diff, "first_different": first_diffs[:5],
        "metrics_equal": ref_m == got_m, "metrics_keys_different": sorted(k for k in ref_m if ref_m[k] != got_m.get(k)),
        "test_accuracy": (ref_m["test"]["accuracy"], got_m["test"]["accuracy"]),
        "test_loss": (ref_m["test"]["loss"], got_m["test"]["loss"]),
        "validations": (len(ref_m["history"]), len(got_m["history"])), "best_step": (ref_m["best_step"], got_m["best_step"]),
    }  # fmt: skip


# -- one variant ------------------------------------------------------------------------------------------
@dataclass
class Attempt:
    attempt: int
    plan: dict
    resumed_from: int | None
    killed: str | None
    killed_at_step: int | None
    wall_s: float
    first_step_s: float | None  # launch to its first optimizer step: the start-up a restart pays
    after: dict = field(default_factory=dict)  # checkpoints/ right after the process ended


def run_attempts(
    config: Path, out: Path, plan: KillPlan, *, kills: int, tag: str
) -> tuple[list[Attempt], int]:
    """Launches the same command into ``out`` until it finishes, killing attempt i < ``kills`` by ``plan``.

    Returns:
        The attempts, and the peak size of ``out/checkpoints`` sampled every 0.25 s.
    """
    attempts, peak = [], {"bytes": 0, "t": 0.0}

    def sample_disk() -> None:
        now = time.perf_counter()
        if now - peak["t"] > 0.25:
            peak["t"], peak["bytes"] = (now, max(peak["bytes"], dir_bytes(out / "checkpoints")))

    for i in range(kills + 1):  # the kills, then the run that finishes
        before = checkpoint_dir_state(out)["valid"]
        resumed = int(before[-1].split("-")[1]) if before else 0
        kill_plan, fire = plan.trigger(i, resumed, out) if i < kills else ({"mode": "none"}, None)
        run = run_recipe(config, [f"output_dir={out}"], log_path=out.parent / f"killed_{i}.log",
                         hf_cache=out.parent / "killed.hf", trigger=fire, on_poll=sample_disk)  # fmt: skip
        if run.step is not None and (run.resumed_from or 0) != resumed:  # None: killed during start-up
            raise SystemExit(
                f"attempt {i} resumed from step {run.resumed_from}, expected {resumed}; see its log"
            )
        state = checkpoint_dir_state(out)
        if state["step_dirs"] != state["valid"]:  # no kill may leave a step-* folder that resume trips on
            raise SystemExit(f"incomplete step-* folder after attempt {i}: {state}")
        attempts.append(
            Attempt(i, kill_plan, resumed, run.killed, run.step, run.wall_s, run.first_step_s, state)
        )
        print(f"[{tag}] attempt {i}: resumed from {resumed}, "
              f"{'killed ' + run.killed if run.killed else 'finished'} at step {run.step}/{plan.total}", flush=True)  # fmt: skip
        if not run.killed:
            return attempts, peak["bytes"]
    raise SystemExit(f"{tag}: the run did not finish after {kills} kills and one restart")


def run_variant(variant: Variant, args: argparse.Namespace, model: str, data: dict, workdir: Path) -> dict:
    root = workdir / variant.name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = write_config(root / "config.yaml", variant, args, model, data)

    def plain(name: str) -> ChildRun:
        out = root / name
        print(f"[{variant.name}] {name}: uninterrupted run", flush=True)
        return run_recipe(
            config, [f"output_dir={out}"], log_path=root / f"{name}.log", hf_cache=root / f"{name}.hf"
        )

    ref = plain("reference")
    control = None
    if args.control:
        plain("control")
        control = compare(root / "reference", root / "control")
    total = ref.total_steps or 0
    step_s = (ref.wall_s - (ref.first_step_s or 0)) / max(total, 1)  # incl. evaluation, saving and shutdown
    newest = checkpoint_dir_state(root / "reference")["valid"][-1]
    files = len(list((root / "reference" / "checkpoints" / newest).rglob("*")))  # files of one complete save
    seed = args.seed + zlib.crc32(variant.name.encode())  # each variant its own kill moments
    plan = KillPlan(kills=args.kills, seed=seed, total_steps=total, startup_s=ref.first_step_s or 0,
                    step_s=step_s, files_per_save=files)  # fmt: skip

    out = root / "killed"
    attempts, peak_bytes = run_attempts(config, out, plan, kills=args.kills, tag=variant.name)
    final = checkpoint_dir_state(out)
    return {
        "variant": variant.name, "adapter": variant.adapter, "streaming_steps": variant.streaming_steps,
        "total_steps": total, "reference_wall_s": ref.wall_s, "reference_first_step_s": ref.first_step_s,
        "attempts": [asdict(a) for a in attempts], "compare": compare(root / "reference", out), "control": control,
        "interrupted_wall_s": sum(a.wall_s for a in attempts),
        "checkpoint_bytes_end": final["bytes"], "checkpoint_dirs_end": final["valid"],
        "checkpoint_bytes_peak": max(peak_bytes, final["bytes"]),
        "one_checkpoint_bytes": checkpoint_size(out, final["valid"]),
    }  # fmt: skip


def checkpoint_size(out: Path, names: list[str]) -> int:
    folder = out / "checkpoints" / names[-1]
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- report -----------------------------------------------------------------------------------------------
def redone(attempts: list[dict]) -> list[int | None]:
    """Steps trained again after each kill: step reached when killed − step the next attempt resumed from."""
    out = []
    for a, b in zip(attempts, attempts[1:], strict=False):
        out.append(None if a["killed_at_step"] is None else max(0, a["killed_at_step"] - b["resumed_from"]))
    return out


def variant_lines(r: dict) -> list[str]:
    atts = r["attempts"]
    lines = [f"### {r['variant']}", "",
             "| attempt | started at step | kill rule | killed | at step | left on disk (complete; unfinished) | steps redone | wall s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for a, lost in zip(atts, [*redone(atts), None], strict=True):
        plan = a["plan"]
        rule = plan["mode"] + (f" ≥ step {plan['from_step']}" if "from_step" in plan else "")
        rule += f", stage {plan['stage']}" if "stage" in plan else ""
        rule += f" at {plan['delay_s']} s" if "delay_s" in plan else ""
        disk = f"{', '.join(a['after']['valid']) or '—'}; {', '.join(a['after']['leftovers']) or '—'}"
        lines.append(f"| {a['attempt']} | {a['resumed_from']} | {rule} | {a['killed'] or 'finished'} | "
                     f"{'start-up' if a['killed_at_step'] is None else a['killed_at_step']} / {r['total_steps']} | {disk} | {'—' if lost is None else lost} | "
                     f"{a['wall_s']:.1f} |")  # fmt: skip
    return [*lines, ""]


def _control(r: dict) -> str:
    c = r["control"]
    if c["tensors_different"] == 0 and c["metrics_equal"]:
        return f"{r['variant']} identical"
    return f"{r['variant']} differ (max abs diff {c['max_abs_diff']:.2g})"


def write_report(results: list[dict], args: argparse.Namespace, command: str) -> Path:
    mib = 2**20
    lines = [
        "# Kill and resume: SIGKILLed runs end bit-identical to an uninterrupted one", "",
        f"Command: `{command}`  ", f"Machine: {machine()}  ",
        f"Model: {args.model}; data: first {args.rows} SST-2 train phrases, validation {args.val_rows} ALPS dev, "
        f"test 872 (GLUE dev); batch {args.batch_size}, max length {args.max_length}, {args.epochs} epochs "
        f"(streamed: `train.max_steps`), checkpoint every {args.save_every} steps, validation every "
        f"{args.eval_every}, `keep_last={args.keep_last}`, precision `{args.precision}`, kill seed {args.seed} "
        "(+ crc32 of the variant name).", "",
        "| variant | steps | kills (during a save) | weights identical (tensors) | metrics.json identical | "
        "test acc ref / resumed | steps redone | wall ref → interrupted (ratio) | checkpoints on disk at end (peak) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        c, atts = r["compare"], r["attempts"]
        kills = [a for a in atts if a["killed"]]
        saves = sum(a["killed"].startswith("during save") for a in kills)
        same = c["tensors_different"] == 0
        lines.append(
            f"| {r['variant']} | {r['total_steps']} | {len(kills)} ({saves}) | "
            f"**{'yes' if same else 'NO'}** ({c['tensors'] - c['tensors_different']}/{c['tensors']}) | "
            f"**{'yes' if c['metrics_equal'] else 'NO: ' + ', '.join(c['metrics_keys_different'])}** | "
            f"{c['test_accuracy'][0]:.4f} / {c['test_accuracy'][1]:.4f} | {sum(x or 0 for x in redone(atts))} | "
            f"{r['reference_wall_s']:.0f} s → {r['interrupted_wall_s']:.0f} s ({r['interrupted_wall_s'] / r['reference_wall_s']:.2f}×; "
            f"{len(atts)} start-ups {sum(a['first_step_s'] or a['wall_s'] for a in atts):.0f} s, ref {r['reference_first_step_s']:.0f} s) | "
            f"{len(r['checkpoint_dirs_end'])} × {r['one_checkpoint_bytes'] / mib:.1f} MiB = "
            f"{r['checkpoint_bytes_end'] / mib:.1f} MiB ({r['checkpoint_bytes_peak'] / mib:.1f}) |"
        )  # fmt: skip
    controls = [r for r in results if r["control"]]
    if controls:
        lines += ["", "Control (two uninterrupted runs): " + "; ".join(_control(r) for r in controls)]
    lines += ["", "Checkpoints on disk include `best_trainable.safetensors` (the best validation weights); "
              "peak = the largest size sampled every 0.25 s during the interrupted run (a new checkpoint is "
              "written before the oldest is deleted). Wall times count each process from launch to exit, "
              "start-up included (the interrupted run pays one start-up per restart: launch to first optimizer "
              "step, or to the kill when it came first).", "",
              "## Kills", ""]  # fmt: skip
    for r in results:
        lines += variant_lines(r)
    path = RESULTS / "kill_resume.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU sizes: tiny BERT, 2,000 rows, 5 kills.")
    p.add_argument(
        "--model", default=None, help="tiny | minilm | a model folder (default: quick tiny, else minilm)"
    )
    p.add_argument("--adapters", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    p.add_argument(
        "--streaming-steps", type=int, default=None, help="max_steps of the streamed variant; 0: skip it"
    )
    p.add_argument("--kills", type=int, default=None, help="kills per variant (quick 5, else 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--val-rows", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--shuffle-buffer", type=int, default=1000)
    p.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="auto")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=None,
                   help="also a second uninterrupted run (default: on a GPU only)")  # fmt: skip
    p.add_argument("--workdir", default="/tmp/hftl_kill_resume")
    args = p.parse_args(argv)
    quick = {"model": "tiny", "kills": 5, "rows": 2000, "batch_size": 16, "max_length": 64, "lr": 1e-3,
             "save_every": 20, "eval_every": 40, "streaming_steps": 300}  # fmt: skip
    full = {"model": "minilm", "kills": 8, "rows": 20000, "batch_size": 32, "max_length": 64, "lr": 1e-4,
            "save_every": 100, "eval_every": 200, "streaming_steps": 1500}  # fmt: skip
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    on_gpu = torch.cuda.is_available()
    if args.precision == "auto":
        args.precision = "bf16" if on_gpu else "no"
    if args.control is None:
        args.control = on_gpu
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(workdir, rows=args.rows, val_rows=args.val_rows)
    model = model_path(args.model, workdir)
    variants = [Variant(a, a) for a in args.adapters]
    if args.streaming_steps:
        variants.append(Variant("full-streamed", "full", args.streaming_steps))
    command = "python benchmarks/kill_resume.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    results = []
    with (RESULTS / "kill_resume.jsonl").open("w") as f:
        for variant in variants:
            row = run_variant(variant, args, model, data, workdir)
            results.append(row)
            f.write(json.dumps({**row, "command": command, "machine": machine(), "args": vars(args)}) + "\n")
            f.flush()
            c = row["compare"]
            print(f"[{variant.name}] identical: {c['tensors_different'] == 0} ({c['tensors']} tensors), "
                  f"metrics equal: {c['metrics_equal']}", flush=True)  # fmt: skip
    print(f"Table written to {write_report(results, args, command)}")
    return (
        0
        if all(r["compare"]["tensors_different"] == 0 and r["compare"]["metrics_equal"] for r in results)
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
