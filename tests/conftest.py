"""Shared fixtures: the real data root ($FEDGEN_DATA), which fails under CI and skips elsewhere."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedgen.data import cifar10, ptb
from fedgen.testing.configs import tiny_text_raw


def _session_cached_cifar10():
    """``load_cifar10`` that reads and SHA-256-verifies the real CIFAR-10 ($FEDGEN_DATA, 164 MB of npz,
    ~4-7 s on 2 cores) once per test session instead of once per experiment built.

    Only the real data root is cached, keyed by every file's name, size and mtime (a changed file is
    read and verified again); a call with ``verify=True`` never returns a copy that was read unverified;
    any other root (the tests' own corrupted or partial copies) goes to the real function. Each call
    gets its own arrays, so no test can alter another's data.
    """
    original = cifar10.load_cifar10
    cache: dict[tuple, tuple[bool, cifar10.CIFAR10]] = {}

    @functools.wraps(original)
    def load_cifar10(root=None, verify: bool = True) -> cifar10.CIFAR10:
        env = os.environ.get("FEDGEN_DATA")
        folder = cifar10._cifar_dir(root)
        if not env or not folder.is_dir() or folder.resolve() != (Path(env) / "cifar10").resolve():
            return original(root, verify)
        key = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))
        if key not in cache or (verify and not cache[key][0]):
            cache[key] = (verify, original(root, verify))
        d = cache[key][1]
        arrays = ("train_x", "train_y", "test_x", "test_y")
        return dataclasses.replace(d, **{a: getattr(d, a).copy() for a in arrays})

    return load_cifar10


# Patched before the test modules import it (``from fedgen.data.cifar10 import load_cifar10``).
cifar10.load_cifar10 = _session_cached_cifar10()
try:
    import fedgen.tasks.image.task as _image_task

    _image_task.load_cifar10 = cifar10.load_cifar10
except ImportError:  # the image task moved: only the per-experiment cache is lost
    pass


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


# Torch threads of the tiny runs: 2 on the 2-core CI machine; 1 under pytest-xdist, whose workers
# (one per core) run test files side by side. Each run fixes its own count (cfg.threads), so results
# depend on the config only, never on the tests that ran before it in the same worker.
TEST_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


def tiny_raw(root: Path, data_root: Path, personalize: bool = False, **fl) -> dict:
    """:func:`fedgen.testing.configs.tiny_text_raw` with this worker's thread count."""
    return tiny_text_raw(root, data_root, TEST_THREADS, personalize, **fl)


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> Path:
    """One output root per test session, so the tiny backbone is pre-trained once."""
    return tmp_path_factory.mktemp("fedgen-runs")


@pytest.fixture(scope="session")
def tiny_text_run(shared_root: Path, data_root: Path) -> tuple[Path, dict]:
    """One uninterrupted 3-round tiny FedGen-Edge run with personalization, made once per session and
    read by the tests that only check its outputs (test_federation, test_export); (run dir, summary)."""
    from fedgen.config import config_from_dict
    from fedgen.experiment.run import run_experiment

    run = shared_root / "full"
    cfg = config_from_dict(tiny_raw(shared_root, data_root, personalize=True, rounds=3))
    return run, run_experiment(cfg, run, progress=False)


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


# ------------------------------------------------------------------ pytest-xdist (`make test` runs -n 2)

# Files whose tests read the same expensive session fixtures (tiny_text_run, the tiny image run) run
# in one worker, so each fixture is made once; every other file is a group of its own.
_SHARED_RUNS = {"test_federation.py", "test_export.py", "test_image.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """With ``--dist loadgroup``: one xdist group per test file (module-scoped fixtures made once),
    the files in ``_SHARED_RUNS`` in one group. A no-op without pytest-xdist."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("shared-runs" if name in _SHARED_RUNS else name))
