"""Padded vs real tokens of one periodic evaluation of the shipped text adapt config: rows in order vs longest first.

Run:
    python benchmarks/eval_padding.py     # reads $HFTL_DATA_DIR (Blitzer books -> kitchen), tokenizes, no model

The evaluation splits as `hftl run adapt --config text/minilm_lora_dann_books_kitchen` builds them (source
validation, seeded 1,000-row subsets of the source and target train splits, the target test split), tokenized
at the config's max length; padded tokens = sum over batches of 32 of (longest row x rows). Quoted in
benchmarks/results/adapt_walltime.md.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from hftl.config import instantiate  # noqa: E402
from hftl.data.lengths import text_lengths  # noqa: E402
from hftl.data.tokenized import pretokenize  # noqa: E402

cfg = OmegaConf.load(
    os.path.join(os.path.dirname(__file__), "..", "recipes/configs/text/minilm_lora_dann_books_kitchen.yaml")
)
enc = instantiate(cfg.encoder)
src = instantiate(cfg.source).load()
tgt = instantiate(cfg.target, unlabeled_splits=["train"], validation_size=0).load()
rng = np.random.default_rng(0)


def sub(ds, n):
    return ds.select(sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False)))


splits = {
    "source_val": src["validation"],
    "source_train": sub(src["train"], 1000),
    "target_train": sub(tgt["train"], 1000),
    "target_test": tgt["test"],
}
B = 32


def pad(ls: list[int]) -> int:
    """Tokens of batches of B rows, each padded to its longest row."""
    return sum(max(ls[i : i + B]) * len(ls[i : i + B]) for i in range(0, len(ls), B))


tot = {"real": 0, "in_order": 0, "sorted": 0}
for name, ds in splits.items():
    L = np.array(text_lengths(pretokenize(ds, enc.processor, max_length=enc.max_length)))
    r, o, s = L.sum(), pad(list(L)), pad(sorted(L, reverse=True))
    tot["real"] += r
    tot["in_order"] += o
    tot["sorted"] += s
    print(
        f"{name}: rows {len(L)}, real tokens {r}, padded in order {o} ({o / r:.2f}x), longest first {s} ({s / r:.3f}x)"
    )
print(
    {k: int(v) for k, v in tot.items()},
    f"in order {tot['in_order'] / tot['real']:.2f}x, sorted {tot['sorted'] / tot['real']:.3f}x",
)
