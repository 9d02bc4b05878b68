"""Writes docs/bad_inputs.md: every case of the corpus, run through the CLI, with the message it gives.

Run: python tests/bad_inputs/make_table.py   (about a minute on 2 CPU cores; tiny random models, offline)
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from cases import CASES, Env  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def run_case(case, root: Path, models: dict[str, str]) -> tuple[int, str]:
    from hftl.cli import main as hftl

    env = Env(root, models)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = hftl(case.build(env))
    lines = err.getvalue().splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    message = " ".join(line.strip() for line in lines[first : first + 2]) if first is not None else ""
    return code, message


def main() -> None:
    import torch

    from hftl.encoders import save_tiny_encoder

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            kind: str(save_tiny_encoder(kind, Path(tmp) / kind)) for kind in ("bert", "wav2vec2", "vit")
        }
        for case in CASES:
            root = Path(tmp) / case.id
            root.mkdir()
            code, message = run_case(case, root, models)
            outcome = "handled (exit 0)" if case.handled and code == 0 else f"exit {code}"
            message = message.replace(tmp, "…").replace("|", "\\|") or "(runs; input repaired, see docs)"
            rows.append(f"| {case.category} | `{case.id}` | {case.what} | {outcome} | {message} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# Bad inputs and what hftl says",
        "",
        "Every row is a case of `tests/bad_inputs/cases.py`, run through the real CLI by "
        "`python tests/bad_inputs/make_table.py` (which wrote this file); `python -m pytest tests/bad_inputs` checks "
        "that each failing case exits non-zero with one error naming the field or file, and leaves no model, "
        "checkpoint or metrics behind. Paths of the scratch folder are shortened to `…`.",
        "",
        "| kind | case | input | outcome | message (first lines) |",
        "|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    (REPO / "docs" / "bad_inputs.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
