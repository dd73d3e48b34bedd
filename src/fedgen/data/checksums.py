"""SHA-256 checks shared by every dataset: file digests, ``SHA256SUMS`` lists, corrupt-file errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedgen.core.errors import DataError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, what: str, fix: str) -> None:
    """Raise :class:`DataError` ("<what> file <path> is corrupt ... <fix>") unless the digest matches."""
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{what} file {path} is corrupt: checksum mismatch (SHA-256 expected {expected}, "
            f"got {actual}). {fix}"
        )


def read_sha256sums(path: Path, fix: str) -> dict[str, str]:
    """Name -> digest from a ``sha256sum``-format list; a malformed line raises, ending in ``fix``."""
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{path} line {n} is malformed; {fix}")
        rel = parts[1].strip().lstrip("*")
        rel = rel[2:] if rel.startswith("./") else rel
        sums[rel] = parts[0].lower()
    return sums
