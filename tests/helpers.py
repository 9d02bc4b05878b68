"""Helpers shared by the test modules: data writers, recipe configs, a tracker spy.

Test modules import these (``from helpers import ...``; pytest puts ``tests/`` on ``sys.path``) and never
each other, so a test file can be run, moved or deleted on its own. Fixtures every test uses are in
``conftest.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
import yaml
from accelerate import tracking
from accelerate.tracking import GeneralTracker
from accelerate.utils import LoggerType
from torch import nn

from hftl.adaptation import AdaptationMethod
from hftl.losses.base import LossOutput

REPO = Path(__file__).resolve().parents[1]
# Two sentiment classes with disjoint words: a tiny model separates them within a few steps.
WORDS = {"positive": "good great fine nice love", "negative": "bad awful poor hate boring"}


def dump(cfg: dict, path: Path) -> str:
    """Writes ``cfg`` as YAML to ``path``; returns the path as ``--config`` takes it."""
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def write_text_csv(path: Path, n: int, seed: int) -> Path:
    """``n`` rows ``text,label`` alternating negative/positive, 2-5 words of the class each (seeded)."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        words = rng.choice(WORDS[label].split(), size=rng.integers(2, 6))
        rows.append(f"the movie was {' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def text_files(tmp_path: Path, *, train: int = 48, validation: int = 16, test: int = 16) -> dict[str, str]:
    """Train, validation and test files of :func:`write_text_csv` (seeds 0, 1, 2)."""
    sizes = {"train": train, "validation": validation, "test": test}
    names = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
    return {s: str(write_text_csv(tmp_path / names[s], n, seed)) for seed, (s, n) in enumerate(sizes.items())}


def text_encoder(model: str, *, max_length: int = 16) -> dict[str, Any]:
    """A ``TextEncoder`` node for a tiny model directory."""
    return {"_component_": "hftl.encoders.TextEncoder", "model": model, "max_length": max_length}


def base_config(encoder: dict, data: dict, out: Path, **train: Any) -> dict:
    """A finetune config: full fine-tuning, a linear head, AdamW, 2 epochs of batch 8 (``train`` overrides)."""
    return {
        "recipe": "finetune",
        "output_dir": str(out),
        "seed": 0,
        "encoder": encoder,
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "data": {"_component_": "hftl.data.ClassificationData", **data},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 8, "log_every_steps": 2, **train},
    }


# -- fewshot -------------------------------------------------------------------------------------------------
def fewshot_csv(path: Path, n: int, seed: int) -> str:
    """``n`` rows alternating negative/positive with three words of the class each (seeded)."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        rows.append(f"the movie was {' '.join(rng.choice(WORDS[label].split(), size=3))},{label}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def fewshot_config(tmp_path: Path, encoder: dict, data: dict, **over: Any) -> dict:
    """A fewshot config: 4 shots per class, 2 pair rounds, cosine-similarity loss (``over`` replaces keys)."""
    cfg = {
        "recipe": "fewshot",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "encoder": encoder,
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "loss": {"_component_": "hftl.losses.CosineSimilarityLoss"},
        "data": {"_component_": "hftl.data.ClassificationData", "validation_size": 0, **data},
        "fewshot": {"shots_per_class": 4, "num_iterations": 2},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 4, "log_every_steps": 1},
    }
    return cfg | over


# -- multitask -----------------------------------------------------------------------------------------------
SENTIMENT = WORDS
# A new task over the old task's vocabulary, orthogonal to sentiment: fine-tuning for it moves the features
# the sentiment head reads.
STRENGTH = {"strong": "great love awful hate", "mild": "good fine nice poor boring bad"}
TOPIC = {"sport": "ball goal team match", "music": "song band guitar drum", "food": "pizza bread soup cake"}


def write_task_csv(path: Path, words: dict[str, str], n: int, seed: int) -> Path:
    """``n`` rows cycling through the classes of ``words``, 2-4 words of the class each (seeded)."""
    rng = np.random.default_rng(seed)
    names, rows = list(words), ["text,label"]
    for i in range(n):
        label = names[i % len(names)]
        rows.append(f"this is {' '.join(rng.choice(words[label].split(), size=rng.integers(2, 5)))},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def task_data(tmp_path: Path, name: str, words: dict[str, str], n: int = 48) -> dict:
    """A ``ClassificationData`` node over train/validation/test files of :func:`write_task_csv`."""
    files = {
        split: str(write_task_csv(tmp_path / f"{name}_{split}.csv", words, k, seed))
        for split, k, seed in (("train", n, 0), ("validation", 12, 1), ("test", 12, 2))
    }
    return {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files}


def multitask_config(tmp_path: Path, model: str) -> dict:
    """Sentiment and topic tasks on one tiny encoder, round-robin sampling, 3 epochs of batch 8."""
    head = {"_component_": "hftl.models.LinearHead", "dropout": 0.0}
    return {
        "recipe": "multitask",
        "output_dir": str(tmp_path / "mt"),
        "seed": 0,
        "encoder": text_encoder(model),
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "tasks": {
            "sentiment": {"data": task_data(tmp_path, "sentiment", SENTIMENT), "head": head, "weight": 1.0},
            "topic": {"data": task_data(tmp_path, "topic", TOPIC), "head": head, "weight": 2.0},
        },
        "multitask": {"sampling": "round_robin"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 4e-3},
        "train": {"epochs": 3, "batch_size": 8, "log_every_steps": 2},
    }


# -- distill -------------------------------------------------------------------------------------------------
def distill_config(tmp_path: Path, model: str) -> dict:
    """A distill config whose LoRA teacher is trained first (``teacher.finetune_config``), one-layer student."""
    files = text_files(tmp_path)
    unlabeled = write_text_csv(tmp_path / "unlabeled.csv", 24, 3)
    enc = text_encoder(model)
    data = {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files}
    teacher = {
        "recipe": "finetune", "output_dir": str(tmp_path / "teacher"), "seed": 0, "encoder": enc,
        "adapter": {"_component_": "hftl.adapters.Lora", "r": 4}, "data": data,
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"epochs": 3, "batch_size": 8, "log_every_steps": 2},
    }  # fmt: skip
    return {
        "recipe": "distill",
        "output_dir": str(tmp_path / "student"),
        "seed": 0,
        "teacher": {
            "path": str(tmp_path / "teacher"),
            "finetune_config": dump(teacher, tmp_path / "teacher.yaml"),
        },
        "student": {"encoder": enc, "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0}},
        "distill": {"student_layers": [1], "speed_batch_size": 8, "speed_repeats": 2},
        "data": data,
        "unlabeled": {"_component_": "hftl.data.ClassificationData", "path": str(unlabeled)},
        "loss": {"_component_": "hftl.losses.KnowledgeDistillationLoss", "temperature": 2.0, "alpha": 0.7},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 8, "log_every_steps": 2},
    }


# -- adapt ---------------------------------------------------------------------------------------------------
SOURCE_WORDS = {"positive": "good great fine", "negative": "bad awful poor"}
TARGET_WORDS = {"positive": "good nice love", "negative": "bad boring hate"}  # shifted vocabulary


def write_domain_csv(
    path: Path, n: int, words: dict[str, str], seed: int, *, flip_labels: bool = False
) -> str:
    """``n`` rows ``it was w1 w2 w3,label`` of one domain's ``words``; ``flip_labels`` swaps every label."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        text = " ".join(rng.choice(words[label].split(), size=3))
        shown = {"negative": "positive", "positive": "negative"}[label] if flip_labels else label
        rows.append(f"it was {text},{shown}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def adapt_config(
    tmp_path: Path, tiny: str, method: str, *, target_train: str | None = None, **method_args: Any
) -> dict:
    """An adapt config from :data:`SOURCE_WORDS` to :data:`TARGET_WORDS` with ``method`` and no baselines."""
    return {
        "recipe": "adapt",
        "output_dir": str(tmp_path / f"out_{method.rsplit('.', 1)[-1]}"),
        "seed": 0,
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny, "max_length": 16},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "source": {
            "_component_": "hftl.data.ClassificationData",
            "path": write_domain_csv(tmp_path / "source.csv", 48, SOURCE_WORDS, 0),
            "validation_size": 0.25,
            "label_names": ["negative", "positive"],
        },
        "target": {
            "_component_": "hftl.data.ClassificationData",
            "path": "csv",
            "data_files": {
                "train": target_train or write_domain_csv(tmp_path / "target_train.csv", 32, TARGET_WORDS, 1),
                "test": write_domain_csv(tmp_path / "target_test.csv", 16, TARGET_WORDS, 2),
            },
            "label_names": ["negative", "positive"],
        },
        "method": {"_component_": method, **method_args},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        # group_by_length off: batches independent of how lengths are counted (words or tokens)
        "train": {"epochs": 2, "batch_size": 8, "log_every_steps": 1, "group_by_length": False},
        "report": {"baselines": [], "diagnostics": False},
    }


class OneClass(AdaptationMethod):
    """An adaptation method made to collapse: its transfer term pushes every target prediction to class 0.

    Used as ``method._component_: helpers.OneClass`` with ``--allow-any-component`` (a test-only class).
    """

    name = "one_class"

    def __init__(self, *, in_features: int, num_classes: int, trade_off: float = 1.0):
        super().__init__(trade_off=trade_off)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        zeros = torch.zeros(len(logits_t), dtype=torch.long, device=logits_t.device)
        return LossOutput(loss=nn.functional.cross_entropy(logits_t, zeros), metrics={})


# -- embed ---------------------------------------------------------------------------------------------------
EMBED_WORDS = {"positive": "good great fine very", "negative": "bad not the a"}


def write_embed_csv(path: Path, n: int, *, seed: int, prefix: str = "it was") -> str:
    """``n`` rows ``<prefix> w1 w2 w3,label`` of :data:`EMBED_WORDS`, alternating negative/positive."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        rows.append(f"{prefix} {' '.join(rng.choice(EMBED_WORDS[label].split(), size=3))},{label}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def embed_config(tmp_path: Path, tiny: str, name: str, encoder: dict) -> dict:
    """An embed config: frozen ``encoder`` (without ``model``: ``tiny`` is added), MLP head, 3 epochs."""
    files = {
        s: write_embed_csv(tmp_path / f"{s}.csv", n, seed=i)
        for i, (s, n) in enumerate((("train", 48), ("validation", 16), ("test", 16)))
    }
    return {
        "recipe": "embed",
        "output_dir": str(tmp_path / name),
        "seed": 0,
        "encoder": {"model": tiny, "max_length": 16, **encoder},
        "head": {"_component_": "hftl.models.MLPHead", "hidden_features": 16},
        "data": {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files, "label_names": ["negative", "positive"]},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-2},
        "train": {"epochs": 3, "batch_size": 16},
        "cache": {"dir": str(tmp_path / "cache"), "states_dtype": "float32"},
    }  # fmt: skip


# -- meta ----------------------------------------------------------------------------------------------------
META_WORDS = ["apple pear", "red blue", "cat dog", "sun moon", "one two", "car bus"]  # 6 classes


def meta_config(tmp_path: Path, tiny: str, **meta: Any) -> dict:
    """A meta config on 6 word classes (``c4``, ``c5`` held out), 3 outer steps (``meta`` overrides)."""
    rows = ["text,label"] + [f"{META_WORDS[c]} {i},c{c}" for c in range(6) for i in range(6)]
    (tmp_path / "pool.csv").write_text("\n".join(rows) + "\n")
    return {
        "recipe": "meta",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny, "max_length": 8},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "data": {"_component_": "hftl.data.ClassificationData", "path": str(tmp_path / "pool.csv"), "validation_size": 0},
        "optimizer": {"_component_": "torch.optim.Adam", "lr": 1e-3},
        "episodes": {"n_way": 2, "k_shot": 1, "q_queries": 2, "test_classes": ["c4", "c5"], "train_splits": ["train"],
                     "test_splits": ["train"], "test_episodes": 4},
        "meta": {"outer_steps": 3, "meta_batch_size": 2, "inner_steps": 2, "inner_lr": 0.1, "log_every": 1,
                 "pretrain_batch_size": 8, **meta},
    }  # fmt: skip


# -- a local stand-in for the Hub API (hftl push, hftl.load("hf://...")) -------------------------------------
TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"  # must never appear in uploads or output


class FakeHub:
    """In-memory repos: ``repos[repo_id] = {"private": bool, "branches": {name: {path: bytes}}, ...}``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.commits: list[dict] = []

    def sha(self, repo: str, rev: str) -> str:
        files = self.repos[repo]["branches"][rev]
        return hashlib.sha1(json.dumps(sorted((p, len(b)) for p, b in files.items())).encode()).hexdigest()

    def branch(self, repo: str, rev: str) -> dict[str, bytes]:
        rev = unquote(rev)
        branches = self.repos[repo]["branches"]
        for name, files in branches.items():
            if rev in (name, self.sha(repo, name)):
                return files
        raise KeyError(rev)


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: dict | bytes = b"", headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header(
                "Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json"
            )
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self) -> None:
            url = urlparse(self.path)
            path, body = url.path, self._body() if self.command == "POST" else b""
            hub.requests.append((self.command, self.path, dict(self.headers)))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._send(401, {"error": "Invalid credentials"})
            if path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo = f"{payload['organization']}/{payload['name']}"
                if repo in hub.repos:
                    url = f"http://{self.headers['Host']}/{repo}"  # the Hub answers 409 with the repo url
                    return self._send(409, {"error": "You already created this model repo", "url": url})
                hub.repos[repo] = {
                    "private": payload.get("visibility") == "private",
                    "branches": {"main": {}},
                    "prs": [],
                }
                return self._send(200, {"url": f"http://{self.headers['Host']}/{repo}"})
            m = re.fullmatch(
                r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit|revision|tree|discussions)(?:/(.*))?",
                path,
            )
            if m:
                repo, action, rest = m.groups()
                if repo not in hub.repos:
                    return self._send(404, {"error": "Repository not found"})
                return getattr(self, f"_{action}")(repo, unquote(rest or ""), body, url.query)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(*m.groups())
            return self._send(404, {"error": f"no route {self.command} {path}"})

        do_GET = do_POST = do_HEAD = _route

        def _branch(self, repo, rev, body, query):
            branches = hub.repos[repo]["branches"]
            branches.setdefault(rev, dict(branches["main"]))
            return self._send(200, {})

        def _preupload(self, repo, rev, body, query):
            files = json.loads(body)["files"]
            return self._send(
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                },
            )

        def _commit(self, repo, rev, body, query):
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = {
                x["value"]["path"]: base64.b64decode(x["value"]["content"])
                for x in lines
                if x["key"] == "file"
            }
            extra = {}
            if "create_pr=1" in query:  # like the Hub: open a PR from the default branch and commit to it
                prs = hub.repos[repo]["prs"]
                prs.append({"title": lines[0]["value"]["summary"], "pullRequest": True})
                rev = f"refs/pr/{len(prs)}"
                hub.repos[repo]["branches"][rev] = dict(hub.repos[repo]["branches"]["main"])
                extra["pullRequestUrl"] = f"http://{self.headers['Host']}/{repo}/discussions/{len(prs)}"
            hub.commits.append({"repo": repo, "revision": rev, "header": lines[0]["value"], "files": files})
            hub.repos[repo]["branches"].setdefault(rev, {}).update(files)
            sha = hub.sha(repo, rev)
            return self._send(
                200,
                {
                    "commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}",
                    "commitOid": sha,
                    **extra,
                },
            )

        def _discussions(self, repo, rest, body, query):
            prs = hub.repos[repo]["prs"]
            if self.command == "POST":
                prs.append(json.loads(body))
                hub.repos[repo]["branches"][f"refs/pr/{len(prs)}"] = dict(hub.repos[repo]["branches"]["main"])
                return self._send(200, {"num": len(prs)})
            num = int(rest)
            return self._send(200, {
                "title": prs[num - 1]["title"], "num": num, "author": {"name": "alice"},
                "createdAt": "2024-01-01T00:00:00.000Z", "status": "draft", "repo": {"name": repo, "type": "model"},
                "isPullRequest": True, "events": [], "changes": {"base": "main"}, "filesWithConflicts": [],
            })  # fmt: skip

        def _revision(self, repo, rev, body, query):
            files = hub.branch(repo, rev)
            return self._send(200, {
                "id": repo, "modelId": repo, "sha": hub.sha(repo, rev), "private": hub.repos[repo]["private"],
                "siblings": [{"rfilename": p} for p in sorted(files)],
            })  # fmt: skip

        def _tree(self, repo, rev, body, query):
            files = hub.branch(repo, rev)
            return self._send(200, [
                {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for p, b in sorted(files.items())
            ])  # fmt: skip

        def _resolve(self, repo, rev, path):
            files = hub.branch(repo, rev)
            if path not in files:
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            data = files[path]
            headers = {"X-Repo-Commit": hub.sha(repo, unquote(rev)) if unquote(rev) in hub.repos[repo]["branches"] else rev,
                       "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}  # fmt: skip
            return self._send(200, data, headers)

    return Handler


def serve_fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    """Runs a :class:`FakeHub` server; yields it with ``endpoint`` and the ``env`` a subprocess needs.

    A fixture uses it as ``yield from serve_fake_hub(tmp_path)``.
    """
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    fake.env = {
        **os.environ, "HF_ENDPOINT": fake.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }  # fmt: skip
    try:
        yield fake
    finally:
        server.shutdown()


# -- trackers ------------------------------------------------------------------------------------------------
class SpyTracker(GeneralTracker):
    """Stands in for TensorBoard: records the configuration and every log a run sends (see :func:`spy_on_trackers`)."""

    name = "tensorboard"
    requires_logging_directory = True
    started: ClassVar[list[SpyTracker]] = []

    def __init__(self, run_name: str, logging_dir: str | None = None, **kwargs: Any):
        super().__init__()
        self.run_name, self.logging_dir = run_name, logging_dir
        self.config: dict[str, Any] | None = None
        self.logs: list[tuple[int | None, dict[str, Any]]] = []
        SpyTracker.started.append(self)

    @property
    def tracker(self) -> SpyTracker:
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.logs.append((step, dict(values)))


def spy_on_trackers(monkeypatch: pytest.MonkeyPatch) -> list[SpyTracker]:
    """From now on (for the test), ``train.report_to=[tensorboard]`` starts a :class:`SpyTracker`.

    Returns:
        The list of the trackers started, in order.
    """
    monkeypatch.setitem(tracking.LOGGER_TYPE_TO_CLASS, "tensorboard", SpyTracker)
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    monkeypatch.setattr(SpyTracker, "started", [])
    return SpyTracker.started
