"""Streaming downloads into temp files (shared by every dataset fetcher)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from fedgen.core.errors import DataError

CHUNK = 1 << 20


def stream_to_temp(url: str, tmp_dir: Path, timeout: float, by_hand: str) -> tuple[Path, int, str]:
    """Download ``url`` into a new temp file in ``tmp_dir``; return (temp path, bytes, SHA-256).

    The caller owns (and must remove or rename) the temp file. On a network or HTTP error it
    is removed and a :class:`DataError` is raised whose message ends with ``by_hand``.
    """
    name = url.rsplit("/", 1)[-1] or "download"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=tmp_dir)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    while chunk := resp.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except (OSError, ValueError, http.client.HTTPException) as e:
                is_http = isinstance(e, urllib.error.HTTPError)
                reason = e if is_http else (getattr(e, "reason", None) or e)
                raise DataError(
                    f"Could not download {url}: {reason}. Check the network (or pass another base URL), "
                    + by_hand
                ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, size, h.hexdigest()
