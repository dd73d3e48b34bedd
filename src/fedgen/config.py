"""Experiment configuration: typed dataclasses, loaded from YAML and validated.

Every user mistake (unknown key, wrong type, out-of-range value) raises one
:class:`~fedgen.errors.ConfigError` whose message names the offending key, e.g.
``config fl.rounds: expected an integer >= 1, got 'ten'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fedgen.errors import ConfigError


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass
class DataConfig:
    """Where the data lives and how it is split across clients."""

    dir: str | None = None  # None -> $FEDGEN_DATA or ./data
    # text: "lda" (LDA topics + Dirichlet) or "iid"; image: "dirichlet" (labels) or "iid"
    partition: Literal["lda", "dirichlet", "iid"] = "lda"
    num_clients: int = field(default=100, metadata=_range(1, 10_000))
    alpha: float = field(default=0.1, metadata=_range(0.0, None, lo_open=True))
    num_topics: int = field(default=10, metadata=_range(2, 200))
    doc_sentences: int = field(default=20, metadata=_range(1, 10_000))
    test_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    # The first N pseudo-documents of PTB train are public: no client holds them, and
    # pretrain.sources may include "ptb-public" to pre-train the backbone on them.
    public_docs: int = field(default=0, metadata=_range(0, None))
    # Give clients only the first N of the remaining pseudo-documents (None = all). Quick runs.
    max_docs: int | None = field(default=None, metadata=_range(1, None))
    lda_max_iter: int = field(default=20, metadata=_range(1, 1000))
    # Image task: this fraction of CIFAR-10 train is the public slice the GAN backbone is
    # pre-trained on; no client holds it. ``max_examples`` caps the clients' pool (quick runs).
    public_fraction: float = field(default=0.1, metadata=_range(0.0, 0.9, lo_open=True))
    max_examples: int | None = field(default=None, metadata=_range(1, None))


@dataclass
class ModelConfig:
    """GPT-2-architecture backbone. ``backbone: auto`` = the one ``fedgen pretrain`` builds."""

    backbone: str = "auto"  # "auto" | local HF checkpoint dir | HF hub id
    n_layer: int = field(default=6, metadata=_range(1, 48))
    n_embd: int = field(default=768, metadata=_range(8, 8192))
    n_head: int = field(default=12, metadata=_range(1, 128))
    context: int = field(default=128, metadata=_range(8, 4096))
    dropout: float = field(default=0.1, metadata=_range(0.0, 0.9))


@dataclass
class AdapterConfig:
    """LoRA adapters. ``targets``: the modules that get one (null = the task's default: the
    attention query and value projections for text, every generator convolution for images)."""

    r: int = field(default=8, metadata=_range(1, 256))
    alpha: float = field(default=16.0, metadata=_range(0.0, None, lo_open=True))
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.9))
    targets: list[str] | None = None


@dataclass
class ImageConfig:
    """Image task: conditional DCGAN backbone, its training and the image metrics."""

    backbone: str = "auto"  # "auto" (pre-trained by ``fedgen pretrain``) | directory of a saved GAN
    nz: int = field(default=100, metadata=_range(1, 4096))
    ngf: int = field(default=100, metadata=_range(1, 4096))
    ndf: int = field(default=100, metadata=_range(1, 4096))
    embed_dim: int = field(default=10, metadata=_range(1, 4096))
    beta1: float = field(default=0.5, metadata=_range(0.0, 1.0))  # Adam beta1 (DCGAN: 0.5)
    d_lr: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True))  # null = fl.lr
    eval_samples: int = field(default=1000, metadata=_range(10, None))  # per-round FD-classifier
    local_samples: int = field(default=100, metadata=_range(10, None))  # per client, local FD-classifier
    fid_samples: int = field(default=10000, metadata=_range(10, None))  # final Inception FID / KID
    fid_reference: int = field(default=10000, metadata=_range(10, 10000))  # CIFAR-10 test images
    kid_subset: int = field(default=1000, metadata=_range(2, None))
    classifier_epochs: int = field(default=8, metadata=_range(1, 200))
    # Train the evaluation classifier on the first N train images only (None = all 50,000). Tests.
    classifier_train_examples: int | None = field(default=None, metadata=_range(100, None))
    grid_clients: int = field(default=2, metadata=_range(0, 100))  # personalized sample grids


@dataclass
class PretrainConfig:
    """Central pre-training of the backbone on public text that no client holds."""

    sources: list[str] = field(
        default_factory=lambda: ["gutenberg", "us-presidential-addresses", "wikitext-2-valid-test"]
    )
    steps: int = field(default=2000, metadata=_range(1, None))
    batch_size: int = field(default=32, metadata=_range(1, 4096))
    lr: float = field(default=1e-3, metadata=_range(0.0, 1.0, lo_open=True))
    weight_decay: float = field(default=0.01, metadata=_range(0.0, 1.0))
    warmup_steps: int = field(default=100, metadata=_range(0, None))
    # Own seed, so experiments with different seeds share one backbone.
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))


@dataclass
class FLConfig:
    """Federation (Algorithm 1): rounds, client sampling and local training."""

    rounds: int = field(default=500, metadata=_range(1, None))
    fraction: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))
    local_epochs: int = field(default=5, metadata=_range(1, 1000))
    batch_size: int = field(default=32, metadata=_range(1, 4096))
    lr: float = field(default=5e-4, metadata=_range(0.0, 1.0, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0, 1.0))
    max_grad_norm: float | None = field(default=1.0, metadata=_range(0.0, None, lo_open=True))
    # A round aggregates only with at least this many valid updates; otherwise it is skipped
    # (global model unchanged). This many skipped rounds in a row stop the run (resumable).
    min_clients: int = field(default=1, metadata=_range(1, None))
    max_skipped_rounds: int = field(default=3, metadata=_range(1, None))
    # How accepted updates become the global state: n_k-weighted mean (FedAvg), or the robust,
    # unweighted coordinate-wise median / trimmed mean (drop the trim_beta share of largest and of
    # smallest values per coordinate). clip_norm: each accepted update's change from the global
    # state is scaled down to this L2 norm (all tensors together) before aggregating (null = none).
    aggregator: Literal["fedavg", "median", "trimmed-mean"] = "fedavg"
    trim_beta: float = field(default=0.1, metadata=_range(0.0, 0.49))
    clip_norm: float | None = field(default=None, metadata=_range(0.0, None, lo_open=True))


@dataclass
class AlgorithmConfig:
    """Which algorithm runs (FedGen-Edge or a baseline) and the baselines' own knobs."""

    name: str = "fedgen"  # a registered algorithm (fedgen.registry)
    # Ditto's lambda (Li et al. 2021 tune it over {0.05, ..., 2}; 1.0 sits in that range, untuned).
    ditto_lambda: float = field(default=1.0, metadata=_range(0.0, None))
    # FedPer: the last N transformer blocks (+ final LayerNorm) are personal.
    fedper_personal_blocks: int = field(default=1, metadata=_range(1, 48))
    # Learning rate of the algorithms that train the full model (null = fl.lr).
    lr_full: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True))


@dataclass
class EvalConfig:
    """How often and on what the global adapter is evaluated."""

    every: int = field(default=1, metadata=_range(1, None))  # rounds between PTB valid/test evals
    local_every: int = field(default=5, metadata=_range(1, None))  # rounds between client-test evals
    batch_size: int = field(default=64, metadata=_range(1, 4096))
    # Evaluate PTB valid/test on their first sentences holding this many words (None = all). Quick runs.
    max_tokens: int | None = field(default=None, metadata=_range(1, None))
    # Perplexity windows advance by this many tokens (<= model.context / 2; None = context / 2).
    stride: int | None = field(default=None, metadata=_range(1, None))


@dataclass
class PersonalizeConfig:
    """Per-client fine-tuning of the final global adapter (FedGen-Edge's last step)."""

    enabled: bool = True  # false: no fine-tuning step (algorithms that keep personal models still do)
    epochs: int = field(default=1, metadata=_range(1, 1000))  # the paper's recipe: one more epoch
    # The validated recipe: learning rate (fl.lr x multiplier) and epochs (1..max_epochs) chosen on a
    # validation split carved from each client's own train split; a client keeps the global adapter
    # when no candidate beats it there.
    validation_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    lr_multipliers: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.1])
    max_epochs: int = field(default=2, metadata=_range(1, 100))


@dataclass
class OutputConfig:
    root: str = "runs"
    keep_checkpoints: int = field(default=3, metadata=_range(1, None))


@dataclass
class FlowerConfig:
    """Flower runtimes (``runtime: flower-sim | flower-deploy``; see ``fedgen deploy --help``)."""

    # flower-deploy: a SuperLink connection of $FLWR_HOME/config.toml (null: its default one)
    superlink: str | None = None
    round_timeout: float = field(default=600.0, metadata=_range(0.0, None, lo_open=True))  # s per round
    wait_nodes: float = field(default=120.0, metadata=_range(0.0, None))  # s to wait for SuperNodes
    client_cpus: float = field(
        default=1.0, metadata=_range(0.0, None, lo_open=True)
    )  # flower-sim, per client


@dataclass
class DeviceTier:
    """A class of devices: its share of the clients, compute speed relative to the machine the
    base step time is measured on (or ``devices.step_seconds``), and link speed (up = down)."""

    share: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    speed: float = field(default=1.0, metadata=_range(0.0, None, lo_open=True))
    bandwidth_mbps: float = field(default=10.0, metadata=_range(0.0, None, lo_open=True))


def _default_tiers() -> list[DeviceTier]:
    # Illustrative phone-like mix: half fast on Wi-Fi, 30% mid-range on LTE, 20% slow on 3G.
    return [DeviceTier(0.5, 1.0, 20.0), DeviceTier(0.3, 0.5, 5.0), DeviceTier(0.2, 0.25, 1.0)]


@dataclass
class DevicesConfig:
    """Simulated system heterogeneity (``runtime/heterogeneous.py``), off unless ``enabled``.

    Each client belongs to one tier for the whole run (drawn by ``share``). Each round a sampled
    client never answers with probability ``dropout``; with ``deadline_s`` a client whose
    download + local steps + upload would take longer is a straggler: ``drop`` discards it,
    ``partial`` uses the local steps that fit before the deadline. ``over_select`` samples
    ceil(m / (1 - dropout)) clients so that m answers are expected. ``step_seconds``: seconds per
    local step on a speed-1 device (null: measured on this machine each round; then no deadline).
    """

    enabled: bool = False
    tiers: list[DeviceTier] = field(default_factory=_default_tiers)
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.95))
    deadline_s: float | None = field(default=None, metadata=_range(0.0, None, lo_open=True))
    over_select: bool = False
    stragglers: Literal["drop", "partial"] = "drop"
    step_seconds: float | None = field(default=None, metadata=_range(0.0, None, lo_open=True))


@dataclass
class Config:
    """A complete FedGen-Edge experiment (``task``: a registered task: text on PTB, image on CIFAR-10)."""

    name: str = "experiment"
    task: str = "text"
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present (bf16 autocast), else CPU
    threads: int | None = field(default=None, metadata=_range(1, 1024))
    # Where federated rounds run: in this process, Flower's Simulation Engine, or a Flower deployment.
    runtime: Literal["in-process", "flower-sim", "flower-deploy"] = "in-process"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: AdapterConfig = field(default_factory=AdapterConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    personalize: PersonalizeConfig = field(default_factory=PersonalizeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_digest(self) -> str:
        """Short hash of every setting that can change a run's results: all but the experiment's
        name, its thread count, the runtime (runtimes give equal results), where the data is
        read from and where outputs go."""
        d = self.to_dict()
        for key in ("name", "threads", "output", "runtime", "flower"):
            d.pop(key)
        d["data"].pop("dir")
        if not d["devices"]["enabled"]:
            d.pop("devices")
        for key, default in _DIGEST_NEUTRAL_DEFAULTS.items():  # newer keys at their defaults: old keys hold
            section, _, name = key.partition(".")
            if d[section].get(name, object()) == default:
                d[section].pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def digest(self, *sections: str) -> str:
        """Short stable hash of the given sections (all when none), for cache keys."""
        d = self.to_dict()
        d = {k: d[k] for k in sections} if sections else d
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# Settings added after runs were keyed by result_digest: at these values they change nothing, so
# they are left out of the digest and earlier runs keep their key.
_DIGEST_NEUTRAL_DEFAULTS = {"fl.aggregator": "fedavg", "fl.trim_beta": 0.1, "fl.clip_norm": None}


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
    if dataclasses.is_dataclass(tp):  # an item of a list of sections, e.g. devices.tiers[0]
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
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], key + ".")
        else:
            kwargs[name] = _coerce(raw[name], tp, key)
            _check_range(kwargs[name], f.metadata, key)
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    """The registry knows the task and the algorithm; the task checks its own settings."""
    from fedgen.device import resolve
    from fedgen.fl.server import clients_per_round

    resolve(cfg.device)  # cuda asked for on a machine without it: one clear line
    from fedgen.registry import algorithm, task_class

    algorithm(cfg.algorithm.name)
    m = clients_per_round(cfg.fl.fraction, cfg.data.num_clients)
    if cfg.fl.min_clients > m:
        raise ConfigError(
            f"config fl.min_clients: {cfg.fl.min_clients} is more than the {m} clients sampled per round"
        )
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
    task_class(cfg.task).check_config(cfg)


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
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
