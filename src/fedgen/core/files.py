"""Crash-safe file writes: every file we write is either its old or its new content, never a mix.

* :func:`atomic_write_bytes` (and the text / JSON / safetensors forms): the bytes go to a
  temporary file in the same directory, which is fsync-ed, renamed over the target, and the
  directory fsync-ed, so after a crash (kill -9 or power loss) the target holds the old or the
  new content, never a torn one.
* :func:`append_line`: one line appended and fsync-ed (``metrics.jsonl``); a crash can only tear
  the last line, which :func:`read_jsonl` tolerates and reports.
* :func:`write_private`: a secret (private key) created with ``O_CREAT | O_EXCL`` and mode 0600
  in one step, so it is never readable by others, not even for a moment.
* :func:`sha256_file`: a file's digest (checkpoints record theirs and are verified on load).

Fault injection for tests: with ``FEDGEN_FAULT_KILL_AT_WRITE=N`` the process kills itself
(SIGKILL) during its N-th write through this module, after half of the bytes reached the
temporary file (or half of a jsonl line reached the file), exactly where a real crash does harm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save

from fedgen.core.errors import CheckpointError

log = logging.getLogger("fedgen")

FAULT_ENV = "FEDGEN_FAULT_KILL_AT_WRITE"
_writes = 0


def _maybe_die(fd: int, data: bytes) -> None:
    """Fault injection: at the N-th write ($FEDGEN_FAULT_KILL_AT_WRITE), write half and SIGKILL."""
    global _writes
    at = os.environ.get(FAULT_ENV)
    if not at:
        return
    _writes += 1
    if _writes == int(at):
        os.write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in directory ``path`` durable."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def is_interrupted_write(name: str) -> bool:
    """A temporary file of :func:`atomic_write_bytes` left by a crash mid-write (``.NAME.XXXX.tmp``):
    never the real file, safe to ignore (and to overwrite by the next write of NAME)."""
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """``path`` holds ``data`` afterwards, or (after a crash) its previous content; never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _maybe_die(fd, data)
        _write_all(fd, data)
        os.fchmod(fd, mode)  # mkstemp creates 0600; our outputs are readable like write_text's
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any, **dumps: Any) -> None:
    atomic_write_text(path, json.dumps(obj, **({"indent": 2} | dumps)))


def atomic_save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, atomically (the tensors serialized in memory, then written)."""
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` (a newline is added) and fsync: a crash tears at most this last line."""
    data = (line + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _maybe_die(fd, data)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict]:
    """The rows of a JSON-lines file. A torn last line (a crash mid-append) is dropped with a
    logged warning (and cut off the file with ``repair``); a bad line elsewhere is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s: ignoring a torn last line (a crash during its write): %.60r", path, line)
                if repair:
                    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
                break
            raise CheckpointError(f"{path}: line {i + 1} is not valid JSON") from None
    return rows


def write_private(path: str | Path, data: bytes) -> None:
    """A secret file created with mode 0600 in one step (``O_CREAT | O_EXCL``), then renamed into
    place: never readable by group or others, not even between create and chmod."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
