"""The package's layers are enforced: each imports only the layers below it, and no modules import
each other in a cycle. Imports inside functions and under ``TYPE_CHECKING`` count as edges.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``docs/architecture.md``
draws the same layers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path, config: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layer_and_acyclic_contracts() -> None:
    r = _lint_imports(ROOT, ROOT / "pyproject.toml", ROOT / "src")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_every_top_level_package_has_a_layer() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")
    assert layers["exhaustive"] is True  # a new top-level package must be given a layer
    named = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    on_disk = {p.stem for p in (ROOT / "src" / "fedgen").iterdir() if p.suffix == ".py" or p.is_dir()}
    on_disk -= {"__init__", "__pycache__"}
    assert on_disk == named


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def _contracts(tmp_path: Path) -> Path:
    """The same two contract types as the package's, on a two-layer package ``pkg``."""
    cfg = tmp_path / "contracts.toml"
    cfg.write_text(
        '[tool.importlinter]\nroot_package = "pkg"\n\n'
        '[[tool.importlinter.contracts]]\nname = "layers"\ntype = "layers"\n'
        'containers = ["pkg"]\nlayers = ["high", "low"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "acyclic"\ntype = "acyclic_siblings"\nancestors = ["pkg"]\n'
    )
    return cfg


def test_a_cycle_hidden_in_a_function_level_import_is_caught(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "high/__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from pkg.low import b\n",
            "low/b.py": "def f():\n    from pkg.low import a  # the kind of import that hid our old cycles\n",
        },
    )
    r = _lint_imports(root, _contracts(tmp_path), root)
    assert r.returncode != 0
    assert "No cycles are allowed in pkg.low" in r.stdout


def test_an_upward_import_under_type_checking_is_caught(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "high/__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import x\n",
            "high/x.py": "",
        },
    )
    r = _lint_imports(root, _contracts(tmp_path), root)
    assert r.returncode != 0
    assert "pkg.low is not allowed to import pkg.high" in r.stdout
