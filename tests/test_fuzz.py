"""Property-based tests (hypothesis): bad input raises only fedgen's own clear errors.

Config parsing (:func:`config_from_dict`, :func:`apply_overrides`, :func:`load_config`)
raises nothing but :class:`ConfigError`, one line; adapter and update deserialization
(:func:`read_adapter`, :func:`read_state`, :func:`fedgen.fl.wire.deserialize`,
:func:`validate_update`) raise nothing but :class:`CheckpointError` / :class:`UpdateError`
for random bytes, truncated files, hand-made safetensors headers (huge or overflowing shapes,
unknown dtypes, lying offsets), wrong dtypes and NaN/Inf values, and change nothing they read.

Bounded (``max_examples`` 100-200) and derandomized, so the suite is fast and repeatable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
import typing
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgen.config import Config, apply_overrides, config_from_dict, load_config
from fedgen.core.errors import CheckpointError, ConfigError, UpdateError
from fedgen.experiment.rundir import MODEL_FILE, read_state
from fedgen.fl.aggregate import validate_update
from fedgen.fl.wire import deserialize, serialize
from fedgen.models.lora import read_adapter

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------------------------------- config

_HINTS = typing.get_type_hints(Config)
SECTIONS = {
    name: [f.name for f in dataclasses.fields(tp)]
    for name, tp in _HINTS.items()
    if dataclasses.is_dataclass(tp)
}
TOP_FIELDS = [name for name in _HINTS if name not in SECTIONS]
ALL_NAMES = sorted({*SECTIONS, *TOP_FIELDS, *(f for fs in SECTIONS.values() for f in fs)})
DOTTED = [f"{s}.{f}" for s, fs in SECTIONS.items() for f in fs] + TOP_FIELDS

# Strings that mean something to YAML, to float() or to the schema.
SPECIAL_STRINGS = [
    "nan", "inf", "-inf", "1e999", "5e-4", "0", "-1", "1_000", "lda", "iid", "dirichlet", "text",
    "image", "fedgen", "ditto", "q_proj", "v_proj", "c_attn", "auto", "null", "~", "true", "yes",
    "2020-01-01", "2020-13-45", "", " ", "\n", "\x00",
]  # fmt: skip
YAML_FRAGMENTS = [
    "[", "]", "{", "}", "'", '"', ":", ": ", "- ", "&a", "*a", "*x", "!!", "!!binary", "!!set",
    "!!int", "!!float", "!!timestamp", "!!python/object:os.system", "%YAML 1.1", "---", "...",
    "? ", "|", ">", "#", ",", ".nan", ".inf", "-.inf", "1e999", "0x1f", "0o17", "2020-13-45",
    "2020-01-01", "&a [*a]", "\t", "\n", " ", "\\", "@", "`", "=", ".",
]  # fmt: skip

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.just(10**400)
    | st.floats()  # NaN and +-inf included
    | st.text(max_size=12)
    | st.sampled_from(SPECIAL_STRINGS)
    | st.binary(max_size=8)
    | st.dates()
)
keys = st.sampled_from(ALL_NAMES) | st.text(max_size=8) | st.integers(-3, 3) | st.none()
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def raw_configs(draw: st.DrawFn) -> dict:
    """Mostly well-shaped mappings (real sections and keys) with random values, plus noise."""
    raw: dict = {}
    for name in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            raw[name] = draw(values)  # not a mapping
            continue
        fields = st.sampled_from(SECTIONS[name]) | st.text(max_size=6)
        raw[name] = draw(st.dictionaries(fields, values, max_size=4))
    for name in draw(st.lists(st.sampled_from(TOP_FIELDS), max_size=2, unique=True)):
        raw[name] = draw(values)
    raw.update(draw(st.dictionaries(keys, values, max_size=1)))
    return raw


override_value = (
    st.text(max_size=12)
    | st.sampled_from(SPECIAL_STRINGS + YAML_FRAGMENTS)
    | st.lists(st.sampled_from(YAML_FRAGMENTS + SPECIAL_STRINGS), max_size=5).map("".join)
)
override_key = (
    st.sampled_from(DOTTED)
    | st.lists(st.sampled_from([*ALL_NAMES, "", " ", "x"]), min_size=1, max_size=4).map(".".join)
    | st.text(max_size=10)
)
overrides = st.lists(st.tuples(override_key, override_value).map("=".join) | st.text(max_size=16), max_size=4)


def _check_config_error(e: ConfigError) -> None:
    msg = str(e)
    assert msg.startswith("config"), msg
    assert "\n" not in msg, msg
    assert len(msg) < 400, msg


def _check_config(cfg: Config) -> None:
    """An accepted config holds only finite numbers and survives its own round trip."""

    def walk(x: object) -> None:
        if isinstance(x, float):
            assert math.isfinite(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(cfg.to_dict())
    assert config_from_dict(cfg.to_dict()) == cfg


@FUZZ
@given(raw=raw_configs() | values)
def test_config_from_dict_raises_only_config_error(raw: object) -> None:
    before = repr(raw)
    try:
        cfg = config_from_dict(raw)  # type: ignore[arg-type]
    except ConfigError as e:
        _check_config_error(e)
    else:
        _check_config(cfg)
    assert repr(raw) == before  # the input is not modified


@FUZZ
@given(raw=raw_configs(), items=overrides)
def test_apply_overrides_and_load_config_raise_only_config_error(raw: dict, items: list[str]) -> None:
    before = repr(raw)
    try:
        out = apply_overrides(raw, items)
    except ConfigError as e:
        _check_config_error(e)
    else:
        assert isinstance(out, dict)
    assert repr(raw) == before
    try:
        cfg = load_config(None, items)
    except ConfigError as e:
        _check_config_error(e)
    else:
        _check_config(cfg)


yaml_texts = (
    st.lists(
        st.sampled_from(YAML_FRAGMENTS + SPECIAL_STRINGS + ALL_NAMES + [": ", "\n  ", "\n"]), max_size=24
    ).map("".join)
    | st.text(max_size=80)
    | st.tuples(
        st.sampled_from(sorted(SECTIONS)),
        st.sampled_from([f for fs in SECTIONS.values() for f in fs]),
        st.sampled_from(YAML_FRAGMENTS + SPECIAL_STRINGS),
    ).map(lambda t: f"{t[0]}:\n  {t[1]}: {t[2]}\n")
)


@FUZZ
@given(text=yaml_texts, data=st.binary(max_size=64), use_bytes=st.booleans(), items=overrides)
def test_load_config_of_a_random_file_raises_only_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str, data: bytes, use_bytes: bool, items: list[str]
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz_config.yaml"
    if use_bytes:
        path.write_bytes(data)
    else:
        path.write_text(text)
    try:
        cfg = load_config(path, items)
    except ConfigError as e:
        _check_config_error(e)
    else:
        _check_config(cfg)


# ------------------------------------------------------------------------------------- deserialization

_GEN = torch.Generator().manual_seed(0)
REFERENCE = OrderedDict(
    [
        ("base_model.model.h.0.attn.q_proj.lora_A.weight", torch.randn(2, 6, generator=_GEN)),
        ("base_model.model.h.0.attn.q_proj.lora_B.weight", torch.zeros(6, 2)),
        ("base_model.model.h.0.attn.v_proj.lora_A.weight", torch.randn(2, 6, generator=_GEN)),
    ]
)
REFERENCE_COPY = {k: v.clone() for k, v in REFERENCE.items()}
VALID = serialize(REFERENCE)

SERIALIZABLE_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
    torch.int16, torch.int32, torch.int64, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
]  # fmt: skip
ST_DTYPES = [
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "XX", "f32", "",
]  # fmt: skip
HUGE = [2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**100, -1]


def _reference_unchanged() -> None:
    for k, v in REFERENCE_COPY.items():
        assert torch.equal(REFERENCE[k], v), k


def _tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 3).to(dtype)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randint(0, 100, shape, generator=gen).to(dtype)


def _read_all_ways(data: bytes, tmp: Path) -> list[object]:
    """Deserialize ``data`` as a message and as the two kinds of file; each must either give a
    state or raise our error type, and leave the bytes and the reference unchanged."""
    out: list[object] = []
    for reference in (None, REFERENCE):
        try:
            state = deserialize(data, reference)
        except UpdateError as e:
            assert "\n" not in str(e)
            out.append(e)
        else:
            assert all(isinstance(t, torch.Tensor) for t in state.values())
            if reference is not None:  # only what matches the reference gets through
                validate_update(state, REFERENCE)
            out.append(state)
    digest = hashlib.sha256(data).hexdigest()
    for reader, name in ((read_adapter, "adapter_model.safetensors"), (read_state, MODEL_FILE)):
        d = tmp / reader.__name__
        d.mkdir(exist_ok=True)
        (d / name).write_bytes(data)
        try:
            out.append(reader(d))
        except CheckpointError as e:
            assert "\n" not in str(e)
            out.append(e)
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest  # file untouched
    _reference_unchanged()
    return out


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_states")


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_bytes_raise_only_our_errors(fuzz_dir: Path, data: bytes) -> None:
    _read_all_ways(data, fuzz_dir)


@FUZZ
@given(cut=st.integers(0, len(VALID) - 1))
def test_a_truncated_message_or_file_is_always_rejected(fuzz_dir: Path, cut: int) -> None:
    results = _read_all_ways(VALID[:cut], fuzz_dir)
    assert isinstance(results[0], UpdateError) and isinstance(results[1], UpdateError)
    assert isinstance(results[2], CheckpointError) and isinstance(results[3], CheckpointError)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_corrupted_bytes_raise_only_our_errors(fuzz_dir: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, byte in flips:
        data[pos] = byte
    _read_all_ways(bytes(data), fuzz_dir)


@st.composite
def crafted_files(draw: st.DrawFn) -> bytes:
    """A hand-made safetensors file: header JSON with any dtypes, shapes (huge, overflowing,
    negative), offsets, a payload of any length, and sometimes a header length that lies."""
    header: dict = {}
    dims = st.integers(0, 8) | st.sampled_from(HUGE)
    offsets = st.integers(0, 64) | st.sampled_from(HUGE)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(list(REFERENCE)) | st.text(max_size=6))
        header[name] = {
            "dtype": draw(st.sampled_from(ST_DTYPES)),
            "shape": draw(st.lists(dims, max_size=4)),
            "data_offsets": draw(st.lists(offsets, min_size=2, max_size=2) | st.lists(offsets, max_size=3)),
        }
        if draw(st.integers(0, 9)) == 0:
            del header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(st.text(max_size=4), st.text(max_size=4) | st.integers())
        )
    blob = json.dumps(header).encode()
    if draw(st.integers(0, 4)) == 0:
        length = draw(st.integers(0, 2**64 - 1))
    else:
        blob += b" " * (-len(blob) % 8)
        length = len(blob)
    payload = draw(st.binary(max_size=96))
    return struct.pack("<Q", length) + blob + payload


@FUZZ
@given(data=crafted_files())
def test_handmade_safetensors_headers_raise_only_our_errors(fuzz_dir: Path, data: bytes) -> None:
    _read_all_ways(data, fuzz_dir)


def test_huge_declared_shapes_are_rejected_without_allocating(fuzz_dir: Path) -> None:
    for shape, end in (([2**40, 2**40], 16), ([2**32, 2**32], 0), ([2**62], 0), ([2**30, 4], 2**32)):
        key = next(iter(REFERENCE))
        blob = json.dumps({key: {"dtype": "F32", "shape": shape, "data_offsets": [0, end]}}).encode()
        blob += b" " * (-len(blob) % 8)
        results = _read_all_ways(struct.pack("<Q", len(blob)) + blob + b"\0" * 16, fuzz_dir)
        assert [type(r) for r in results] == [UpdateError, UpdateError, CheckpointError, CheckpointError]


@FUZZ
@given(
    dtypes=st.lists(st.sampled_from(SERIALIZABLE_DTYPES), min_size=len(REFERENCE), max_size=len(REFERENCE)),
    seed=st.integers(0, 2**16),
)
def test_wrong_dtypes_are_rejected_against_the_reference(dtypes: list[torch.dtype], seed: int) -> None:
    state = {
        k: _tensor(dt, tuple(v.shape), seed) for (k, v), dt in zip(REFERENCE.items(), dtypes, strict=True)
    }
    data = serialize(state)
    if all(dt == torch.float32 for dt in dtypes):
        validate_update(deserialize(data, REFERENCE), REFERENCE)
    else:
        with pytest.raises(UpdateError, match="expected"):
            deserialize(data, REFERENCE)
        with pytest.raises(UpdateError, match="expected"):
            validate_update(state, REFERENCE)
    deserialize(data)  # without a reference, any finite dtype is a valid message
    _reference_unchanged()


@FUZZ
@given(
    key=st.sampled_from(list(REFERENCE)),
    index=st.integers(0, 11),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e5m2]),
)
def test_nan_and_inf_are_rejected_everywhere(
    fuzz_dir: Path, key: str, index: int, bad: float, dtype: torch.dtype
) -> None:
    state = {k: v.clone().to(dtype) for k, v in REFERENCE.items()}
    state[key].view(-1)[index] = bad
    data = serialize(state)
    results = _read_all_ways(data, fuzz_dir)
    assert [type(r) for r in results] == [UpdateError, UpdateError, CheckpointError, CheckpointError]
    assert all(key in str(r) for r in results if dtype == torch.float32)
    with pytest.raises(UpdateError):
        validate_update(state, {k: v.to(dtype) for k, v in REFERENCE.items()})


tensors = st.builds(
    _tensor,
    st.sampled_from([*SERIALIZABLE_DTYPES, torch.complex64]),
    st.lists(st.integers(0, 6), max_size=3).map(tuple) | st.just((2, 6)) | st.just((6, 2)),
    st.integers(0, 2**16),
)
non_tensors = (
    st.none() | st.integers() | st.floats() | st.text(max_size=4) | st.lists(st.integers(), max_size=3)
)
update_values = tensors | non_tensors
updates = (
    non_tensors
    | st.dictionaries(st.sampled_from(list(REFERENCE)) | st.text(max_size=4) | st.integers(), update_values)
    | st.fixed_dictionaries({k: update_values for k in REFERENCE})
    | st.fixed_dictionaries({k: tensors for k in REFERENCE})
)


def _raw(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor, to compare before/after without caring about NaN or dtype."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).clone()


@settings(FUZZ, max_examples=200)
@given(update=updates)
def test_validate_update_raises_only_update_error_and_changes_nothing(update: object) -> None:
    snapshot = (
        {k: _raw(v) if isinstance(v, torch.Tensor) else repr(v) for k, v in update.items()}
        if isinstance(update, dict)
        else repr(update)
    )
    try:
        validate_update(update, REFERENCE, who="fuzz")  # type: ignore[arg-type]
    except UpdateError as e:
        assert str(e).startswith("fuzz") and "\n" not in str(e)
    else:  # accepted: exactly the reference's keys, shapes, dtypes, and finite
        assert isinstance(update, dict) and set(update) == set(REFERENCE)
        for k, v in REFERENCE.items():
            assert update[k].shape == v.shape and update[k].dtype == v.dtype
            assert bool(torch.isfinite(update[k]).all())
    _reference_unchanged()
    if isinstance(update, dict):
        for k, v in update.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(_raw(v), snapshot[k]), k
            else:
                assert repr(v) == snapshot[k], k
    else:
        assert repr(update) == snapshot
