"""Shared fixtures: the real data root ($FEDGEN_DATA), which fails under CI and skips elsewhere."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedgen.data import ptb


def _unavailable(msg: str) -> None:
    """Missing real data: a failure under CI (it must be there), a skip on a developer machine."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root from $FEDGEN_DATA, holding the three Penn Treebank files."""
    env = os.environ.get("FEDGEN_DATA")
    root = Path(env) if env else None
    if root is None or not all((root / "ptb" / name).is_file() for name, _ in ptb.PTB_FILES.values()):
        _unavailable(f"real Penn Treebank not available (FEDGEN_DATA={env!r})")
    return root


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """The real data root from $FEDGEN_DATA, holding ``cifar10/SHA256SUMS`` and the CIFAR-10 chunks."""
    env = os.environ.get("FEDGEN_DATA")
    root = Path(env) if env else None
    if root is None or not (root / "cifar10" / "SHA256SUMS").is_file():
        _unavailable(f"real CIFAR-10 not available (FEDGEN_DATA={env!r})")
    return root


@pytest.fixture(scope="session")
def pretrain_root(data_root: Path) -> Path:
    """``data_root`` that also holds the checksummed pre-training corpus (``pretrain/SHA256SUMS``)."""
    if not (data_root / "pretrain" / "SHA256SUMS").is_file():
        _unavailable(f"real pre-training corpus not available under {data_root}")
    return data_root


def tiny_raw(root: Path, data_root: Path, **fl) -> dict:
    """A real-PTB experiment small enough for CI: 8 clients, 1-layer d=64 backbone."""
    return {
        "name": "tiny",
        "seed": 0,
        "threads": 2,
        "data": {
            "dir": str(data_root),
            "num_clients": 8,
            "max_docs": 120,
            "num_topics": 4,
            "lda_max_iter": 5,
        },
        "model": {"n_layer": 1, "n_embd": 64, "n_head": 2, "context": 32},
        "lora": {"r": 4, "alpha": 8},
        "pretrain": {
            "steps": 120,
            "batch_size": 32,
            "lr": 0.003,
            "warmup_steps": 10,
            "sources": ["us-presidential-addresses"],
        },
        "fl": {"rounds": 2, "fraction": 0.5, "local_epochs": 1, "batch_size": 16, "lr": 0.01, **fl},
        "eval": {"max_tokens": 3000, "local_every": 1},
        "personalize": {"lr_multipliers": [1.0, 0.3], "max_epochs": 1},  # the validated grid, kept small
        "output": {"root": str(root), "keep_checkpoints": 2},
    }


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """One output root per test session, so the tiny backbone is pre-trained once."""
    return tmp_path_factory.mktemp("fedgen-runs")


# ------------------------------------------------------------------ local HTTP mirrors (never the internet)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Mirror:
    """A local HTTP server: its base URL (no trailing slash) and the paths requested so far."""

    url: str
    requests: list[str]


@pytest.fixture
def serve() -> Iterator:
    """serve(folder) -> Mirror for a local HTTP server on 127.0.0.1 that serves ``folder``."""
    servers = []

    def start(folder: Path) -> Mirror:
        handler = functools.partial(_CountingHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Mirror(f"http://127.0.0.1:{server.server_address[1]}", server.requests)  # type: ignore[attr-defined]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
