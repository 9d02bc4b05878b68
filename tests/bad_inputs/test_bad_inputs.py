"""Runs the bad-input corpus (cases.py) through the real CLI: one clear error, non-zero exit, nothing left."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cases import CASES, Env  # noqa: E402

from hftl.cli import main as hftl  # noqa: E402

ARTIFACTS = ("model", "checkpoints", "metrics.json")


def leftovers(out: Path) -> list[str]:
    return [name for name in ARTIFACTS if (out / name).exists()] if out.is_dir() else []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, tiny_models, capsys):
    env = Env(tmp_path, tiny_models)
    argv = case.build(env)
    code = hftl(argv)
    err = capsys.readouterr().err
    if case.handled:
        assert code == 0, err
        assert (env.out / "model").is_dir()
        return
    assert code != 0
    lines = err.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, err
    message = "\n".join(lines[starts[0] :])  # one error; a list of bad files follows it indented
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert not leftovers(env.out), f"partial output left: {leftovers(env.out)}"


def test_corpus_size():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
