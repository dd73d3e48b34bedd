"""Client sampling: m = max(1, floor(C*K)) clients per round (issue #12, defect 8)."""

from __future__ import annotations

import math

import pytest

from fedgen.config import clients_per_round
from fedgen.fl.server import sample_clients


@pytest.mark.parametrize(
    ("fraction", "num_clients", "m"),
    [
        (0.1, 100, 10),  # the paper's setting
        (0.25, 20, 5),  # the CPU demo
        (0.5, 5, 2),  # C*K = 2.5: floor, not half-up (3)
        (0.5, 7, 3),  # C*K = 3.5: round() would give 4 (half to even)
        (0.29, 10, 2),  # 2.9: floor, round() would give 3
        (0.3, 10, 3),  # 0.3 * 10 == 3.0 exactly (0.3 itself is not exact)
        (0.1, 30, 3),
        (0.07, 100, 7),  # 0.07 * 100 == 7.000000000000001: 7 (ceil would give 8)
        (0.14, 150, 21),  # 21.000000000000004
        (0.29, 100, 29),  # 0.29 * 100 == 28.999999999999996: not 28 (plain floor would be)
        (0.57, 100, 57),  # 0.57 * 100 == 56.99999999999999
        (1.0, 1, 1),
        (1.0, 37, 37),  # fraction 1.0: every client
        (0.01, 10, 1),  # floor(0.1) = 0 -> at least one client
        (1e-9, 10_000, 1),
    ],
)
def test_clients_per_round_is_max_1_floor_c_times_k(fraction: float, num_clients: int, m: int) -> None:
    assert clients_per_round(fraction, num_clients) == m


def test_the_floating_point_cases_are_what_the_table_claims() -> None:
    assert 0.1 * 3 == 0.30000000000000004 and 0.07 * 100 == 7.000000000000001
    assert math.ceil(0.07 * 100) == 8  # why not ceil without snapping
    assert 0.29 * 100 == 28.999999999999996 and math.floor(0.29 * 100) == 28  # nor plain floor
    assert round(2.5) == 2 and round(3.5) == 4  # why the server no longer uses round()


@pytest.mark.parametrize("num_clients", [1, 2, 3, 7, 10, 20, 33, 100, 1000])
def test_clients_per_round_is_between_1_and_k_and_monotone_in_the_fraction(num_clients: int) -> None:
    fractions = [i / 200 for i in range(1, 201)]
    ms = [clients_per_round(c, num_clients) for c in fractions]
    assert all(1 <= m <= num_clients for m in ms)
    assert ms == sorted(ms)
    assert ms[-1] == num_clients


@pytest.mark.parametrize(
    ("fraction", "num_clients"), [(0.0, 10), (-0.1, 10), (1.5, 10), (math.nan, 10), (0.5, 0)]
)
def test_clients_per_round_rejects_out_of_range_input(fraction: float, num_clients: int) -> None:
    with pytest.raises(ValueError):
        clients_per_round(fraction, num_clients)


@pytest.mark.parametrize(
    ("fraction", "num_clients"), [(0.5, 7), (0.5, 5), (0.29, 100), (0.07, 100), (1.0, 6)]
)
def test_sample_clients_draws_clients_per_round_distinct_ids(fraction: float, num_clients: int) -> None:
    for rnd in range(1, 6):
        ids = sample_clients(num_clients, fraction, seed=0, rnd=rnd)
        assert len(ids) == clients_per_round(fraction, num_clients)
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids)
        assert all(0 <= k < num_clients for k in ids)


def test_sample_clients_uses_floor_where_round_half_to_even_did_not() -> None:
    assert len(sample_clients(7, 0.5, seed=0, rnd=1)) == 3  # round(3.5) == 4
    assert len(sample_clients(10, 0.29, seed=0, rnd=1)) == 2  # round(2.9) == 3
    assert len(sample_clients(100, 0.29, seed=0, rnd=1)) == 29  # 28.999999999999996
