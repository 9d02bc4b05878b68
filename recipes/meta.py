"""Meta-learning an initialization that adapts in a few steps: first-order MAML and Reptile.

Run:
    hftl run meta --config audio/fsdd_maml [key=value ...]
    hftl run meta --config audio/fsdd_reptile meta.baselines=[pretrain,scratch]
    python recipes/meta.py --config recipes/configs/audio/fsdd_maml.yaml      # same code

Reads top to bottom: ``load_pools()`` builds the meta-training and meta-test pools (held-out classes
with ``episodes.test_classes``, or held-out groups such as speakers with a ``test_data`` node);
``run_algorithm()`` builds a fresh encoder + adapter, trains it with ``meta.algorithm`` (``fomaml``,
``reptile``, or the ``pretrain`` / ``scratch`` baselines) and scores it on the meta-test episodes:
each is adapted from the trained weights and a zero N-way head by ``eval_inner_steps`` SGD steps on
its support set, then its query accuracy is measured. Every algorithm sees the same test episodes;
the report gives mean ± 95 % CI over them. The main algorithm's initialization is saved to
``output_dir/model`` (its encoder loads in any other recipe: ``encoder.model: <output_dir>/model/encoder``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate.utils import gather_object, send_to_device, set_seed
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from hftl.config import get_component, instantiate, to_dataclass
from hftl.data.episodes import EpisodeConfig, EpisodeDataset, EpisodeSampler, class_ids
from hftl.errors import ConfigError
from hftl.evaluation import write_metrics
from hftl.models import Classifier, LinearHead
from hftl.models.io import save_model
from hftl.recipe import recipe_main
from hftl.training import TrainConfig
from hftl.training.builders import build_accelerator, build_loader, build_scheduler, print_summary
from hftl.training.meta import MetaConfig, MetaLearner, mean_ci95, supervised_step


class MetaRecipe:
    """FOMAML / Reptile meta-training with plain-pretraining baselines, scored on held-out episodes."""

    RUNTIME_ARGS = {"optimizer": {"params"}, "pretrain_optimizer": {"params"}}
    SECTIONS = {"episodes": EpisodeConfig, "meta": MetaConfig}
    REQUIRED = ("output_dir", "encoder", "adapter", "data", "optimizer")
    OPTIONAL = ("test_data",)  # held-out groups (e.g. speakers) for the test episodes

    def __init__(self, cfg: DictConfig, *, allow_any_component: bool = False):
        self.cfg, self.allow_any = cfg, allow_any_component
        self.ep = to_dataclass(EpisodeConfig, cfg.get("episodes"), key="episodes")
        self.meta = to_dataclass(MetaConfig, cfg.get("meta"), key="meta")
        self.output_dir = Path(cfg.output_dir)
        self.seed = int(cfg.get("seed", 42))
        # accelerate's settings and the outer LR schedule, in the shape the shared builders take
        self.loop = TrainConfig(
            mixed_precision=self.meta.mixed_precision, cpu=self.meta.cpu, lr_scheduler=self.meta.lr_scheduler,
            warmup_ratio=self.meta.warmup_ratio, max_grad_norm=self.meta.max_grad_norm,
        )  # fmt: skip

    def _build(self, key: str, **runtime: Any) -> Any:
        return instantiate(self.cfg[key], allow_any=self.allow_any, **runtime)

    # -- data --------------------------------------------------------------------------------------
    def _pool(self, splits: datasets.DatasetDict, names: list[str], key: str) -> datasets.Dataset:
        missing = [s for s in names if s not in splits]
        if missing:
            raise ConfigError(
                f"`episodes.{key}` names split(s) {missing}, which the data does not have; found {sorted(splits)}."
            )
        return datasets.concatenate_datasets([splits[s] for s in names])

    def load_pools(self) -> None:
        if self.cfg.get("test_data") is None and self.ep.test_classes is None:
            raise ConfigError(
                "Meta-test episodes would reuse the meta-training classes and groups: set "
                "`episodes.test_classes` (held-out classes) or add a `test_data` node holding other groups "
                "(e.g. `filters: {speaker: [...]}`)."
            )
        data = self._build("data")
        splits = data.load()
        self.label_names = splits.label_names
        test_splits = splits
        if self.cfg.get("test_data") is not None:
            test_data = self._build("test_data")
            test_splits = test_data.load()
            if test_splits.label_names != self.label_names:
                raise ConfigError(
                    f"`data` classes {self.label_names} differ from `test_data` classes {test_splits.label_names}; "
                    "set `label_names` on both to the same list."
                )
        all_ids = list(range(len(self.label_names)))
        self.test_ids = all_ids
        if self.ep.test_classes is not None:
            self.test_ids = class_ids(self.label_names, self.ep.test_classes, key="episodes.test_classes")
        self.train_ids = [c for c in all_ids if self.ep.test_classes is None or c not in self.test_ids]
        self.train_pool = self._pool(splits, self.ep.train_splits, "train_splits")
        self.test_pool = self._pool(test_splits, self.ep.test_splits, "test_splits")
        self.train_labels = self.train_pool.with_format("arrow")["label"].to_pylist()
        self.test_labels = self.test_pool.with_format("arrow")["label"].to_pylist()

    def _sampler(self, *, test: bool) -> EpisodeSampler:
        e = self.ep
        labels, classes = (self.test_labels, self.test_ids) if test else (self.train_labels, self.train_ids)
        seed = self.seed if test else self.seed + 1 + 1000 * self.accelerator.process_index
        return EpisodeSampler(
            labels, n_way=e.n_way, k_shot=e.k_shot, q_queries=e.q_queries, classes=classes, seed=seed
        )

    def _episodes(self, dataset: Any) -> DataLoader:
        return DataLoader(
            dataset, batch_size=None, num_workers=self.ep.num_workers, pin_memory=torch.cuda.is_available()
        )

    # -- one algorithm -----------------------------------------------------------------------------
    def build_model(self, num_labels: int) -> Classifier:
        encoder = self._build("encoder")
        if encoder.modality != self.modality:
            raise ConfigError(f"`encoder` is a {encoder.modality} encoder but `data` holds {self.modality}.")
        self._build("adapter").apply(encoder)
        head = LinearHead(encoder.out_features, num_labels, dropout=0.0)
        return Classifier(encoder, head, [f"way{i}" for i in range(num_labels)]).to(self.accelerator.device)

    def _optimizer(self, key: str, params: list[torch.nn.Parameter]) -> tuple[Any, Any]:
        optimizer = self.accelerator.prepare(self._build(key, params=params))
        scheduler = build_scheduler(
            self.loop,
            optimizer,
            total_steps=self.meta.outer_steps,
            num_processes=self.accelerator.num_processes,
        )
        return optimizer, self.accelerator.prepare(scheduler)

    def meta_train(self, model: Classifier, algorithm: str) -> list[dict[str, float]]:
        m, acc = self.meta, self.accelerator
        params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
        optimizer, scheduler = self._optimizer("optimizer", params)
        cfg = MetaConfig(**{**vars(m), "algorithm": algorithm, "baselines": []})
        learner = MetaLearner(
            model=model, optimizer=optimizer, accelerator=acc, config=cfg, scheduler=scheduler
        )
        dataset = EpisodeDataset(
            self.train_pool, self._sampler(test=False), collate=model.encoder.collator(train=True),
            length=m.outer_steps * m.meta_batch_size, mode="joint" if algorithm == "reptile" else "split",
        )  # fmt: skip
        history, window, tasks, step = [], {}, [], 0
        for episode in self._episodes(dataset):
            tasks.append(send_to_device(episode, acc.device))
            if len(tasks) < m.meta_batch_size:
                continue
            for k, v in learner.outer_step(tasks).items():
                window.setdefault(k, []).append(v)
            tasks, step = [], step + 1
            if step % m.log_every == 0 or step == m.outer_steps:
                history.append({"step": step, **{k: sum(v) / len(v) for k, v in window.items()}})
                acc.print(f"[{algorithm}] step {step}/{m.outer_steps}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in history[-1].items() if k != "step"))  # fmt: skip
                window = {}
        return history

    def pretrain(self, model: Classifier) -> list[dict[str, float]]:
        m, acc = self.meta, self.accelerator
        remap = {c: i for i, c in enumerate(self.train_ids)}
        rows = [i for i, y in enumerate(self.train_labels) if y in remap]
        collate = model.encoder.collator(train=True)

        def collate_remapped(examples: list[dict]) -> dict[str, torch.Tensor]:
            batch = collate(examples)
            batch["labels"] = torch.tensor([remap[ex["label"]] for ex in examples], dtype=torch.long)
            return batch

        node = "pretrain_optimizer" if self.cfg.get("pretrain_optimizer") is not None else "optimizer"
        optimizer, scheduler = self._optimizer(node, [p for p in model.parameters() if p.requires_grad])
        prepared = acc.prepare_model(model)
        loader = acc.prepare(build_loader(
            Subset(self.train_pool, rows), collate_fn=collate_remapped, batch_size=m.pretrain_batch_size,
            shuffle=True, seed=self.seed, num_workers=self.ep.num_workers,
        ))  # fmt: skip
        history, losses, step, epoch = [], [], 0, 0
        while step < m.outer_steps:
            loader.set_epoch(epoch)  # the prepared loader passes the epoch to the seeded sampler
            for batch in loader:
                losses.append(supervised_step(
                    prepared, batch, optimizer=optimizer, accelerator=acc, config=m, scheduler=scheduler))  # fmt: skip
                step += 1
                if step % m.log_every == 0 or step == m.outer_steps:
                    history.append({"step": step, "loss": sum(losses) / len(losses)})
                    acc.print(f"[pretrain] step {step}/{m.outer_steps}: loss {history[-1]['loss']:.4f}")
                    losses = []
                if step == m.outer_steps:
                    break
            epoch += 1
        return history

    def evaluate(self, model: Classifier) -> list[float]:
        """Query accuracy of every meta-test episode (sharded over processes, gathered)."""
        acc = self.accelerator
        learner = MetaLearner(model=model, optimizer=None, accelerator=acc, config=self.meta)
        dataset = EpisodeDataset(
            self.test_pool, self._sampler(test=True), collate=model.encoder.collator(train=False),
            length=self.ep.test_episodes,
        )  # fmt: skip
        mine = Subset(dataset, range(acc.process_index, len(dataset), acc.num_processes))
        scores = [
            (i, learner.adapt_and_score(**send_to_device(ep, acc.device)))
            for i, ep in zip(mine.indices, self._episodes(mine), strict=True)
        ]
        return [s for _, s in sorted(gather_object(scores))]

    def train(self, algorithm: str) -> tuple[Classifier, dict[str, Any]]:
        """A fresh model trained by ``algorithm``, with a zero-ready N-way head; and its training record."""
        set_seed(self.seed)
        num_labels = len(self.train_ids) if algorithm == "pretrain" else self.ep.n_way
        model = self.build_model(num_labels)
        start, history = time.perf_counter(), []
        if algorithm in ("fomaml", "reptile"):
            history = self.meta_train(model, algorithm)
        elif algorithm == "pretrain":
            history = self.pretrain(model)  # then the C-way head is dropped for the episodes' N-way one
            model.head = LinearHead(model.encoder.out_features, self.ep.n_way, dropout=0.0)
            model.head.to(self.accelerator.device)
            model.label_names = [f"way{i}" for i in range(self.ep.n_way)]
        return model, {"train_seconds": time.perf_counter() - start, "history": history}

    def score(self, model: Classifier) -> dict[str, Any]:
        """Mean query accuracy ± 95 % CI over the meta-test episodes (``episodes.k_shot`` shots)."""
        start = time.perf_counter()
        accuracies = self.evaluate(model)
        mean, ci = mean_ci95(accuracies)
        return {
            "query_acc": mean, "ci95": ci, "episodes": len(accuracies), "k_shot": self.ep.k_shot,
            "eval_seconds": time.perf_counter() - start,
        }  # fmt: skip

    # -- the job -----------------------------------------------------------------------------------
    def setup(self) -> None:
        self.accelerator = build_accelerator(self.loop, self.output_dir)
        self.load_pools()
        self.modality = next(c for c in ("text", "audio", "image") if c in self.train_pool.column_names)
        e, m = self.ep, self.meta
        print_summary(self.accelerator, "Running meta-learning", {
            "Algorithms": ", ".join([*m.baselines, m.algorithm]),
            "Episodes": f"{e.n_way}-way {e.k_shot}-shot, {e.q_queries} queries per class",
            "Meta-train pool / classes": f"{len(self.train_pool):,} rows / {[self.label_names[c] for c in self.train_ids]}",
            "Meta-test pool / classes": f"{len(self.test_pool):,} rows / {[self.label_names[c] for c in self.test_ids]}",
            "Outer steps × tasks per step": f"{m.outer_steps} × {m.meta_batch_size} × {self.accelerator.num_processes}",
            "Inner loop (train / test)": f"{m.inner_steps} / {m.eval_inner_steps or m.inner_steps} SGD steps, lr {m.inner_lr} / {m.eval_inner_lr or m.inner_lr}",
            "Test episodes": e.test_episodes,
            "Device / precision": f"{self.accelerator.device} / {m.mixed_precision}",
        })  # fmt: skip

    def run(self) -> dict[str, Any]:
        self.setup()
        m, results = self.meta, {}
        for name in [*m.baselines, m.algorithm]:
            model, record = self.train(name)
            results[name] = {**self.score(model), **record}
        metrics = {
            "algorithm": m.algorithm,
            "n_way": self.ep.n_way,
            "k_shot": self.ep.k_shot,
            "results": results,
        }
        self.print_report(metrics)
        if self.accelerator.is_main_process:  # `model` is the main algorithm's (it runs last)
            kind = get_component(self.cfg.adapter._component_, allow_any=self.allow_any).kind
            summary = {"query_acc": results[m.algorithm]["query_acc"], "ci95": results[m.algorithm]["ci95"]}
            save_model(model, self.output_dir / "model", adapter_kind=kind, config=self.cfg, metrics=summary)
            write_metrics(self.output_dir / "metrics.json", metrics)
            self.accelerator.print(f"Initialization ({m.algorithm}) written to {self.output_dir / 'model'}")
        self.accelerator.end_training()
        return metrics

    def print_report(self, metrics: dict[str, Any]) -> None:
        e = self.ep
        lines = [
            f"***** Meta-test: {e.n_way}-way {e.k_shot}-shot, query accuracy over {e.test_episodes} episodes *****",
            f"{'algorithm':<12}{'query acc':>12}{'95% CI':>10}{'train s':>10}",
        ]
        for name, r in metrics["results"].items():
            lines.append(
                f"{name:<12}{100 * r['query_acc']:>11.2f}%{100 * r['ci95']:>9.2f}%{r['train_seconds']:>10.1f}"
            )
        self.accelerator.print("\n".join(lines))


RECIPE = MetaRecipe


def main(argv: list[str] | None = None) -> int:
    return recipe_main(MetaRecipe, argv, prog="hftl run meta")


if __name__ == "__main__":
    raise SystemExit(main())
