import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# console scripts of the venv running the tests (make test runs .venv/bin/python -m pytest)
BIN = Path(sys.executable).parent
# datasets/huggingface_hub read HF_HOME when first imported: keep their caches and locks out of ~/.cache
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="nanocode-tests-hf-")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own NANOCODE_HOME: nothing touches the user's cache."""
    monkeypatch.setenv("NANOCODE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_tok():
    """A small real BPE tokenizer trained in-process on stdlib source and docs (a second)."""
    from trainer.tokenizer import Tokenizer

    texts = [p.read_text(errors="replace") for p in sorted(Path(os.__file__).parent.glob("json/*.py"))]
    texts.append("Übergrößenträger — naïve café. 日本語のテキスト。 Ελληνικά. 🙂 emoji.\n")
    return Tokenizer.train(texts, vocab_size=600)
