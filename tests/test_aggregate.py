"""Server aggregation (FedAvg), update validation, and communication accounting."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from fedgen.errors import UpdateError
from fedgen.fl.aggregate import fedavg, validate_update
from fedgen.fl.comm import formula_bytes, num_params, serialize

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
