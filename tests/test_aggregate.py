"""Server aggregation (FedAvg), update validation, and communication accounting."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from fedgen.core.errors import UpdateError
from fedgen.fl.aggregate import (
    clip_update_norm,
    coordinate_median,
    fedavg,
    trimmed_mean,
    validate_update,
)
from fedgen.fl.wire import deserialize, formula_bytes, num_params, serialize

SHAPES = {"layer.0.lora_A.weight": (8, 32), "layer.0.lora_B.weight": (32, 8), "layer.1.bias": (5,)}


def random_state(gen: torch.Generator, shapes: dict = SHAPES) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((k, torch.randn(s, generator=gen)) for k, s in shapes.items())


def numpy_reference(states, weights) -> dict[str, np.ndarray]:
    w = np.asarray(weights, dtype=np.float64)
    out = {}
    for k in states[0]:
        acc = sum(wi * s[k].numpy().astype(np.float64) for wi, s in zip(w, states, strict=True))
        out[k] = (acc / w.sum()).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------- fedavg


@pytest.mark.parametrize("seed", range(6))
def test_fedavg_equals_float64_numpy_reference_cast_to_float32(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 6))
    states = [random_state(gen) for _ in range(n)]
    weights = [int(x) for x in rng.integers(1, 500, size=n)]
    out = fedavg(states, weights)
    ref = numpy_reference(states, weights)
    assert list(out) == list(SHAPES)
    for k, v in out.items():
        assert v.dtype == torch.float32
        np.testing.assert_array_equal(v.numpy(), ref[k])


def test_fedavg_depends_only_on_weight_proportions() -> None:
    gen = torch.Generator().manual_seed(0)
    states = [random_state(gen) for _ in range(4)]
    weights = [3, 10, 1, 6]
    a = fedavg(states, weights)
    b = fedavg(states, [7 * w for w in weights])
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fedavg_with_equal_weights_is_the_plain_mean() -> None:
    gen = torch.Generator().manual_seed(1)
    states = [random_state(gen) for _ in range(3)]
    out = fedavg(states, [5, 5, 5])
    for k, v in out.items():
        mean = np.mean(np.stack([s[k].numpy().astype(np.float64) for s in states]), axis=0)
        np.testing.assert_allclose(v.numpy(), mean, rtol=0, atol=1e-6)


def test_fedavg_with_all_weight_on_one_client_returns_its_state() -> None:
    gen = torch.Generator().manual_seed(2)
    states = [random_state(gen) for _ in range(4)]
    out = fedavg(states, [0, 0, 12, 0])
    for k, v in out.items():
        assert torch.equal(v, states[2][k]), k


def test_fedavg_does_not_modify_its_inputs() -> None:
    gen = torch.Generator().manual_seed(3)
    states = [random_state(gen) for _ in range(3)]
    copies = [{k: v.clone() for k, v in s.items()} for s in states]
    fedavg(states, [1, 2, 3])
    for s, c in zip(states, copies, strict=True):
        assert all(torch.equal(s[k], c[k]) for k in s)


@pytest.mark.parametrize(
    ("n_states", "weights", "match"),
    [
        (0, [], "no client updates"),
        (2, [1.0], "2 updates but 1 weights"),
        (2, [1.0, -1.0], "non-negative"),
        (2, [0, 0], "positive sum"),
        (2, [1.0, float("nan")], "non-negative"),
    ],
)
def test_fedavg_rejects_bad_inputs(n_states: int, weights: list, match: str) -> None:
    gen = torch.Generator().manual_seed(4)
    with pytest.raises(UpdateError, match=match):
        fedavg([random_state(gen) for _ in range(n_states)], weights)


# ------------------------------------------------------------------------------------------ validate_update


@pytest.fixture
def reference() -> OrderedDict[str, torch.Tensor]:
    return random_state(torch.Generator().manual_seed(5))


KEY = "layer.0.lora_B.weight"


def test_validate_update_accepts_a_well_formed_update(reference) -> None:
    validate_update(random_state(torch.Generator().manual_seed(6)), reference)


def _tampered(reference, how: str) -> dict:
    upd = {k: v.clone() for k, v in reference.items()}
    if how == "missing":
        del upd[KEY]
    elif how == "extra":
        upd[KEY.replace("0", "9")] = torch.zeros(3)
    elif how == "shape":
        upd[KEY] = torch.zeros(32, 9)
    elif how == "dtype":
        upd[KEY] = upd[KEY].to(torch.float64)
    elif how == "nan":
        upd[KEY][3, 2] = float("nan")
    elif how == "inf":
        upd[KEY][0, 0] = float("inf")
    elif how == "non-tensor":
        upd[KEY] = upd[KEY].numpy()
    return upd


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("missing", "missing"),
        ("extra", "unexpected"),
        ("shape", "shape"),
        ("dtype", "float64"),
        ("nan", "NaN"),
        ("inf", "Inf"),
        ("non-tensor", "not a tensor"),
    ],
)
def test_validate_update_rejects_malformed_updates_naming_the_key(reference, how: str, match: str) -> None:
    upd = _tampered(reference, how)
    with pytest.raises(UpdateError, match=match) as exc:
        validate_update(upd, reference, who="client 7")
    msg = str(exc.value)
    assert "client 7" in msg
    assert (KEY.replace("0", "9") if how == "extra" else KEY) in msg


@pytest.mark.parametrize(
    "update",
    [None, [], "state", 3, {1: torch.zeros(1), "x": torch.zeros(1)}],
    ids=["none", "list", "str", "int", "mixed-keys"],
)
def test_validate_update_rejects_non_mappings_and_odd_keys_with_update_error(reference, update) -> None:
    with pytest.raises(UpdateError):
        validate_update(update, reference)


@pytest.mark.parametrize("how", ["sparse", "meta"])
def test_validate_update_rejects_non_dense_tensors(reference, how: str) -> None:
    upd = {k: v.clone() for k, v in reference.items()}
    upd[KEY] = upd[KEY].to_sparse() if how == "sparse" else torch.empty(upd[KEY].shape, device="meta")
    with pytest.raises(UpdateError, match="dense"):
        validate_update(upd, reference)


def test_validate_update_checks_float8_values_without_crashing() -> None:
    ref = {"w": torch.zeros(4, dtype=torch.float8_e4m3fn)}
    validate_update({"w": torch.ones(4).to(torch.float8_e4m3fn)}, ref)
    with pytest.raises(UpdateError, match="NaN"):
        validate_update({"w": torch.tensor([1.0, float("nan"), 0, 0]).to(torch.float8_e4m3fn)}, ref)


# ------------------------------------------------------------------------------------- robust aggregation


def _honest_and_outlier(seed: int, n_honest: int = 2, scale: float = 1e6):
    gen = torch.Generator().manual_seed(seed)
    honest = [random_state(gen) for _ in range(n_honest)]
    outlier = OrderedDict((k, v * scale) for k, v in random_state(gen).items())
    return honest, outlier


@pytest.mark.parametrize("seed", range(4))
def test_median_of_three_with_a_1e6_outlier_stays_between_the_honest_updates(seed: int) -> None:
    honest, outlier = _honest_and_outlier(seed)
    med = coordinate_median([honest[0], outlier, honest[1]])
    mean = fedavg([honest[0], outlier, honest[1]], [1, 1, 1])
    for k, v in med.items():
        lo = torch.minimum(honest[0][k], honest[1][k])
        hi = torch.maximum(honest[0][k], honest[1][k])
        assert bool(((v >= lo) & (v <= hi)).all()), k  # per coordinate, within the honest range
        assert v.abs().max() < 10
    assert max(v.abs().max() for v in mean.values()) > 1e4  # FedAvg is dragged away


def test_coordinate_median_equals_numpy_median_for_odd_and_even_counts() -> None:
    gen = torch.Generator().manual_seed(11)
    for n in (1, 2, 3, 4, 5):
        states = [random_state(gen) for _ in range(n)]
        out = coordinate_median(states)
        for k, v in out.items():
            ref = np.median(np.stack([s[k].numpy().astype(np.float64) for s in states]), axis=0)
            np.testing.assert_array_equal(v.numpy(), ref.astype(np.float32))
            assert v.dtype == torch.float32


@pytest.mark.parametrize("seed", range(3))
def test_trimmed_mean_with_beta_0_equals_the_plain_mean_bit_for_bit(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    states = [random_state(gen) for _ in range(5)]
    a, b = trimmed_mean(states, 0.0), fedavg(states, [1] * 5)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_trimmed_mean_drops_the_extremes_per_coordinate() -> None:
    honest, outlier = _honest_and_outlier(3, n_honest=4)
    low = OrderedDict((k, -v) for k, v in outlier.items())
    states = [*honest, outlier, low]
    out = trimmed_mean(states, 0.2)  # floor(0.2 * 6) = 1 dropped at each end
    for k, v in out.items():
        stacked = np.sort(np.stack([s[k].numpy().astype(np.float64) for s in states]), axis=0)
        np.testing.assert_allclose(v.numpy(), stacked[1:5].mean(axis=0), rtol=1e-6, atol=1e-6)
        assert v.abs().max() < 10


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan")])
def test_trimmed_mean_rejects_beta_outside_0_to_half(beta: float) -> None:
    states = [random_state(torch.Generator().manual_seed(i)) for i in range(3)]
    with pytest.raises(UpdateError, match="beta"):
        trimmed_mean(states, beta)


def test_robust_aggregators_reject_no_or_mismatched_updates() -> None:
    gen = torch.Generator().manual_seed(12)
    a, b = random_state(gen), random_state(gen)
    b[KEY] = torch.zeros(3)
    for fn in (coordinate_median, lambda s: trimmed_mean(s, 0.1)):
        with pytest.raises(UpdateError, match="no client updates"):
            fn([])
        with pytest.raises(UpdateError, match="shape"):
            fn([a, b])


def test_robust_aggregators_do_not_modify_their_inputs() -> None:
    gen = torch.Generator().manual_seed(13)
    states = [random_state(gen) for _ in range(4)]
    copies = [{k: v.clone() for k, v in s.items()} for s in states]
    coordinate_median(states)
    trimmed_mean(states, 0.25)
    clip_update_norm(states[0], states[1], 0.1)
    for s, c in zip(states, copies, strict=True):
        assert all(torch.equal(s[k], c[k]) for k in s)


def _flat(state) -> torch.Tensor:
    return torch.cat([v.reshape(-1).to(torch.float64) for v in state.values()])


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_update_norm_bounds_the_norm_and_preserves_the_direction(max_norm: float) -> None:
    gen = torch.Generator().manual_seed(14)
    ref = random_state(gen)
    upd = OrderedDict((k, ref[k] + 1e6 * d) for k, d in random_state(gen).items())
    out = clip_update_norm(upd, ref, max_norm)
    delta, clipped = _flat(upd) - _flat(ref), _flat(out) - _flat(ref)
    assert clipped.norm().item() == pytest.approx(max_norm, rel=1e-4)
    cos = torch.dot(delta, clipped) / (delta.norm() * clipped.norm())
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
    assert all(v.dtype == ref[k].dtype for k, v in out.items())


def test_clip_update_norm_leaves_a_small_update_unchanged() -> None:
    gen = torch.Generator().manual_seed(15)
    ref = random_state(gen)
    upd = OrderedDict((k, v + 1e-3) for k, v in ref.items())
    out = clip_update_norm(upd, ref, 1e3)
    for k in upd:
        assert torch.equal(out[k], upd[k]), k


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("inf"), float("nan")])
def test_clip_update_norm_rejects_a_bad_bound(max_norm: float) -> None:
    ref = random_state(torch.Generator().manual_seed(16))
    with pytest.raises(UpdateError, match="max_norm"):
        clip_update_norm(ref, ref, max_norm)


def test_clip_update_norm_validates_the_update(reference) -> None:
    with pytest.raises(UpdateError, match="NaN"):
        clip_update_norm(_tampered(reference, "nan"), reference, 1.0)


# ----------------------------------------------------------------------------------------------------- comm


def test_serialize_round_trips_through_safetensors() -> None:
    state = random_state(torch.Generator().manual_seed(7))
    back = st_load(serialize(state))
    assert set(back) == set(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k


def test_serialized_size_exceeds_the_formula_only_by_the_header() -> None:
    shapes = {f"base_model.model.h.{i}.attn.q_proj.lora_A.weight": (50, 250) for i in range(8)}
    state = random_state(torch.Generator().manual_seed(8), shapes)
    n = num_params(state)
    assert n == 100_000
    size = len(serialize(state))
    overhead = size - formula_bytes(n)
    print(f"\n100k params: {size} bytes serialized, formula {formula_bytes(n)}, header {overhead} bytes")
    assert 0 < overhead < 0.01 * formula_bytes(n) + 2048


def test_formula_bytes_is_four_bytes_per_fp32_parameter() -> None:
    assert formula_bytes(147_456) == 589_824
    assert formula_bytes(10, bytes_per_param=2) == 20


def test_deserialize_inverts_serialize_and_checks_against_the_reference(reference) -> None:
    state = random_state(torch.Generator().manual_seed(17))
    back = deserialize(serialize(state), reference)
    assert list(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("how", ["dtype", "shape", "nan", "missing"])
def test_deserialize_rejects_a_message_that_does_not_fit_the_reference(reference, how: str) -> None:
    with pytest.raises(UpdateError):
        deserialize(serialize(_tampered(reference, how)), reference)


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"not safetensors at all", bytearray(16), "str"])
def test_deserialize_rejects_garbage_with_update_error(data) -> None:
    with pytest.raises(UpdateError):
        deserialize(data)
