"""Shared fixtures: the real data root ($FEDGEN_DATA), which fails under CI and skips elsewhere."""

from __future__ import annotations

import os
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
def pretrain_root(data_root: Path) -> Path:
    """``data_root`` that also holds the checksummed pre-training corpus (``pretrain/SHA256SUMS``)."""
    if not (data_root / "pretrain" / "SHA256SUMS").is_file():
        _unavailable(f"real pre-training corpus not available under {data_root}")
    return data_root
