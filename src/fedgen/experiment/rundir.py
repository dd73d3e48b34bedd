"""Run directories: atomic JSON writes, metrics.jsonl, checkpoints and resume.

State files are safetensors: a LoRA state is written as a PEFT adapter directory
(``adapter_model.safetensors`` + ``adapter_config.json``), any other state as
``model.safetensors``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from fedgen.core.errors import CheckpointError
from fedgen.core.files import (
    append_line,
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    read_jsonl,
    sha256_file,
)
from fedgen.models.lora import read_adapter, save_adapter
from fedgen.models.params import State, first_nonfinite

MODEL_FILE = "model.safetensors"


@dataclass
class Resume:
    """Where a run continues: its last completed round, that round's global state, the clients'
    kept states and the cumulative counters (round 0 and nothing else for a fresh run)."""

    round: int = 0
    state: State | None = None
    kept: dict[int, State] = field(default_factory=dict)
    counters: dict = field(default_factory=dict)


def write_state(path: Path, state: State, peft_model=None) -> Path:
    """Save ``state`` to the directory ``path`` (PEFT adapter when ``peft_model`` is given).

    A state holding NaN/Inf is never saved: a CheckpointError names the tensor."""
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(f"refusing to save {path}: tensor {bad} holds NaN/Inf")
    if peft_model is not None:
        return save_adapter(peft_model, state, path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(state, path / MODEL_FILE)
    return path


CHECKSUMS = "SHA256SUMS.json"


def write_checksums(ckdir: Path) -> None:
    """Record the SHA-256 of every file of a checkpoint directory (verified on load)."""
    sums = {
        p.relative_to(ckdir).as_posix(): sha256_file(p)
        for p in sorted(ckdir.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    }
    atomic_write_json(ckdir / CHECKSUMS, sums)


def verify_checksums(ckdir: Path) -> None:
    """A CheckpointError naming the first file of ``ckdir`` that is missing or whose SHA-256 differs
    from the one recorded when it was written (checkpoints from before checksums: nothing checked)."""
    if not (ckdir / CHECKSUMS).is_file():
        return
    try:
        sums = json.loads((ckdir / CHECKSUMS).read_text())
    except ValueError:
        raise CheckpointError(f"{ckdir / CHECKSUMS} is corrupt") from None
    for rel, digest in sorted(sums.items()):
        f = ckdir / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing")
        if sha256_file(f) != digest:
            raise CheckpointError(f"checkpoint file {f} does not match its recorded SHA-256 (corrupt)")


def read_state(path: Path) -> State:
    """Read a state written by :func:`write_state`.

    Corrupt files and NaN/Inf values raise one :class:`~fedgen.core.errors.CheckpointError` line.
    """
    if (path / MODEL_FILE).is_file():
        try:
            state = dict(sorted(load_file(str(path / MODEL_FILE)).items()))
        except Exception as e:  # safetensors raises several types for corrupt files
            raise CheckpointError(
                f"{path / MODEL_FILE} is corrupt: {' '.join(str(e).split())[:200]}"
            ) from None
        bad = first_nonfinite(state)
        if bad is not None:
            raise CheckpointError(f"{path / MODEL_FILE} is corrupt: {bad} contains NaN or Inf")
        return state
    return read_adapter(path)


def read_run_info(run_dir: str | Path) -> dict:
    """``run_dir/run.json`` (result key, run id, backbone digest, ...); {} where there is none or
    it cannot be read as a JSON object."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class RunDir:
    """Atomic writes and resume bookkeeping for one run directory."""

    def __init__(self, path: Path):
        self.path = path
        self.metrics = path / "metrics.jsonl"
        self.state_file = path / "state.json"
        self.run_id: str | None = None  # run.json's run id (fedgen.experiment.run._open_run)

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def append_metrics(self, row: dict) -> None:
        """Append one round's metrics; a non-finite number is a CheckpointError naming its key."""
        bad = _nonfinite_key(row)
        if bad is not None:
            raise CheckpointError(f"round {row.get('round')}: metric {bad} is not finite; not reported")
        append_line(self.metrics, json.dumps(row))

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl; a torn last line (a crash mid-write) is dropped with a warning."""
        return read_jsonl(self.metrics)

    def checkpoint(
        self, rnd: int, state: State, kept: dict[int, State], counters: dict, keep: int, peft_model=None
    ) -> None:
        """Save round ``rnd``'s global state and the clients' kept states, then ``state.json``."""
        ckdir = self.path / "checkpoints"
        tmp = ckdir / f"round_{rnd:04d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        write_state(tmp, state, peft_model)
        for k, st in sorted(kept.items()):
            write_state(
                tmp / "kept" / f"client_{k:03d}", st, peft_model if st.keys() == state.keys() else None
            )
        write_checksums(tmp)
        final = ckdir / f"round_{rnd:04d}"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(ckdir)
        self.write_json("state.json", {"round": rnd, **counters})
        for old in sorted(ckdir.glob("round_[0-9][0-9][0-9][0-9]"))[:-keep]:
            shutil.rmtree(old)

    def load_resume(self) -> Resume:
        """The last checkpoint (metrics.jsonl is cut back to it); ``Resume()`` for a fresh run."""
        if not self.state_file.is_file():
            return Resume()
        try:
            st = json.loads(self.state_file.read_text())
            rnd = int(st.pop("round"))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{self.state_file} is corrupt ({e}); delete the run dir to start over"
            ) from None
        ck = self.path / "checkpoints" / f"round_{rnd:04d}"
        verify_checksums(ck)
        state = read_state(ck)
        kept = {int(p.name.split("_")[1]): read_state(p) for p in sorted((ck / "kept").glob("client_*"))}
        rows = [r for r in self.read_metrics() if r["round"] <= rnd]  # a torn last line is dropped
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))
        return Resume(rnd, state, kept, st)


def _nonfinite_key(obj, prefix: str = "") -> str | None:
    """The first key (dotted path) of a JSON-like object whose number is NaN or Inf."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return prefix or "value"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        bad = _nonfinite_key(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None
