"""CIFAR-10 (60,000 32x32 RGB images, 10 classes): locate, verify, fetch, load, and split off a public slice.

Local format, under ``<data root>/cifar10/`` (data root: explicit argument, else ``$FEDGEN_DATA``, else
``./data``): ``train_00.npz`` ... ``train_09.npz`` (the training set cut into ten consecutive chunks),
``test.npz``, and ``SHA256SUMS`` (``sha256sum`` format) listing them. Each npz loads without pickle and
holds ``images`` (uint8, N x 32 x 32 x 3, HWC RGB), ``labels`` (int64, N, 0..9 in :data:`CLASSES` order)
and ``source_paths`` (where each image came from). Every listed file is checked against ``SHA256SUMS``.

Provenance (:attr:`CIFAR10.source`): :func:`fetch_cifar10` builds the folder from the official archive and
writes a ``PROVENANCE`` file whose first line is ``official``; the folder then reports ``"official"``
(bit-exact pixels). A folder without ``PROVENANCE`` is the shared copy documented in its ``SOURCES.md``,
decoded from JPEG re-encodings of CIFAR-10, and reports ``"jpeg-decoded copy (lossy)"``: FID against it
is only comparable within this project, not with published CIFAR-10 figures.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgen.core.errors import DataError
from fedgen.data.checksums import check_sha256, read_sha256sums, sha256_file
from fedgen.data.download import stream_to_temp
from fedgen.data.ptb import data_root

__all__ = [
    "CIFAR10",
    "CIFAR10_FILES",
    "CIFAR10_MD5",
    "CIFAR10_SHA256",
    "CIFAR10_URL",
    "CLASSES",
    "SOURCE_JPEG",
    "SOURCE_OFFICIAL",
    "fetch_cifar10",
    "load_cifar10",
    "public_split",
    "verify_cifar10",
]

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: The files every CIFAR-10 folder holds (and lists in its SHA256SUMS), in load order.
CIFAR10_FILES: tuple[str, ...] = tuple(f"train_{i:02d}.npz" for i in range(10)) + ("test.npz",)

#: The official python-format archive (Krizhevsky) and its checksums (MD5 as published on the CIFAR page
#: and pinned by torchvision; SHA-256 as pinned by Keras ``cifar10.load_data``; 170,498,071 bytes).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"

SOURCE_OFFICIAL = "official"
SOURCE_JPEG = "jpeg-decoded copy (lossy)"

_ARCHIVE_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"


@dataclass
class CIFAR10:
    train_x: np.ndarray  # uint8 [50000, 32, 32, 3], HWC RGB
    train_y: np.ndarray  # int64 [50000]
    test_x: np.ndarray  # uint8 [10000, 32, 32, 3]
    test_y: np.ndarray  # int64 [10000]
    source: str  # SOURCE_OFFICIAL or SOURCE_JPEG


_REFETCH = "re-fetch with `fedgen data fetch cifar10 --force`."


def _cifar_dir(root: str | Path | None) -> Path:
    return data_root(root) / "cifar10"


def _missing_error(path: Path) -> DataError:
    return DataError(
        f"CIFAR-10 not found: {path} is missing. Run `fedgen data fetch cifar10` (needs internet) or set "
        f"FEDGEN_DATA to a folder that holds cifar10/ with SHA256SUMS and {', '.join(CIFAR10_FILES)}."
    )


def verify_cifar10(root: str | Path | None = None) -> dict[str, Path]:
    """Check ``<root>/cifar10/``: SHA256SUMS lists every file of :data:`CIFAR10_FILES`, each matches.

    Returns file name -> path for every file listed. Raises :class:`DataError` naming what is wrong.
    """
    folder = _cifar_dir(root)
    if not folder.is_dir():
        raise _missing_error(folder)
    sums_path = folder / "SHA256SUMS"
    if not sums_path.is_file():
        raise DataError(
            f"CIFAR-10 checksum list {sums_path} is missing. Re-fetch with `fedgen data fetch cifar10 "
            "--force` or set FEDGEN_DATA to a folder that holds a complete cifar10/."
        )
    sums = read_sha256sums(sums_path, _REFETCH)
    unlisted = [name for name in CIFAR10_FILES if name not in sums]
    if unlisted:
        raise DataError(
            f"{sums_path} does not list {', '.join(unlisted)}; "
            "re-fetch with `fedgen data fetch cifar10 --force`."
        )
    paths: dict[str, Path] = {}
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            raise _missing_error(path)
        check_sha256(path, expected, "CIFAR-10", "Re-fetch it with `fedgen data fetch cifar10 --force`.")
        paths[name] = path
    return paths


def _source(folder: Path) -> str:
    prov = folder / "PROVENANCE"
    if prov.is_file():
        lines = prov.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].strip() == SOURCE_OFFICIAL:
            return SOURCE_OFFICIAL
    return SOURCE_JPEG


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one chunk, checked: uint8 [N,32,32,3], integer labels [N] in 0..9."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(
            f"CIFAR-10 file {path} is unreadable or lacks images/labels ({e}); re-fetch with "
            "`fedgen data fetch cifar10 --force`."
        ) from e
    problem = None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        problem = f"images are {images.dtype} {list(images.shape)}, expected uint8 [N, 32, 32, 3]"
    elif labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        problem = f"labels are {labels.dtype} {list(labels.shape)}, expected integers [{len(images)}]"
    elif len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        problem = f"labels range {labels.min()}..{labels.max()}, expected 0..{len(CLASSES) - 1}"
    if problem:
        raise DataError(
            f"CIFAR-10 file {path} is malformed: {problem}. "
            "Re-fetch with `fedgen data fetch cifar10 --force`."
        )
    return images, labels.astype(np.int64, copy=False)


def load_cifar10(root: str | Path | None = None, verify: bool = True) -> CIFAR10:
    """Read train (chunks concatenated in name order) and test; checks shapes, dtypes and label range."""
    folder = _cifar_dir(root)
    if verify:
        verify_cifar10(root)
    else:
        for name in CIFAR10_FILES:
            if not (folder / name).is_file():
                raise _missing_error(folder / name)
    train = [_read_npz(folder / name) for name in CIFAR10_FILES if name.startswith("train_")]
    test_x, test_y = _read_npz(folder / "test.npz")
    return CIFAR10(
        train_x=np.concatenate([x for x, _ in train]),
        train_y=np.concatenate([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        source=_source(folder),
    )


def public_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random class-agnostic split of ``range(n)`` into (public slice, client pool), both sorted int64.

    The public slice (``round(fraction * n)`` indices) is for server-side pre-training; no client holds it.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"public fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(perm[:k]).astype(np.int64), np.sort(perm[k:]).astype(np.int64)


# ------------------------------------------------------------------------------------------------ fetch


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_batch(tar: tarfile.TarFile, name: str, url: str) -> tuple[np.ndarray, np.ndarray]:
    """One official batch as HWC uint8 images and int64 labels."""
    member = f"{_ARCHIVE_DIR}/{name}"
    try:
        f = tar.extractfile(member)
        if f is None:
            raise KeyError(member)
        # pickle is acceptable here only because the archive's checksum was verified before opening it.
        batch = pickle.load(io.BytesIO(f.read()), encoding="bytes")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{url} has no readable {member} ({e!r}); it is not the official archive.") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"{url}: {member} holds data {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]."
        )
    # Rows are CHW-flattened (1024 red, 1024 green, 1024 blue values, each row-major): go to HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _save_npz(path: Path, images: np.ndarray, labels: np.ndarray, sources: list[str]) -> None:
    np.savez_compressed(path, images=images, labels=labels, source_paths=np.array(sources))


def _convert(archive: Path, out: Path, url: str) -> None:
    """Write the local format (chunks, SHA256SUMS, PROVENANCE) of a verified archive into ``out``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            batches = {name: _read_batch(tar, name, url) for name in (*_TRAIN_BATCHES, _TEST_BATCH)}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{url} is not a readable tar.gz archive ({e}).") from e
    train_x = np.concatenate([batches[b][0] for b in _TRAIN_BATCHES])
    train_y = np.concatenate([batches[b][1] for b in _TRAIN_BATCHES])
    train_src = [f"{b}:{i}" for b in _TRAIN_BATCHES for i in range(len(batches[b][1]))]
    for k, idx in enumerate(np.array_split(np.arange(len(train_y)), 10)):
        _save_npz(out / f"train_{k:02d}.npz", train_x[idx], train_y[idx], [train_src[i] for i in idx])
    test_x, test_y = batches[_TEST_BATCH]
    _save_npz(out / "test.npz", test_x, test_y, [f"{_TEST_BATCH}:{i}" for i in range(len(test_y))])
    sums = "".join(f"{sha256_file(out / name)}  {name}\n" for name in CIFAR10_FILES)
    (out / "SHA256SUMS").write_text(sums, encoding="utf-8")
    (out / "PROVENANCE").write_text(
        f"{SOURCE_OFFICIAL}\nConverted by fedgen.data.cifar10.fetch_cifar10 from {url}\n"
        f"(archive SHA-256 {sha256_file(archive)}, MD5 {_md5_file(archive)}).\n"
        f"train_00..09: {_TRAIN_BATCHES[0]}..{_TRAIN_BATCHES[-1]} in order, cut into ten chunks; "
        f"test: {_TEST_BATCH}. Pixels bit-exact (CHW rows -> HWC uint8); source_paths = '<batch>:<row>'.\n",
        encoding="utf-8",
    )


def _swap_in(new: Path, folder: Path) -> None:
    """Rename ``new`` to ``folder``; an existing ``folder`` is moved aside first and removed afterwards."""
    if not folder.exists():
        os.replace(new, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=".cifar10.", suffix=".old", dir=folder.parent))
    os.replace(folder, old / "cifar10")
    try:
        os.replace(new, folder)
    except OSError:
        os.replace(old / "cifar10", folder)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def fetch_cifar10(
    root: str | Path | None = None,
    url: str = CIFAR10_URL,
    force: bool = False,
    timeout: float = 120,
    md5: str | None = CIFAR10_MD5,
    sha256: str | None = CIFAR10_SHA256,
) -> Path:
    """Download the official archive and convert it into ``<root>/cifar10/``; returns that folder.

    A folder that already verifies is kept unless ``force``. The archive must match ``md5`` and ``sha256``
    (``None`` skips one) before it is opened. Everything is written into a temp folder beside the target and
    renamed into place at the end, so a failure leaves neither a partial folder nor the archive behind.
    """
    folder = _cifar_dir(root)
    if not force and folder.is_dir():
        try:
            verify_cifar10(root)
            print(f"cifar10: {folder} already present and verified, skipped")
            return folder
        except DataError:
            pass
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create {parent}: {e.strerror}. Choose a writable data root (FEDGEN_DATA)."
        ) from e
    by_hand = f"or put a converted cifar10/ folder (see fedgen.data.cifar10) into {parent} by hand."
    try:
        archive, size, actual_sha = stream_to_temp(url, parent, timeout, by_hand)
    except OSError as e:
        raise DataError(f"Cannot write into {parent}: {e.strerror}. Choose a writable data root.") from e
    work = None
    try:
        actual_md5 = _md5_file(archive)
        if (sha256 is not None and actual_sha != sha256) or (md5 is not None and actual_md5 != md5):
            raise DataError(
                f"Downloaded {url} has the wrong checksum (SHA-256 expected {sha256}, got {actual_sha}; "
                f"MD5 expected {md5}, got {actual_md5}); nothing was saved. Try again later or another URL."
            )
        work = Path(tempfile.mkdtemp(prefix=".cifar10.", suffix=".part", dir=parent))
        _convert(archive, work, url)
        _swap_in(work, folder)
    except OSError as e:
        raise DataError(f"Cannot write CIFAR-10 into {folder}: {e}. Choose a writable data root.") from e
    finally:
        archive.unlink(missing_ok=True)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"cifar10: downloaded {url} ({size:,} bytes), checksum verified, converted -> {folder}")
    return folder
