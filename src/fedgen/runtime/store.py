"""Per-client state that must survive rounds (FedPer's personal layers, Ditto's personal adapter).

:class:`ClientStore` is a ``MutableMapping[int, State]`` on disk, so it can stand in for a
:class:`~fedgen.fl.algorithms.ClientLogic`'s ``kept`` dict unchanged: the in-process runtime
can use it, and a Flower SuperNode keeps its own clients' store on its own disk.

Layout: ``<root>/client_NNN.safetensors`` (safetensors metadata ``round``), plus
``client_NNN.prev.safetensors``, the version before it. Only what changed is written: a put
of a state equal to the stored one writes nothing. Reads honour :meth:`ClientStore.begin_round`:
while round r runs, a version written at round >= r (left by a crashed attempt at r) is
ignored and the previous version is used, so a resumed round starts from what the client held
before it, exactly as in an uninterrupted run.

Every entry is tagged with the run id (safetensors metadata ``run_id``; ``run.json``'s, passed to every
node with the run config): a store opened for run B refuses, with one line, to read or overwrite a
state written by run A, so no personal state leaks from one run into another. Writes are atomic
(temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedgen.core.errors import CheckpointError
from fedgen.core.files import atomic_save_safetensors
from fedgen.models.params import State


def _equal(a: State, b: State) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


class ClientStore(MutableMapping[int, State]):
    """An on-disk ``client id -> state`` map; each entry tagged with the round that wrote it."""

    def __init__(self, root: str | Path, run_id: str | None = None):
        self.root = Path(root)
        self.run_id = run_id  # None: an untagged store (inspection, tests), no run check
        self.root.mkdir(parents=True, exist_ok=True)
        self.round: int | None = None  # the round in progress (None: newest versions)
        self.writes = 0  # files written so far (tests: only what changed)

    def begin_round(self, rnd: int) -> None:
        """Round ``rnd`` runs now: writes are tagged ``rnd``, reads see rounds < ``rnd`` only."""
        self.round = rnd

    def end_round(self) -> None:
        """The round is over: reads see the newest versions again."""
        self.round = None

    def _path(self, k: int, prev: bool = False) -> Path:
        return self.root / f"client_{k:03d}{'.prev' if prev else ''}.safetensors"

    def _round_of(self, path: Path) -> int:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if self.run_id is not None and meta.get("run_id") != self.run_id:
            raise CheckpointError(
                f"client store {path} was written by run {meta.get('run_id') or '(untagged)'}, not by this "
                f"run {self.run_id}: refusing another run's client state (remove that store to start over)"
            )
        return int(meta.get("round", -1))

    def _visible(self, k: int) -> Path | None:
        for path in (self._path(k), self._path(k, prev=True)):
            if path.is_file() and (self.round is None or self._round_of(path) < self.round):
                return path
        return None

    def __getitem__(self, k: int) -> State:
        path = self._visible(k)
        if path is None:
            raise KeyError(k)
        self._round_of(path)  # refuses a state written by another run
        try:
            return dict(sorted(load_file(str(path)).items()))
        except Exception as e:  # safetensors raises several types for corrupt files
            raise CheckpointError(
                f"client store {path} is corrupt: {' '.join(str(e).split())[:200]}"
            ) from None

    def __setitem__(self, k: int, state: State) -> None:
        rnd = self.round if self.round is not None else 0
        cur = self._path(k)
        if cur.is_file():
            cur_round = self._round_of(cur)
            if cur_round == rnd and _equal(dict(load_file(str(cur))), state):
                return
            if cur_round < rnd:
                os.replace(cur, self._path(k, prev=True))
        meta = {"round": str(rnd), **({"run_id": self.run_id} if self.run_id is not None else {})}
        atomic_save_safetensors(state, cur, metadata=meta)
        self.writes += 1

    def __delitem__(self, k: int) -> None:
        found = False
        for path in (self._path(k), self._path(k, prev=True)):
            if path.is_file():
                path.unlink()
                found = True
        if not found:
            raise KeyError(k)

    def _ids(self) -> list[int]:
        ids = {int(p.name.split("_")[1].split(".")[0]) for p in self.root.glob("client_*.safetensors")}
        return sorted(k for k in ids if self._visible(k) is not None)

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids())

    def __len__(self) -> int:
        return len(self._ids())
