"""Differential privacy of the rounds (DP-FedAvg) with Flower's own clipping and noise functions.

The mechanism is Flower's fixed-clipping DP (``DifferentialPrivacyServerSideFixedClipping`` /
``fixedclipping_mod``): each update's change from the global state is clipped to L2 norm ``C``
(:func:`flwr.supercore.differential_privacy.compute_clip_model_update`), the clipped changes are
averaged with uniform weights, and Gaussian noise of std ``z * C / m`` is added to the mean
(std from
:func:`~flwr.supercore.differential_privacy.compute_stdv`), ``m`` the number of updates averaged.
Where the clipping runs (server: ``central``, client: ``client``) is the caller's choice; the
functions here are the same for every runtime. The noise comes from the OS's secure random source,
never from the config's seed (:mod:`fedgen.fl.secure_random`); only ``dp.insecure_reproducible_noise``
draws it from a seeded numpy state, and such a run says "not differentially private".
:func:`epsilon` is Opacus' RDP accountant for the whole run so far.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from flwr.supercore.differential_privacy import (
    add_gaussian_noise_inplace,
    compute_clip_model_update,
    compute_stdv,
)

from fedgen.fl.secure_random import secure_normal
from fedgen.models.params import State


def state_to_ndarrays(state: State) -> list[np.ndarray]:
    """The tensors of ``state`` as numpy copies, keys sorted (Flower's ``NDArrays`` order)."""
    return [state[k].detach().cpu().numpy().copy() for k in sorted(state)]


def ndarrays_to_state(arrays: list[np.ndarray], like: State) -> State:
    """:func:`state_to_ndarrays` back: ``like``'s keys (sorted) and dtypes."""
    return OrderedDict(
        (k, torch.from_numpy(np.ascontiguousarray(a)).to(like[k].dtype))
        for k, a in zip(sorted(like), arrays, strict=True)
    )


def clip_change(update: State, reference: State, clipping_norm: float) -> State:
    """``update`` with its change from ``reference`` clipped to L2 norm ``clipping_norm`` (Flower's)."""
    arrays = state_to_ndarrays(update)
    compute_clip_model_update(arrays, state_to_ndarrays(reference), clipping_norm)
    return ndarrays_to_state(arrays, reference)


@contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """numpy's global random state seeded with ``seed`` inside the block, restored after it."""
    saved = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(saved)


def add_noise(
    state: State, noise_multiplier: float, clipping_norm: float, num_averaged: int, seed: int | None = None
) -> State:
    """``state`` plus Gaussian noise of std ``noise_multiplier * clipping_norm / num_averaged`` (Flower's).

    ``seed=None`` (every private run): the noise comes from the OS's secure random source
    (:func:`fedgen.fl.secure_random.secure_normal`), unpredictable from the config. An integer
    ``seed`` (``dp.insecure_reproducible_noise`` only) draws it with Flower's numpy sampler from
    that seed: reproducible, and therefore NOT differentially private.
    """
    if noise_multiplier == 0:
        return state
    arrays = [a.astype(np.float64) for a in state_to_ndarrays(state)]
    std = compute_stdv(noise_multiplier, clipping_norm, num_averaged)
    if seed is None:
        for a in arrays:
            a += secure_normal(a.size, std).reshape(a.shape)
    else:
        with numpy_seed(seed):
            add_gaussian_noise_inplace(arrays, std)
    return ndarrays_to_state(arrays, state)


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float | None:
    """(epsilon, delta)-DP after ``rounds`` rounds, by Opacus' RDP accountant (None: no noise, no bound).

    Each round is one subsampled Gaussian mechanism with sampling rate ``sample_rate`` = m/K. The
    accountant assumes Poisson sampling; fedgen samples exactly m clients without replacement
    (as Flower's strategies do), for which this is the usual approximation.
    """
    if noise_multiplier == 0 or rounds == 0:
        return None
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, rounds)]
    eps = float(acc.get_epsilon(delta))
    return eps if math.isfinite(eps) else None
