"""CIFAR-10: checksummed local format, loading, fetch from the official archive (local HTTP only), label
Dirichlet partitions and the public slice."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import closed_port
from fedgen.cli import main
from fedgen.core.errors import ConfigError, DataError
from fedgen.data import cifar10
from fedgen.data.cifar10 import (
    CIFAR10_FILES,
    CLASSES,
    SOURCE_JPEG,
    SOURCE_OFFICIAL,
    fetch_cifar10,
    load_cifar10,
    public_split,
    verify_cifar10,
)
from fedgen.data.partition import (
    Partition,
    build_label_partition,
    label_dirichlet_partition,
)

# --------------------------------------------------------------------------------------------- helpers


def write_sums(folder: Path, names=CIFAR10_FILES) -> None:
    lines = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (folder / "SHA256SUMS").write_text("".join(lines))


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    sources = np.array([f"{path.stem}/{i:04d}.jpg" for i in range(len(labels))])
    np.savez_compressed(path, images=images, labels=labels, source_paths=sources)


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """A data root whose cifar10/ holds the local format with 4 images per file (labels i % 10)."""
    folder = tmp_path / "cifar10"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, name in enumerate(CIFAR10_FILES):
        images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        write_npz(folder / name, images, (np.arange(4, dtype=np.int64) + 4 * k) % 10)
    write_sums(folder)
    return tmp_path


def pickled_batch(data: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({b"batch_label": b"synthetic", b"labels": labels, b"data": data}, protocol=2)


PIXEL = (5, 7)  # (row, column) of the marked pixel of image 3 of data_batch_2 (train index 13)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny archive in the official layout (10 images per batch), its checksums and its rows."""
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    y, x = PIXEL
    marked = batches["data_batch_2"][3]
    marked[[y * 32 + x, 1024 + y * 32 + x, 2048 + y * 32 + x]] = (200, 100, 50)  # R, G, B planes
    marked[[x * 32 + y, 1024 + x * 32 + y, 2048 + x * 32 + y]] = (1, 2, 3)  # the transposed position
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in batches.items():
            payload = pickled_batch(data, [(i + 3) % 10 for i in range(len(data))])
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    folder = tmp_path_factory.mktemp("mirror")
    blob = buf.getvalue()
    (folder / "cifar-10-python.tar.gz").write_bytes(blob)
    return {
        "folder": folder,
        "md5": hashlib.md5(blob).hexdigest(),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "batches": batches,
    }


def fetch(archive: dict, root: Path, url: str, **kw) -> Path:
    return fetch_cifar10(root, url=url, md5=archive["md5"], sha256=archive["sha256"], timeout=5, **kw)


# --------------------------------------------------------------------------------------------- constants


def test_classes_and_the_official_archive_are_pinned() -> None:
    assert CLASSES[0] == "airplane" and CLASSES[3] == "cat" and CLASSES[9] == "truck" and len(CLASSES) == 10
    assert tuple(f"train_{i:02d}.npz" for i in range(10)) + ("test.npz",) == CIFAR10_FILES
    assert cifar10.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar10.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar10.CIFAR10_SHA256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


# --------------------------------------------------------------------------------------------- verify / load


def test_verify_returns_every_listed_file_and_load_concatenates_train_in_name_order(local: Path) -> None:
    paths = verify_cifar10(local)
    assert paths == {n: local / "cifar10" / n for n in CIFAR10_FILES}
    data = load_cifar10(local)
    assert data.train_x.shape == (40, 32, 32, 3) and data.train_x.dtype == np.uint8
    assert data.train_y.dtype == np.int64 and data.train_y.tolist() == [i % 10 for i in range(40)]
    with np.load(local / "cifar10" / "train_01.npz") as z:
        assert np.array_equal(data.train_x[4:8], z["images"])
    assert data.test_x.shape == (4, 32, 32, 3)
    assert data.source == SOURCE_JPEG  # no PROVENANCE file: the shared JPEG-decoded copy


def test_missing_folder_says_how_to_fetch(tmp_path: Path) -> None:
    for verify in (True, False):
        with pytest.raises(DataError, match="fedgen data fetch cifar10") as exc:
            load_cifar10(tmp_path, verify=verify)
        assert "FEDGEN_DATA" in str(exc.value) and "\n" not in str(exc.value)


def test_missing_checksum_list_is_an_error(local: Path) -> None:
    (local / "cifar10" / "SHA256SUMS").unlink()
    with pytest.raises(DataError, match="SHA256SUMS is missing"):
        verify_cifar10(local)


def test_checksum_list_must_name_every_expected_file(local: Path) -> None:
    write_sums(local / "cifar10", CIFAR10_FILES[:-1])
    with pytest.raises(DataError, match="does not list test.npz"):
        verify_cifar10(local)


def test_missing_listed_file_is_named(local: Path) -> None:
    (local / "cifar10" / "train_07.npz").unlink()
    with pytest.raises(DataError, match="train_07.npz is missing"):
        verify_cifar10(local)


def test_one_changed_byte_raises_checksum_error_naming_file_and_both_hashes(local: Path) -> None:
    path = local / "cifar10" / "train_03.npz"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch") as exc:
        load_cifar10(local)
    msg = str(exc.value)
    assert str(path) in msg and expected in msg and hashlib.sha256(bytes(data)).hexdigest() in msg
    assert "fedgen data fetch cifar10 --force" in msg


@pytest.mark.parametrize(
    ("images", "labels", "problem"),
    [
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64), "images are uint8 \\[4, 32, 32\\]"),
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64), "images are float32"),
        (
            np.zeros((4, 3, 32, 32), np.uint8),
            np.zeros(4, np.int64),
            "images are uint8 \\[4, 3, 32, 32\\], expected uint8 \\[N, 32, 32, 3\\]",
        ),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3, np.int64), "labels are int64 \\[3\\]"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 2, 10]), "labels range 0..10"),
    ],
)
def test_malformed_chunk_with_matching_checksum_is_rejected(
    local: Path, images: np.ndarray, labels: np.ndarray, problem: str
) -> None:
    write_npz(local / "cifar10" / "train_05.npz", images, labels)
    write_sums(local / "cifar10")
    with pytest.raises(DataError, match=f"train_05.npz is malformed: {problem}"):
        load_cifar10(local)


def test_cli_verify_cifar10(local: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "--what", "cifar10", "--dir", str(local)]) == 0
    assert "CIFAR-10 OK (11 files" in capsys.readouterr().out
    (local / "cifar10" / "test.npz").unlink()
    assert main(["data", "verify", "--what", "cifar10", "--dir", str(local)]) == 2
    assert "test.npz is missing" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- fetch


def test_fetch_converts_the_official_archive_into_the_local_format(
    archive: dict, tmp_path: Path, serve, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = serve(archive["folder"])
    url = mirror.url + "/cifar-10-python.tar.gz"
    folder = fetch(archive, tmp_path, url)
    assert folder == tmp_path / "cifar10"
    assert [p.name for p in tmp_path.iterdir()] == ["cifar10"]  # no archive or temp folder left
    assert sorted(p.name for p in folder.iterdir()) == sorted([*CIFAR10_FILES, "PROVENANCE", "SHA256SUMS"])
    assert set(verify_cifar10(tmp_path)) == set(CIFAR10_FILES)
    data = load_cifar10(tmp_path)
    assert data.source == SOURCE_OFFICIAL
    assert data.train_x.shape == (50, 32, 32, 3) and data.test_x.shape == (10, 32, 32, 3)
    assert data.train_y.tolist() == [(i + 3) % 10 for i in range(10)] * 5
    y, x = PIXEL
    assert data.train_x[13, y, x].tolist() == [200, 100, 50]  # CHW rows -> HWC, RGB order
    assert data.train_x[13, x, y].tolist() == [1, 2, 3]
    row = archive["batches"]["test_batch"][9]
    assert data.test_x[9, 31, 0].tolist() == [row[31 * 32], row[1024 + 31 * 32], row[2048 + 31 * 32]]
    with np.load(folder / "train_02.npz") as z:  # 50 images in ten chunks of 5, archive order
        assert len(z["labels"]) == 5 and z["source_paths"][3] == "data_batch_2:3"
    assert mirror.requests == ["/cifar-10-python.tar.gz"]
    assert "downloaded" in capsys.readouterr().out

    # A second call finds a valid folder and downloads nothing; force downloads again.
    fetch(archive, tmp_path, url)
    assert len(mirror.requests) == 1 and "skipped" in capsys.readouterr().out
    fetch(archive, tmp_path, url, force=True)
    assert len(mirror.requests) == 2 and [p.name for p in tmp_path.iterdir()] == ["cifar10"]
    assert np.array_equal(load_cifar10(tmp_path).train_x, data.train_x)


def test_fetch_replaces_a_corrupt_folder(archive: dict, tmp_path: Path, serve) -> None:
    url = serve(archive["folder"]).url + "/cifar-10-python.tar.gz"
    fetch(archive, tmp_path, url)
    (tmp_path / "cifar10" / "test.npz").write_bytes(b"garbage")
    fetch(archive, tmp_path, url)
    assert load_cifar10(tmp_path).test_x.shape == (10, 32, 32, 3)


def test_fetch_of_an_archive_with_the_wrong_checksum_raises_and_leaves_nothing_behind(
    archive: dict, tmp_path: Path, serve
) -> None:
    url = serve(archive["folder"]).url + "/cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="wrong checksum"):
        fetch_cifar10(tmp_path, url=url, md5=archive["md5"], sha256="0" * 64, timeout=5)
    with pytest.raises(DataError, match="wrong checksum"):
        fetch_cifar10(tmp_path, url=url, timeout=5)  # the pinned official checksums
    assert list(tmp_path.iterdir()) == []


def test_fetch_of_an_archive_without_the_batches_raises_and_leaves_nothing_behind(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, serve
) -> None:
    mirror = tmp_path_factory.mktemp("mirror")
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        tar.addfile(info, io.BytesIO(b""))
    blob = (mirror / "cifar-10-python.tar.gz").read_bytes()
    archive = {"md5": hashlib.md5(blob).hexdigest(), "sha256": hashlib.sha256(blob).hexdigest()}
    with pytest.raises(DataError, match="no readable cifar-10-batches-py/data_batch_1"):
        fetch(archive, tmp_path, serve(mirror).url + "/cifar-10-python.tar.gz")
    assert list(tmp_path.iterdir()) == []


def test_fetch_from_an_unreachable_server_raises_with_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="Could not download") as exc:
        fetch_cifar10(tmp_path, url=url, timeout=5)
    assert url in str(exc.value) and "by hand" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_fetch_cifar10_reports_a_wrong_archive(
    archive: dict, tmp_path: Path, serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url = serve(archive["folder"]).url + "/cifar-10-python.tar.gz"
    assert main(["data", "fetch", "cifar10", "--url", url, "--dir", str(tmp_path)]) == 2
    assert "wrong checksum" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- partitions

LABELS = np.repeat(np.arange(10), 300)  # 3000 examples, 10 balanced classes


def assert_disjoint_and_covering(parts: list[list[int]], n: int) -> None:
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == n and set(flat) == set(range(n))


def test_label_dirichlet_partition_is_deterministic_disjoint_and_covering() -> None:
    a = label_dirichlet_partition(LABELS, 20, 0.3, seed=5)
    assert a == label_dirichlet_partition(LABELS, 20, 0.3, seed=5)
    assert a != label_dirichlet_partition(LABELS, 20, 0.3, seed=6)
    assert_disjoint_and_covering(a, len(LABELS))
    assert all(p == sorted(p) for p in a)


def test_label_dirichlet_partition_respects_min_size() -> None:
    assert min(map(len, label_dirichlet_partition(LABELS, 30, 0.3, seed=0, min_size=1))) < 40
    parts = label_dirichlet_partition(LABELS, 30, 0.3, seed=0, min_size=40)
    assert min(map(len, parts)) >= 40
    assert_disjoint_and_covering(parts, len(LABELS))


def test_impossible_label_partitions_raise_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs at least 3010 examples, only 3000"):
        label_dirichlet_partition(LABELS, 301, 1.0, seed=0)
    with pytest.raises(ConfigError, match="no draw in 20 gave all 10 clients >= 10"):
        label_dirichlet_partition(np.zeros(100, np.int64), 10, 0.01, seed=0, min_size=10, max_tries=20)
    with pytest.raises(ConfigError, match="alpha > 0"):
        label_dirichlet_partition(LABELS, 10, 0.0, seed=0)
    with pytest.raises(ConfigError, match="3001 clients"):
        build_label_partition(LABELS, num_clients=3001, alpha=1, test_fraction=0.2, seed=0, scheme="iid")


def test_build_label_partition_splits_each_client_80_20_and_records_params_and_stats(tmp_path: Path) -> None:
    part = build_label_partition(
        LABELS, num_clients=20, alpha=0.5, test_fraction=0.2, seed=1, class_names=list(CLASSES)
    )
    assert part.scheme == "dirichlet"
    assert part.params == {
        "num_clients": 20,
        "alpha": 0.5,
        "test_fraction": 0.2,
        "seed": 1,
        "num_examples": 3000,
        "scheme": "dirichlet",
        "min_size": 10,
    }
    assert_disjoint_and_covering([c.train_docs + c.test_docs for c in part.clients], len(LABELS))
    for c in part.clients:
        n = len(c.train_docs) + len(c.test_docs)
        assert len(c.test_docs) == round(0.2 * n) and not set(c.train_docs) & set(c.test_docs)
    assert part.doc_topics == LABELS.tolist() and part.topic_words[3] == ["cat"]
    s = part.stats["summary"]
    assert s["num_clients"] == 20 and s["num_examples"] == 3000
    assert sum(s["classes_per_client_hist"].values()) == 20
    assert s["class_sizes"] == {str(c): 300 for c in range(10)}
    rows = part.stats["clients"]
    assert sum(sum(r["classes"].values()) for r in rows) == 3000
    sizes = [r["examples_train"] + r["examples_test"] for r in rows]
    assert (s["examples_min"], s["examples_max"]) == (min(sizes), max(sizes))
    assert s["classes_per_client_mean"] == np.mean([r["num_classes"] for r in rows])
    part.save(tmp_path / "p.json")
    assert Partition.load(tmp_path / "p.json") == part


def test_iid_label_partition_is_balanced_and_mixed() -> None:
    part = build_label_partition(LABELS, num_clients=10, alpha=0.1, test_fraction=0.2, seed=0, scheme="iid")
    sizes = [len(c.train_docs) + len(c.test_docs) for c in part.clients]
    assert sizes == [300] * 10
    assert part.stats["summary"]["classes_per_client_hist"] == {"10": 10}


# --------------------------------------------------------------------------------------------- public split


def test_public_split_is_disjoint_sorted_deterministic_and_sized() -> None:
    public, pool = public_split(1000, 0.1, seed=0)
    assert len(public) == 100 and len(pool) == 900
    assert not set(public) & set(pool) and set(public) | set(pool) == set(range(1000))
    assert list(public) == sorted(public) and list(pool) == sorted(pool)
    again = public_split(1000, 0.1, seed=0)
    assert np.array_equal(again[0], public) and np.array_equal(again[1], pool)
    assert not np.array_equal(public_split(1000, 0.1, seed=1)[0], public)
    assert len(public_split(1000, 0.0, seed=0)[0]) == 0
    with pytest.raises(ValueError, match="fraction"):
        public_split(1000, 1.0, seed=0)


# --------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real(cifar_root: Path) -> cifar10.CIFAR10:
    return load_cifar10(cifar_root)


@pytest.mark.realdata
def test_real_cifar10_has_50000_train_and_10000_test_images_balanced_by_class(real: cifar10.CIFAR10) -> None:
    assert real.train_x.shape == (50_000, 32, 32, 3) and real.train_x.dtype == np.uint8
    assert real.test_x.shape == (10_000, 32, 32, 3) and real.test_x.dtype == np.uint8
    assert real.train_y.dtype == real.test_y.dtype == np.int64
    assert np.bincount(real.train_y).tolist() == [5000] * 10
    assert np.bincount(real.test_y).tolist() == [1000] * 10
    assert real.source == SOURCE_JPEG


@pytest.mark.realdata
def test_real_labels_alpha_controls_label_skew(real: cifar10.CIFAR10) -> None:
    public, pool = public_split(len(real.train_y), 0.1, seed=0)
    labels = real.train_y[pool]
    skewed, mixed = (
        build_label_partition(labels, num_clients=100, alpha=a, test_fraction=0.2, seed=0) for a in (0.1, 100)
    )
    for part in (skewed, mixed):
        assert_disjoint_and_covering([c.train_docs + c.test_docs for c in part.clients], 45_000)
        assert part.stats["summary"]["examples_min"] >= 10
    s, m = skewed.stats["summary"], mixed.stats["summary"]
    # Measured (seed 0): 4.86 classes/client (2.7 with >= 5% of a client's data) vs 10.0 at alpha=100.
    assert s["classes_per_client_mean"] <= 6 and s["major_classes_per_client_mean"] <= 3.5
    assert m["classes_per_client_mean"] >= 9.5 and m["major_classes_per_client_mean"] >= 8
    assert s["dominant_class_share_mean"] > 0.5 > 0.2 > m["dominant_class_share_mean"]
    assert len(public) == 5000 and not np.isin(public, pool).any()
