"""Gaussian noise from the operating system's cryptographically secure random source.

DP noise must be unpredictable to anyone who knows the run's config (its seed is public):
:func:`secure_normal` draws every sample from fresh ``os.urandom`` bytes (Linux: the kernel's
ChaCha20-based CSPRNG, seeded from hardware entropy), 128 random bits per pair of samples,
turned into standard normals by the Box-Muller transform in float64. Nothing is seeded, kept,
logged or saved, so the noise of a run can neither be regenerated from its config nor from its
files. (Known limit, as for every floating-point Gaussian sampler: the float64 samples are not an
exact discrete Gaussian; see docs/privacy.md.)
"""

from __future__ import annotations

import math
import os

import numpy as np

SOURCE = "os.urandom (OS CSPRNG), Box-Muller in float64; unseeded, never saved"


def secure_uniform_pair(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays of ``m`` uniforms from 53 random bits each: u1 in (0, 1], u2 in [0, 1)."""
    raw = np.frombuffer(os.urandom(16 * m), dtype=np.uint64).reshape(2, m) >> np.uint64(11)
    scale = 2.0**-53
    return (raw[0].astype(np.float64) + 1.0) * scale, raw[1].astype(np.float64) * scale


def secure_normal(n: int, std: float = 1.0) -> np.ndarray:
    """``n`` independent N(0, std^2) samples (float64) from fresh OS entropy."""
    if n <= 0:
        return np.zeros(0)
    m = (n + 1) // 2
    u1, u2 = secure_uniform_pair(m)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * math.pi * u2), r * np.sin(2 * math.pi * u2)])[:n]
    return z * std


# Every output of a run with dp.insecure_reproducible_noise (summary.json, report.md, log, metrics) says so.
NOT_PRIVATE = (
    "not differentially private: dp.insecure_reproducible_noise draws the DP noise from the config's "
    "seed, so anyone who knows the config can regenerate and remove it (no epsilon holds)"
)


def not_private(cfg) -> bool:
    """Whether a run's DP noise is the labelled, reproducible, non-private kind."""
    return cfg.dp.mode != "off" and cfg.dp.insecure_reproducible_noise
