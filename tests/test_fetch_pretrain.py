"""fetch_pretrain: download, verify and install the pre-training corpus (local HTTP server only)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from conftest import closed_port
from fedgen.core.errors import DataError
from fedgen.data import corpus_fetch as corpus
from fedgen.data.corpus import pretrain_files
from fedgen.data.corpus_fetch import PRETRAIN_MANIFEST, PretrainDownload, fetch_pretrain

# --------------------------------------------------------------------------------------------- helpers


def _build_mirror(mirror: Path, manifest: tuple[PretrainDownload, ...], data: dict[str, bytes]) -> None:
    """Lay out ``{repo}/{commit}/{path}`` as GitHub raw would serve it; ``data``: local relpath -> bytes."""
    for dl in manifest:
        renames = dict(dl.renames)
        remote = mirror / dl.repo / dl.commit / dl.path
        if dl.member_dir is None:
            remote.mkdir(parents=True, exist_ok=True)
            for name, _ in dl.files:
                (remote / renames.get(name, name)).write_bytes(data[f"{dl.local_dir}/{name}"])
        else:
            remote.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(remote, "a", zipfile.ZIP_DEFLATED) as zf:
                for name, _ in dl.files:
                    member = f"{dl.member_dir}/{renames.get(name, name)}"
                    zf.writestr(member, data[f"{dl.local_dir}/{name}"])


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


# --------------------------------------------------------------------------------------------- real corpus


@pytest.fixture(scope="module")
def real_mirror(pretrain_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror of the real corpus's upstream layout: plain files copied, zips built from the real files."""
    real = pretrain_root / "pretrain"
    mirror = tmp_path_factory.mktemp("mirror")
    rels = [f"{dl.local_dir}/{name}" for dl in PRETRAIN_MANIFEST for name, _ in dl.files]
    _build_mirror(mirror, PRETRAIN_MANIFEST, {rel: (real / rel).read_bytes() for rel in rels})
    return mirror


def test_manifest_matches_the_real_checksum_list(pretrain_root: Path) -> None:
    listed = {f"./{dl.local_dir}/{name}": sha for dl in PRETRAIN_MANIFEST for name, sha in dl.files}
    real = {}
    for line in (pretrain_root / "pretrain" / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        sha, rel = line.split()
        real[rel] = sha
    assert listed == real
    assert len(listed) == 139


def test_fetch_reproduces_the_real_corpus_and_then_skips(
    pretrain_root: Path,
    real_mirror: Path,
    tmp_path: Path,
    serve,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = pretrain_root / "pretrain"
    mirror = serve(real_mirror)
    folder = fetch_pretrain(tmp_path, base_url=mirror.url + "/", timeout=10)
    assert folder == tmp_path / "pretrain"

    # One request per plain file plus one per zip archive, and one progress line each.
    n_downloads = sum(len(dl.files) if dl.member_dir is None else 1 for dl in PRETRAIN_MANIFEST)
    assert len(mirror.requests) == n_downloads == 19
    out = capsys.readouterr().out.splitlines()
    assert len(out) == n_downloads and all("downloaded" in line for line in out)

    # Byte-identical files, the same SHA256SUMS, and nothing else.
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    want = sorted(
        p.relative_to(real).as_posix() for p in real.rglob("*") if p.is_file() and p.name != "SOURCES.md"
    )
    assert got == want
    for rel in want:
        assert (folder / rel).read_bytes() == (real / rel).read_bytes(), rel
    files = pretrain_files(tmp_path, verify=True)
    real_files = pretrain_files(pretrain_root, verify=False)
    assert {s: [p.relative_to(folder) for p in ps] for s, ps in files.items()} == {
        s: [p.relative_to(real) for p in ps] for s, ps in real_files.items()
    }

    # Second call: everything verified locally, no request at all.
    assert fetch_pretrain(tmp_path, base_url=mirror.url, timeout=10) == folder
    assert len(mirror.requests) == n_downloads
    out = capsys.readouterr().out.splitlines()
    assert out and all("skipped" in line for line in out)

    # A corrupt local file is replaced: only its own download is repeated.
    (folder / "wikitext-2-valid-test" / "wiki.test.tokens").write_bytes(b"garbage\n")
    fetch_pretrain(tmp_path, base_url=mirror.url, timeout=10)
    assert mirror.requests[n_downloads:] == [
        f"/pimondontknow/Privacy_FL_IoT/{corpus._WIKITEXT_COMMIT}/data/wikitext-2/wiki.test.tokens"
    ]
    pretrain_files(tmp_path, verify=True)
    assert _leftovers(folder) == []


# --------------------------------------------------------------------------------------------- failures

TINY = {
    "plain/a.txt": b"the cat sat on the mat\n",
    "plain/README.x": b"about a\n",
    "zipped/b.txt": b"the dog sat too\n",
    "zipped/c.txt": b"a bird flew away\n",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TINY_MANIFEST = (
    PretrainDownload(
        "o/plain",
        "c1",
        "dir",
        None,
        "plain",
        (("README.x", _sha(TINY["plain/README.x"])), ("a.txt", _sha(TINY["plain/a.txt"]))),
        (("README.x", "README"),),
    ),
    PretrainDownload(
        "o/zipped",
        "c2",
        "stuff/archive.zip",
        "archive",
        "zipped",
        (("b.txt", _sha(TINY["zipped/b.txt"])), ("c.txt", _sha(TINY["zipped/c.txt"]))),
    ),
)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "PRETRAIN_MANIFEST", TINY_MANIFEST)


def test_tiny_manifest_fetches_renamed_files_and_members_and_writes_sums(
    tiny: None, tmp_path: Path, serve, capsys: pytest.CaptureFixture[str]
) -> None:
    _build_mirror(tmp_path / "mirror", TINY_MANIFEST, TINY)
    mirror = serve(tmp_path / "mirror")
    folder = fetch_pretrain(tmp_path / "root", base_url=mirror.url, timeout=5)
    for rel, data in TINY.items():
        assert (folder / rel).read_bytes() == data
    assert sorted(mirror.requests) == [
        "/o/plain/c1/dir/README",
        "/o/plain/c1/dir/a.txt",
        "/o/zipped/c2/stuff/archive.zip",
    ]
    assert (folder / "SHA256SUMS").read_text(encoding="utf-8") == "".join(
        f"{_sha(TINY[rel])}  ./{rel}\n" for rel in sorted(TINY)
    )
    assert len(capsys.readouterr().out.splitlines()) == 3
    fetch_pretrain(tmp_path / "root", base_url=mirror.url, timeout=5, force=True)
    assert len(mirror.requests) == 6


def test_wrong_bytes_raise_and_leave_no_file(tiny: None, tmp_path: Path, serve) -> None:
    _build_mirror(tmp_path / "mirror", TINY_MANIFEST, {**TINY, "plain/a.txt": b"the cat sat on the hat\n"})
    mirror = serve(tmp_path / "mirror")
    with pytest.raises(DataError, match="wrong checksum") as exc:
        fetch_pretrain(tmp_path / "root", base_url=mirror.url, timeout=5)
    msg = str(exc.value)
    assert "/o/plain/c1/dir/a.txt" in msg and "by hand" in msg and "SOURCES.md" in msg and "\n" not in msg
    folder = tmp_path / "root" / "pretrain"
    assert not (folder / "plain" / "a.txt").exists()
    assert not (folder / "SHA256SUMS").exists()
    assert _leftovers(folder) == []


def test_wrong_member_bytes_raise_and_leave_no_file(tiny: None, tmp_path: Path, serve) -> None:
    _build_mirror(tmp_path / "mirror", TINY_MANIFEST, {**TINY, "zipped/c.txt": b"a bird flew in\n"})
    mirror = serve(tmp_path / "mirror")
    with pytest.raises(DataError, match=r"Member 'archive/c\.txt' of .*archive\.zip has the wrong checksum"):
        fetch_pretrain(tmp_path / "root", base_url=mirror.url, timeout=5)
    folder = tmp_path / "root" / "pretrain"
    assert not (folder / "zipped" / "c.txt").exists()
    assert _leftovers(folder) == []


def test_zip_missing_a_member_raises(tiny: None, tmp_path: Path, serve) -> None:
    _build_mirror(tmp_path / "mirror", TINY_MANIFEST[:1], TINY)
    zip_path = tmp_path / "mirror" / "o" / "zipped" / "c2" / "stuff" / "archive.zip"
    zip_path.parent.mkdir(parents=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("archive/b.txt", TINY["zipped/b.txt"])
    mirror = serve(tmp_path / "mirror")
    with pytest.raises(DataError, match=r"archive\.zip has no member 'archive/c\.txt'.*by hand"):
        fetch_pretrain(tmp_path / "root", base_url=mirror.url, timeout=5)
    folder = tmp_path / "root" / "pretrain"
    assert list((folder / "zipped").iterdir()) == []


def test_bad_zip_raises(tiny: None, tmp_path: Path, serve) -> None:
    _build_mirror(tmp_path / "mirror", TINY_MANIFEST[:1], TINY)
    zip_path = tmp_path / "mirror" / "o" / "zipped" / "c2" / "stuff" / "archive.zip"
    zip_path.parent.mkdir(parents=True)
    zip_path.write_bytes(b"<html>not a zip</html>")
    mirror = serve(tmp_path / "mirror")
    with pytest.raises(DataError, match=r"archive\.zip is not a valid zip archive"):
        fetch_pretrain(tmp_path / "root", base_url=mirror.url, timeout=5)
    assert _leftovers(tmp_path / "root" / "pretrain") == []


def test_http_error_and_closed_port_raise(tiny: None, tmp_path: Path, serve) -> None:
    (tmp_path / "empty").mkdir()
    mirror = serve(tmp_path / "empty")
    with pytest.raises(DataError, match=r"Could not download .*/o/plain/c1/dir/README: HTTP Error 404"):
        fetch_pretrain(tmp_path / "root", base_url=mirror.url, timeout=5)
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(DataError, match=rf"Could not download {url}/o/plain/c1/dir/README: .*by hand"):
        fetch_pretrain(tmp_path / "root", base_url=url, timeout=5)
    assert _leftovers(tmp_path / "root" / "pretrain") == []
