"""``hftl push`` and ``hftl.load("hf://user/name")`` against a local stand-in for the Hub API.

The server implements the few routes huggingface_hub uses to create a repo and a branch, validate the
card's YAML, pre-upload and commit (every file as a "regular" base64 file, so no LFS/Xet storage), open
a pull request, and serve the files back (repo info, tree, resolve). The CLI runs in a subprocess with
``HF_ENDPOINT`` pointing at it, so huggingface_hub reads its settings exactly as it does for real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from test_cli import base_config, dump, write_text_csv

from hftl.cli import main as hftl

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"  # must never appear in uploads or output
REPO = "alice/tiny-sentiment"


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
                {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{sha}", "commitOid": sha, **extra},
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


@pytest.fixture
def hub(tmp_path):
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    fake.env = {
        **os.environ, "HF_ENDPOINT": fake.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }  # fmt: skip
    yield fake
    server.shutdown()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models) -> Path:
    """A finished tiny LoRA fine-tune, with a stale checkpoint and cache planted in the model dir."""
    tmp = tmp_path_factory.mktemp("push_run")
    files = {s: str(write_text_csv(tmp / f"{s}.csv", n, i)) for i, (s, n) in enumerate([("train", 32), ("validation", 16), ("test", 16)])}  # fmt: skip
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp / "out", epochs=1)
    cfg["adapter"] = {"_component_": "hftl.adapters.Lora", "r": 4}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp / "cfg.yaml")]) == 0
    model = tmp / "out" / "model"
    (model / "checkpoints" / "step-1").mkdir(parents=True)
    (model / "checkpoints" / "step-1" / "optimizer.bin").write_bytes(b"state")
    (model / ".cache").mkdir()
    (model / ".cache" / "x.lock").write_text("lock")
    return tmp / "out"


SCENARIO = """
import contextlib, io, json, os, sys
from hftl.cli import main

def hftl(*args, token=None):
    os.environ["HF_TOKEN"] = token or os.environ["GOOD_TOKEN"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    print(json.dumps({"args": args, "rc": rc, "out": out.getvalue(), "err": err.getvalue()}))

run, repo = sys.argv[1], sys.argv[2]
hftl("push", run, "--repo-id", repo, "--commit-message", "first upload")
hftl("push", run, "--repo-id", "alice/public-one", "--public", "--revision", "v1")
hftl("push", run, "--repo-id", repo, "--create-pr")
hftl("push", run, "--repo-id", repo, token="hf_wrongTOKENvalue")
hftl("push", run, "--repo-id", repo, "--revision", "v1", "--create-pr")
import hftl as lib  # load back through snapshot_download into the empty HF_HOME cache
loaded = lib.load(f"hf://{repo}")  # a Hub repo is named explicitly; the commit loaded is pinned
print(json.dumps({"prediction": loaded(["the movie was good great"]), "source": loaded.source}))
"""


def test_push_branch_pr_errors_and_load_back(hub, run_dir):
    """One process (startup is the slow part) runs every push variant, then loads the model back."""
    env = {**hub.env, "GOOD_TOKEN": TOKEN}
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(run_dir), REPO],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr and "hf_wrongTOKENvalue" not in proc.stdout + proc.stderr
    first, public, pr, bad_token, bad_args, loaded = [
        json.loads(x) for x in proc.stdout.strip().splitlines()[-6:]
    ]

    assert first["rc"] == 0 and REPO in first["out"] and "/commit/" in first["out"], first["err"]
    assert hub.repos[REPO]["private"] is True  # private by default
    commit = hub.commits[0]
    assert commit["header"]["summary"] == "first upload" and commit["revision"] == "main"
    uploaded = set(commit["files"])
    expected = {"README.md", "hftl_model.json", "config.yaml", "head.safetensors", "metrics.json",
                "encoder/adapter_config.json", "encoder/adapter_model.safetensors", "plots/training_curves.png",
                "plots/confusion_matrix.png"}  # fmt: skip
    assert expected <= uploaded
    assert not [p for p in uploaded if "checkpoint" in p or ".cache" in p or p == "encoder/README.md"]
    for c in hub.commits:
        for path, data in c["files"].items():
            assert TOKEN.encode() not in data, path
    card = commit["files"]["README.md"].decode()
    assert f'hftl.load("hf://{REPO}")' in card and "library_name: peft" in card

    assert public["rc"] == 0, public["err"]
    assert hub.repos["alice/public-one"]["private"] is False
    assert "README.md" in hub.repos["alice/public-one"]["branches"]["v1"]
    assert hub.repos["alice/public-one"]["branches"]["main"] == {}  # the default branch is untouched

    assert pr["rc"] == 0 and "discussions/1" in pr["out"], pr["err"]
    assert hub.repos[REPO]["prs"][0]["pullRequest"] is True
    assert [c["revision"] for c in hub.commits if c["repo"] == REPO] == ["main", "refs/pr/1"]

    assert bad_token["rc"] == 2 and "HTTP 401" in bad_token["err"] and "hf auth login" in bad_token["err"]
    assert bad_args["rc"] == 2 and "cannot be combined" in bad_args["err"]

    (pred,) = loaded["prediction"]
    assert loaded["source"] == f"hf://{REPO}@{hub.sha(REPO, 'main')}"  # the commit downloaded
    assert pred["label"] in ("negative", "positive") and set(pred["scores"]) == {"negative", "positive"}


def test_push_refused_offline(run_dir, capsys):
    assert hftl(["push", str(run_dir), "--repo-id", REPO]) == 2  # the test process runs with HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_push_to_hub_config_key_pushes_at_the_end_of_training(tmp_path, tiny_models, monkeypatch):
    from hftl.hub import push

    calls = []
    monkeypatch.setattr(push, "push_to_hub", lambda out, **kw: calls.append((out, kw)) or "http://hub/x")
    files = {
        s: str(write_text_csv(tmp_path / f"{s}.csv", 16, i))
        for i, s in enumerate(["train", "validation", "test"])
    }
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    cfg = base_config(enc, {"path": "csv", "data_files": files}, tmp_path / "out", epochs=1)
    cfg["push_to_hub"] = {"repo_id": "alice/from-config", "private": False}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 0
    assert calls == [(tmp_path / "out", {"repo_id": "alice/from-config", "private": False})]

    cfg["push_to_hub"] = {"repo": "alice/typo"}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 2
