"""Evaluation of a LoRA model: unmerged (peft's LoRA layers) vs the merged copy hftl evaluates through.

Run:
    python benchmarks/eval_merged.py                # MiniLM-L6 + the shipped text adapt config's LoRA
    python benchmarks/eval_merged.py --rows 256 --repeats 3

The model is `text/minilm_lora_dann_books_kitchen`'s encoder, LoRA (r 16 on query/key/value/dense) and head,
with every LoRA weight moved off its zero initialisation (as training would). Rows are Blitzer kitchen
reviews at the config's max length, batches of 32 in length order (as hftl's evaluation loaders).
Each repeat times both ways back to back (alternating which goes first) under ``torch.inference_mode``;
the merged copy's build time (:func:`hftl.adapters.merged.merged_copy`, paid once per evaluation after
weights changed) is reported separately. The two ways' logits must agree (max |diff| printed).
Writes benchmarks/results/eval_merged.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from hftl.adapters.merged import merged_copy  # noqa: E402
from hftl.config import instantiate  # noqa: E402
from hftl.models import Classifier  # noqa: E402

HERE = Path(__file__).parent
CONFIG = HERE.parent / "recipes/configs/text/minilm_lora_dann_books_kitchen.yaml"


def build(cfg) -> Classifier:
    torch.manual_seed(0)
    encoder = instantiate(cfg.adapter).apply(instantiate(cfg.encoder))
    head = instantiate(cfg.head, in_features=encoder.out_features, num_labels=2)
    model = Classifier(encoder, head, ["negative", "positive"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def batches(cfg, model: Classifier, rows: int) -> list[dict[str, torch.Tensor]]:
    target = instantiate(cfg.target, unlabeled_splits=["train"], validation_size=0).load()
    texts = sorted(target["test"]["text"][:rows], key=len)
    collate = model.encoder.collator(train=False)
    return [
        {k: v for k, v in collate([{"text": t} for t in texts[i : i + 32]]).items() if k != "labels"}
        for i in range(0, len(texts), 32)
    ]


@torch.inference_mode()
def timed(model: torch.nn.Module, data: list[dict[str, torch.Tensor]]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    logits = torch.cat([model(**b).logits for b in data])
    return time.perf_counter() - start, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="Kitchen test reviews evaluated per repeat.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = OmegaConf.load(CONFIG)
    model = build(cfg)
    data = batches(cfg, model, args.rows)
    start = time.perf_counter()
    merged = merged_copy(model)
    build_s = time.perf_counter() - start
    timed(model, data[:1]), timed(merged, data[:1])  # warm-up
    rows, diff = [], 0.0
    for r in range(args.repeats):
        order = [("unmerged", model), ("merged", merged)][:: 1 if r % 2 == 0 else -1]
        times = {}
        for name, m in order:
            times[name], logits = timed(m, data)
            times[f"{name}_logits"] = logits
        diff = max(diff, float((times["unmerged_logits"] - times["merged_logits"]).abs().max()))
        rows.append((times["unmerged"], times["merged"]))
        print(f"repeat {r}: unmerged {times['unmerged']:.2f} s, merged {times['merged']:.2f} s")
    ratios = sorted(u / m for u, m in rows)
    median = ratios[len(ratios) // 2]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    text = "\n".join([
        "# LoRA evaluation: unmerged vs the merged copy (issue 17 part 1)",
        "",
        f"Machine: {machine}, load average {os.getloadavg()[0]:.1f} at the end. Command: "
        f"`python benchmarks/eval_merged.py --rows {args.rows} --repeats {args.repeats}`. Model: the shipped "
        "`text/minilm_lora_dann_books_kitchen` (MiniLM-L6, LoRA r 16 on query/key/value/dense, max length "
        f"{cfg.encoder.max_length}), {args.rows} kitchen test reviews, batches of 32 in length order, inference mode.",
        "",
        "| repeat | unmerged s | merged s | unmerged / merged |",
        "|---|---|---|---|",
        *(f"| {i} | {u:.2f} | {m:.2f} | {u / m:.2f} |" for i, (u, m) in enumerate(rows)),
        "",
        f"Median ratio **{median:.2f}×** (per repeat {', '.join(f'{x:.2f}' for x in ratios)}, sorted). Building the "
        f"merged copy: {build_s:.2f} s (once per evaluation whose weights changed). Max |logit difference| "
        f"merged vs unmerged: {diff:.1e}.",
        "",
    ])  # fmt: skip
    (HERE / "results" / "eval_merged.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
