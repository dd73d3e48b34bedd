"""Image-quality metrics: Frechet distance, KID, the Inception FID network, and the FD-classifier."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import _unavailable
from fedgen.core.errors import FedgenError
from fedgen.metrics import fid as fidmod
from fedgen.metrics.fid import (
    InceptionFeatures,
    fid_from_feats,
    frechet_distance,
    frechet_distance_to,
    gaussian_stats,
    kid,
    reference_stats,
)
from fedgen.tasks.image.classifier import FD_CLASSIFIER_LABEL, FEATURE_DIM, load_or_train_classifier

# ----------------------------------------------------------------------------------------- helpers


def _random_stats(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(d, 2 * d))
    return rng.normal(size=d), a @ a.T / (2 * d)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _reference_fd(mu1, s1, mu2, s2) -> float:
    """Independent formula: tr((S1^1/2 S2 S1^1/2)^1/2) = tr((S1 S2)^1/2), via symmetric eigh."""
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def _cifar(root: Path, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """First ``n`` images of ``test`` or of ``train_00`` (straight from the npz, not via fedgen.data)."""
    with np.load(root / f"{split}.npz", allow_pickle=False) as z:
        return z["images"][:n], z["labels"][:n]


@pytest.fixture(scope="session")
def cifar_npz_root() -> Path:
    """``$FEDGEN_DATA/cifar10`` holding the real CIFAR-10 npz files (fails under CI when missing)."""
    env = os.environ.get("FEDGEN_DATA")
    root = Path(env) / "cifar10" if env else None
    if root is None or not (root / "test.npz").is_file() or not (root / "train_00.npz").is_file():
        _unavailable(f"real CIFAR-10 not available (FEDGEN_DATA={env!r})")
    return root


# -------------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_matches_the_scipy_sqrtm_reference_implementation():
    # pytorch-fid / TTUR: tr(sqrtm(S1 @ S2)) with scipy's general matrix square root
    rng = np.random.default_rng(0)
    for d in (3, 16, 64):
        mu1, s1 = _random_stats(rng, d)
        mu2, s2 = _random_stats(rng, d)
        ref = float(
            ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
        )
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_reference_fd(mu1, s1, mu2, s2), rel=1e-6)


def test_the_low_rank_path_equals_the_full_frechet_distance():
    rng = np.random.default_rng(1)
    mu2, s2 = _random_stats(rng, 40)
    for n in (5, 39, 80):  # N < D (low rank), N = D - 1, N > D (full path)
        feats = rng.normal(size=(n, 40)) * 2 + 1
        full = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu2, s2)
        assert frechet_distance_to(feats, mu2, s2) == pytest.approx(full, rel=1e-6)  # sqrt of ~0 eigenvalues


def test_frechet_distance_is_zero_for_identical_stats_and_symmetric():
    rng = np.random.default_rng(1)
    mu1, s1 = _random_stats(rng, 32)
    mu2, s2 = _random_stats(rng, 32)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_translating_one_gaussian_by_v_adds_its_squared_norm():
    rng = np.random.default_rng(2)
    mu1, s1 = _random_stats(rng, 24)
    mu2, s2 = _random_stats(rng, 24)
    v = rng.normal(size=24)
    base = frechet_distance(mu1, s1, mu2, s2)
    expected = base + 2 * v @ (mu1 - mu2) + v @ v
    assert frechet_distance(mu1 + v, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1 + v, s1, mu1, s1) == pytest.approx(v @ v, rel=1e-6, abs=1e-8)


def test_fid_from_feats_is_the_frechet_distance_of_the_gaussian_fits():
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(200, 8)), rng.normal(1.0, 2.0, size=(150, 8))
    mu1, s1 = gaussian_stats(f1)
    assert mu1.dtype == s1.dtype == np.float64
    np.testing.assert_allclose(s1, np.cov(f1, rowvar=False))
    assert fid_from_feats(f1, f2) == pytest.approx(_reference_fd(mu1, s1, *gaussian_stats(f2)), rel=1e-6)


# --------------------------------------------------------------------------------------------- KID


def test_kid_is_near_zero_for_one_distribution_and_clearly_positive_for_a_shift():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 64)), rng.normal(size=(400, 64))
    same_mean, same_std = kid(a, b, num_subsets=20, subset_size=200)
    shifted_mean, _ = kid(a, b + 0.5, num_subsets=20, subset_size=200)
    assert shifted_mean > 0.05
    assert abs(same_mean) < 0.02 * shifted_mean
    assert same_std >= 0


def test_kid_is_unbiased_so_it_can_be_negative_and_clips_the_subset_size():
    rng = np.random.default_rng(5)
    means = [kid(rng.normal(size=(50, 16)), rng.normal(size=(30, 16)), num_subsets=5)[0] for _ in range(20)]
    assert min(means) < 0 < max(means)  # an unbiased estimate of 0 falls on both sides
    assert kid(np.ones((5, 4)), np.ones((3, 4)), num_subsets=3) == pytest.approx((0.0, 0.0), abs=1e-12)


# --------------------------------------------------------------------------------- reference cache


class _CountingExtractor:
    name = "mean-pixels"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images, batch_size=50):
        self.calls += 1
        return images.reshape(len(images), -1)[:, :6].astype(np.float64)


def test_reference_stats_are_computed_once_and_cached_per_extractor_size_and_content(tmp_path):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    ext = _CountingExtractor()
    first = reference_stats("toy", lambda: images, ext, tmp_path)
    second = reference_stats("toy", lambda: images, ext, tmp_path)
    assert (first["cached"], second["cached"], ext.calls) == (False, True, 1)
    for k in ("mu", "sigma", "feats"):
        np.testing.assert_array_equal(first[k], second[k])
    assert "mean-pixels" in first["path"].name and "n20" in first["path"].name
    # fewer images, or other bytes, give another cache entry
    assert not reference_stats("toy", lambda: images[:10], ext, tmp_path)["cached"]
    assert not reference_stats("toy", lambda: 255 - images, ext, tmp_path)["cached"]
    assert ext.calls == 3
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npz"] * 3  # no temporary files left behind


# --------------------------------------------------------------------------------------- Inception


def test_a_corrupt_inception_file_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not a network")
    monkeypatch.setattr(fidmod, "inception_path", lambda: bad)
    with pytest.raises(FedgenError, match="corrupt"):
        fidmod.load_inception()
    bad.unlink()
    with pytest.raises(FedgenError, match="missing"):
        fidmod.load_inception()


def test_inception_gives_deterministic_2048d_features_for_both_image_formats():
    rng = np.random.default_rng(7)
    u8 = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    ext = InceptionFeatures()
    f = ext(u8)
    assert f.shape == (3, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    np.testing.assert_array_equal(f, ext(u8))
    as_float = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # NCHW in [-1, 1]
    np.testing.assert_allclose(ext(as_float), f, atol=1e-4)  # same pixels after 8-bit quantisation


@pytest.fixture(scope="module")
def small_inception_feats(cifar_npz_root: Path) -> dict[str, np.ndarray]:
    """Inception features of 64 test images, 64 (disjoint) train images and 64 uniform-noise images."""
    n = 64
    test_x, _ = _cifar(cifar_npz_root, "test", 10_000)
    test_x = test_x[np.random.default_rng(0).choice(len(test_x), n, replace=False)]  # class-sorted file
    train_x, _ = _cifar(cifar_npz_root, "train_00", n)
    noise = np.random.default_rng(1).integers(0, 256, size=test_x.shape, dtype=np.uint8)
    ext = InceptionFeatures()
    return {"test": ext(test_x), "train": ext(train_x), "noise": ext(noise)}


@pytest.mark.slow  # Inception features of 192 real/noise images on CPU (module fixture): ~40 CPU-s
@pytest.mark.realdata
def test_fid_of_a_set_with_itself_is_zero(small_inception_feats):
    # With N=64 < 2048 the covariance is singular; rounding leaves a residue far below real-vs-real FIDs.
    f = small_inception_feats["test"]
    assert abs(fid_from_feats(f, f)) < 1e-2


@pytest.mark.slow  # Inception features of 192 real/noise images on CPU (module fixture): ~40 CPU-s
@pytest.mark.realdata
def test_fid_ranks_real_train_images_far_closer_to_test_than_noise(small_inception_feats):
    # Measured with N=120: FID(test, train) 158, FID(test, noise) 507 (small-N FIDs are biased upwards,
    # the real-vs-real one more so; N=64 has not been re-measured).
    feats = small_inception_feats
    real = fid_from_feats(feats["test"], feats["train"])
    noise = fid_from_feats(feats["test"], feats["noise"])
    assert real > 0 and real * 2 < noise


# ----------------------------------------------------------------------------------- FD-classifier


def _toy_split(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, size=n)


def test_classifier_training_is_deterministic_and_cached(tmp_path):
    (train_x, train_y), (test_x, test_y) = _toy_split(0, 512), _toy_split(1, 64)
    kw = {"epochs": 1, "batch_size": 64}  # 8 steps: the OneCycle schedule
    a = load_or_train_classifier(train_x, train_y, test_x, test_y, tmp_path / "a", **kw)
    b = load_or_train_classifier(train_x, train_y, test_x, test_y, tmp_path / "b", **kw)
    assert not a.from_cache and not b.from_cache
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed -> bit-identical weights

    (weights,) = (tmp_path / "a").glob("*.safetensors")
    mtime = weights.stat().st_mtime_ns
    again = load_or_train_classifier(train_x, train_y, test_x, test_y, tmp_path / "a", **kw)
    assert again.from_cache and weights.stat().st_mtime_ns == mtime  # loaded, not retrained
    assert all(torch.equal(sa[k], v) for k, v in again.model.state_dict().items())
    assert again.meta == a.meta
    assert a.meta["label"] == FD_CLASSIFIER_LABEL == "FD-classifier (not comparable to Inception FID)"
    assert (a.meta["train_size"], a.meta["epochs"], a.meta["seed"]) == (512, 1, 0)
    assert 0.0 <= a.meta["test_accuracy"] <= 1.0

    other_seed = load_or_train_classifier(train_x, train_y, test_x, test_y, tmp_path / "a", epochs=1, seed=1)
    assert not other_seed.from_cache and other_seed.name != a.name
    assert len(list((tmp_path / "a").glob("*.safetensors"))) == 2


def test_classifier_features_and_predictions_accept_both_image_formats(tmp_path):
    (train_x, train_y), (test_x, test_y) = _toy_split(2, 128), _toy_split(3, 32)
    clf = load_or_train_classifier(train_x, train_y, test_x, test_y, tmp_path, epochs=1, batch_size=64)
    feats = clf.features(test_x)
    assert feats.shape == (32, FEATURE_DIM) and feats.dtype == np.float64
    pred = clf.predict(test_x)
    assert pred.shape == (32,) and pred.dtype == np.int64 and ((pred >= 0) & (pred < 10)).all()
    as_float = torch.from_numpy(test_x).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    np.testing.assert_allclose(clf.features(as_float), feats, rtol=1e-5, atol=1e-5)
    # accuracy is scored against given labels: the model's own predictions score 1, shifted ones 0,
    # and the true labels the share that agrees with them (not a tautology for a broken accuracy)
    assert clf.accuracy(test_x, pred) == 1.0 and clf.accuracy(test_x, (pred + 1) % 10) == 0.0
    assert clf.accuracy(test_x, test_y) == pytest.approx(float(np.mean(pred == test_y)))


def test_classifier_rejects_malformed_training_data(tmp_path):
    from fedgen.core.errors import DataError

    x, y = _toy_split(4, 8)
    with pytest.raises(DataError):
        load_or_train_classifier(x.transpose(0, 3, 1, 2).copy(), y, x, y, tmp_path)
    with pytest.raises(DataError):
        load_or_train_classifier(x, y + 10, x, y, tmp_path)
