"""Experiment configuration: typed dataclasses, loaded from YAML and validated.

Every user mistake (unknown key, wrong type, out-of-range value) raises one
:class:`~fedgen.core.errors.ConfigError` whose message names the offending key, e.g.
``config fl.rounds: expected an integer >= 1, got 'ten'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from fedgen.config.schema import Config, clients_per_round
from fedgen.core.device import resolve
from fedgen.core.errors import ConfigError
from fedgen.core.files import atomic_write_text

# ---------------------------------------------------------------------------- validation


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _show(value: Any, limit: int = 80) -> str:
    """``repr`` for an error line: one line, at most ``limit`` characters, never raises."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__} of {value.bit_length()} bits>" if isinstance(value, int) else "<?>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(key: Any) -> str:
    """A mapping key as written in an error line (repr when it is not plain printable text)."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key else _show(key)


class _NotFinite(ConfigError):
    """NaN or +-inf for a number: reported as such, also for ``float | None`` fields."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a list of sections' item: devices.tiers[0]
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config {key}: expected {_describe(tp)}, got {_show(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except _NotFinite:
                raise
            except ConfigError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:  # a str: YAML 1.1 reads "5e-4" (no dot) as a string
            number = float(value)
        except (ValueError, OverflowError):  # OverflowError: an int too large for a float
            raise bad from None
        if not math.isfinite(number):  # NaN passes every range check, so reject it here
            raise _NotFinite(f"config {key}: expected a finite number, got {_show(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - schema uses only the types above


def _check_range(value: Any, meta: typing.Mapping, key: str) -> None:
    if value is None or "lo" not in meta:
        return
    lo, hi, lo_open = meta["lo"], meta["hi"], meta["lo_open"]
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"config {key}: must be {'>' if lo_open else '>='} {lo}, got {_show(value)}")
    if hi is not None and value > hi:
        raise ConfigError(f"config {key}: must be <= {hi}, got {_show(value)}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "file"
        raise ConfigError(f"config {where}: expected a mapping of keys, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"config {prefix}{_name(k)}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        tp, key = hints[name], prefix + name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], key + ".")
        else:
            kwargs[name] = _coerce(raw[name], tp, key)
            _check_range(kwargs[name], f.metadata, key)
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    """Checks across sections. The algorithm and task names, and the task's own settings, are
    checked against the registry by :func:`fedgen.experiment.registry.check_config`."""
    resolve(cfg.device)  # cuda asked for on a machine without it: one clear line
    m = clients_per_round(cfg.fl.fraction, cfg.data.num_clients)
    if cfg.fl.min_clients > m:
        raise ConfigError(
            f"config fl.min_clients: {cfg.fl.min_clients} is more than the {m} clients sampled per round"
        )
    if cfg.batched_clients == "on" and cfg.runtime != "in-process":
        raise ConfigError("config batched_clients: on needs runtime: in-process")
    dev = cfg.devices
    if dev.enabled:
        if not dev.tiers:
            raise ConfigError("config devices.tiers: give at least one tier")
        if abs(sum(t.share for t in dev.tiers) - 1.0) > 1e-6:
            raise ConfigError("config devices.tiers: the shares must sum to 1")
        if dev.deadline_s is not None and dev.step_seconds is None:
            raise ConfigError(
                "config devices.step_seconds: a deadline needs a fixed step time "
                "(measured times would make the run depend on the machine)"
            )
        if dev.stragglers == "partial" and cfg.runtime != "in-process":
            raise ConfigError("config devices.stragglers: partial work needs runtime: in-process")
    _privacy_checks(cfg)


def _privacy_checks(cfg: Config) -> None:
    """SecAgg+ and DP: what they can be combined with (one clear line each)."""
    sa, dp, f = cfg.flower.secagg, cfg.dp, cfg.fl
    if sa.enabled:
        if cfg.runtime == "in-process":
            raise ConfigError("config flower.secagg: SecAgg+ needs runtime: flower-sim or flower-deploy")
        if f.aggregator != "fedavg":
            raise ConfigError(
                f"config fl.aggregator: {f.aggregator} needs each client's update, but under "
                "flower.secagg the server only receives their sum; use fedavg"
            )
        if cfg.devices.enabled:
            raise ConfigError("config devices.enabled: simulated devices are not combined with flower.secagg")
        if dp.mode == "central":
            raise ConfigError(
                "config dp.mode: central clipping needs each client's update, but under "
                "flower.secagg the server only receives their sum; use dp.mode: client"
            )
        for name in ("num_shares", "reconstruction_threshold"):
            v = getattr(sa, name)
            if v > 1 and v != int(v):
                raise ConfigError(f"config flower.secagg.{name}: a count (> 1) must be whole, got {v}")
        _secagg_safety(cfg)
    if dp.mode != "off" and f.aggregator != "fedavg":
        raise ConfigError(
            f"config fl.aggregator: dp.mode {dp.mode} calibrates its noise to a (uniform) mean; "
            f"use fedavg, not {f.aggregator}"
        )


SECAGG_MODULUS = 2**32  # Flower's SecAggPlusWorkflow modulus_range (sums are computed mod 2^32)


def _secagg_safety(cfg: Config) -> None:
    """SecAgg+ settings that would leak or corrupt the sum, refused in one line each.

    * m >= 2 clients per round: with one, the "sum" the server unmasks is that client's update.
    * The sum of m quantized updates, each in [0, quantization_range), must not wrap modulo 2^32:
      m * quantization_range <= 2^32.
    * Reconstruction threshold t of the s shares (as Flower's workflow derives them from the
      config) above half of them (2t > s; as a fraction: > 0.5): with t <= s/2 a server can ask two
      disjoint groups of t clients for a client's two secrets (its self-mask and its pairwise masks)
      and unmask its update.
    * Under ``dp.mode: client`` the clipping range holds every coordinate of a change of norm
      ``dp.clipping_norm`` (else the secure sum clips it again, silently).
    """
    sa = cfg.flower.secagg
    m = clients_per_round(cfg.fl.fraction, cfg.data.num_clients)
    if m < 2:
        raise ConfigError(
            f"config flower.secagg: secure aggregation needs at least 2 clients per round, got {m} "
            "(fl.fraction x data.num_clients): the server would unmask that one client's update"
        )
    if m * sa.quantization_range > SECAGG_MODULUS:
        raise ConfigError(
            f"config flower.secagg.quantization_range: {sa.quantization_range} x {m} clients per round "
            f"overflows the 2^32 modulus of the secure sum; use at most {SECAGG_MODULUS // m}"
        )
    if sa.num_shares <= 1:
        shares = round(sa.num_shares * m)
        shares += 1 if shares < m and shares % 2 == 0 else 0
        shares = m if shares <= 2 else shares
    else:
        shares = int(sa.num_shares)
    t = (
        max(round(sa.reconstruction_threshold * shares), 2)
        if sa.reconstruction_threshold <= 1
        else int(sa.reconstruction_threshold)
    )
    if 2 * t <= shares or t > shares or sa.reconstruction_threshold <= 0.5:
        raise ConfigError(
            f"config flower.secagg.reconstruction_threshold: {sa.reconstruction_threshold} gives {t} of "
            f"{shares} shares; it must be more than half of them (and at most all) or the server can unmask "
            "single updates"
        )
    if cfg.dp.mode == "client" and sa.clipping_range < cfg.dp.clipping_norm:
        raise ConfigError(
            f"config flower.secagg.clipping_range: {sa.clipping_range} is below dp.clipping_norm "
            f"{cfg.dp.clipping_norm}; a clipped change's coordinates reach it, so use at least that"
        )


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain mapping (e.g. parsed YAML) into a :class:`Config`."""
    cfg = _build(Config, raw if raw is not None else {}, "")
    _cross_checks(cfg)
    return cfg


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _copy_tree(x: Any) -> Any:
    """Copy the dicts and lists of a parsed YAML tree (leaves shared), so overrides never touch
    the caller's mapping; unlike ``copy.deepcopy`` it does not keep YAML aliases shared."""
    if isinstance(x, dict):
        return {k: _copy_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy_tree(v) for v in x]
    return x


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw mapping.

    A malformed override (no ``=``, an empty part in the key as in ``=3``, ``fl.=3`` or
    ``a..b=1``, a value that is not YAML such as ``[``, a key through a non-section) raises
    one :class:`ConfigError` line. The input mapping is not modified.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file: expected a mapping of sections, got {type(raw).__name__}")
    try:
        raw = _copy_tree(raw)
    except RecursionError:
        raise ConfigError("config file: nested too deeply (or recursive)") from None
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"config override {_show(item)}: expected KEY=VALUE, e.g. fl.rounds=10")
        key, value = item.split("=", 1)
        parts = [p.strip() for p in key.split(".")]
        if not all(parts):
            raise ConfigError(
                f"config override {_show(item)}: expected KEY=VALUE with a dotted KEY such as "
                f"fl.rounds, got key {_show(key)}"
            )
        try:
            parsed = yaml.safe_load(value)
        except Exception as e:  # YAMLError, and PyYAML's constructors raise ValueError (date
            # 2020-13-01), IndexError (!!float), KeyError (!!bool), ... for odd tagged values
            problem = getattr(e, "problem", None) or _one_line(e)
            raise ConfigError(f"config override {_show(item)}: value is not valid YAML ({problem})") from None
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config override {_name('.'.join(parts))}: {_name(p)} is not a section")
        node[parts[-1]] = parsed
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML config file (``None`` = defaults), then apply overrides."""
    raw: Any = {}
    if path is not None:
        p = Path(path)
        try:
            found = p.is_file()
        except (OSError, ValueError):  # e.g. a name too long, or with a NUL byte
            found = False
        if not found:
            raise ConfigError(f"config file not found: {_name(str(p))}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            problem = getattr(e, "problem", None) or _one_line(e)
            raise ConfigError(f"config file {p}{where}: not valid YAML ({problem})") from None
        except Exception as e:  # unreadable, not UTF-8, or PyYAML failing on a value (see above)
            raise ConfigError(f"config file {p}: cannot be read as YAML ({_one_line(e)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p}: expected a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides or []))


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
