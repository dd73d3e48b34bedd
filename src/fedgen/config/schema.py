"""The experiment configuration's schema: typed sections with their defaults (the paper's settings)
and value ranges. Loading and validation: :mod:`fedgen.config.load`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal


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
    """Image task: the conditional GAN backbone (:mod:`fedgen.models.cgan`), its pre-training
    recipe (with ``pretrain.steps / batch_size / lr / seed``), the GAN steps and the image metrics."""

    backbone: str = "auto"  # "auto" (pre-trained by ``fedgen pretrain``) | directory of a saved GAN
    nz: int = field(default=128, metadata=_range(1, 4096))
    ngf: int = field(default=100, metadata=_range(1, 4096))  # generator width
    ndf: int = field(default=100, metadata=_range(1, 4096))  # discriminator width
    embed_dim: int = field(default=10, metadata=_range(1, 4096))
    # Generator normalisation: "bn" = BatchNorm on batch statistics, "gn" = per-sample GroupNorm.
    norm: Literal["bn", "gn"] = "bn"
    # AC-GAN class-loss weight, in pre-training and federated GAN steps (0 = projection D only).
    ac_weight: float = field(default=1.0, metadata=_range(0.0, 100.0))
    diffaug: str = "color,translation,cutout"  # DiffAugment policy ("" = none), on every image D sees
    ema_decay: float = field(default=0.999, metadata=_range(0.0, 1.0))  # pre-training EMA of G
    n_dis: int = field(default=1, metadata=_range(1, 10))  # pre-training D steps per G step
    # Pre-training D learning rate (TTUR; null = 2 x pretrain.lr, the G rate).
    pretrain_d_lr: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True))
    beta1: float = field(default=0.0, metadata=_range(0.0, 1.0))  # Adam beta1 of every GAN step (SNGAN: 0)
    d_lr: float | None = field(
        default=None, metadata=_range(0.0, 1.0, lo_open=True)
    )  # federated D; null = fl.lr
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
    # How accepted updates become the global state: n_k-weighted mean (FedAvg), FedNova (changes
    # normalized by each client's local steps: for unequal local work, e.g. partial stragglers), or
    # the robust, unweighted coordinate-wise median / trimmed mean (drop the trim_beta share of largest and of
    # smallest values per coordinate). clip_norm: each accepted update's change from the global
    # state is scaled down to this L2 norm (all tensors together) before aggregating (null = none).
    aggregator: Literal["fedavg", "fednova", "median", "trimmed-mean"] = "fedavg"
    trim_beta: float = field(default=0.1, metadata=_range(0.0, 0.49))
    clip_norm: float | None = field(default=None, metadata=_range(0.0, None, lo_open=True))


@dataclass
class AlgorithmConfig:
    """Which algorithm runs (FedGen-Edge or a baseline) and the baselines' own knobs."""

    name: str = "fedgen"  # a registered algorithm (fedgen.experiment.registry)
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
class SecAggConfig:
    """Flower's SecAgg+ over the adapter update (``flower.secagg``; Flower runtimes only).

    The server receives only the n_k-weighted sum of the clients' updates (state - global), each
    quantized to ``quantization_range`` levels over [-clipping_range, clipping_range]; a share of
    ``reconstruction_threshold`` of the ``num_shares`` neighbours (a fraction of the sampled
    clients when < 1) must answer to unmask. Defaults: Flower's ``SecAggPlusWorkflow``'s.
    """

    enabled: bool = False
    num_shares: float = field(default=1.0, metadata=_range(0.0, None, lo_open=True))
    reconstruction_threshold: float = field(default=1.0, metadata=_range(0.0, None, lo_open=True))
    clipping_range: float = field(default=8.0, metadata=_range(0.0, None, lo_open=True))
    quantization_range: int = field(default=2**22, metadata=_range(2, 2**30))


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
    secagg: SecAggConfig = field(default_factory=SecAggConfig)


@dataclass
class DPConfig:
    """Differential privacy of the federated rounds (DP-FedAvg, McMahan et al. 2018), with
    Flower's clipping and noise functions (``flwr.supercore.differential_privacy``).

    ``central``: the server clips each update's change to ``clipping_norm``; ``client``: each
    client clips its own (before SecAgg+ masking). Either way the server averages the clipped
    changes with uniform weights (the noise is calibrated to a uniform mean) and adds Gaussian
    noise of std ``noise_multiplier * clipping_norm / m`` to the mean; an RDP accountant
    records (epsilon, ``delta``) each round.
    """

    mode: Literal["off", "central", "client"] = "off"
    noise_multiplier: float = field(default=1.0, metadata=_range(0.0, None))
    clipping_norm: float = field(default=1.0, metadata=_range(0.0, None, lo_open=True))
    delta: float = field(default=1e-5, metadata=_range(0.0, 1.0, lo_open=True))
    # Tests/experiments only: draw the noise from the config's seed (reproducible) instead of the OS's
    # secure source. Anyone who knows the config can then subtract the noise: NOT differentially private.
    insecure_reproducible_noise: bool = False


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
    # In-process runtime: train a round's sampled clients together, one backbone pass per step
    # (fl/batched.py; fedgen-style LoRA algorithms on the text task, else one by one).
    # auto: on CUDA only (on a few CPU cores it is slower than one by one).
    batched_clients: Literal["auto", "on", "off"] = "auto"
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
    dp: DPConfig = field(default_factory=DPConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_digest(self) -> str:
        """Short hash of every setting that can change a run's results: all but the experiment's
        name, its thread count, the runtime and batched clients (they give equal results), where
        the data is read from and where outputs go. SecAgg+ (quantized sums) and DP count when enabled."""
        d = self.to_dict()
        secagg = d["flower"]["secagg"]
        for key in ("name", "threads", "output", "runtime", "flower", "batched_clients"):
            d.pop(key)
        if secagg["enabled"]:
            d["secagg"] = secagg
        if d["dp"]["mode"] == "off":
            d.pop("dp")
        d["data"].pop("dir")
        if not d["devices"]["enabled"]:
            d.pop("devices")
        for section, task in _TASK_ONLY_SECTIONS.items():  # another task's settings change nothing here
            if d["task"] != task:
                d.pop(section)
        for key, default in _DIGEST_NEUTRAL_DEFAULTS.items():  # newer keys at their defaults: old keys hold
            section, _, name = key.partition(".")
            if section in d and d[section].get(name, object()) == default:
                d[section].pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def digest(self, *sections: str) -> str:
        """Short stable hash of the given sections (all when none), for cache keys."""
        d = self.to_dict()
        d = {k: d[k] for k in sections} if sections else d
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# Settings added after runs were keyed by result_digest: at these values they change nothing, so
# they are left out of the digest and earlier runs keep their key.
_DIGEST_NEUTRAL_DEFAULTS = {
    "fl.aggregator": "fedavg",
    "fl.trim_beta": 0.1,
    "fl.clip_norm": None,
    "dp.insecure_reproducible_noise": False,
}
# Sections that only one task reads (section -> task): left out of the other tasks' result digests.
_TASK_ONLY_SECTIONS = {"image": "image"}


def clients_per_round(fraction: float, num_clients: int) -> int:
    """m = max(1, floor(C*K)): the number of clients sampled per round.

    The paper (section 3.3.1) selects "a fraction C of the clients (a set of size m)" with
    C=0.1, K=100 -> 10 clients, but its rounding rule was lost in the text; for C*K
    integral every rule agrees. For C*K not an integer we use McMahan et al.'s FedAvg
    ``m = max(C*K, 1)`` as its reference code and Flower's FedAvg (``int(K * fraction_fit)``)
    do: floor, at least 1. So the simulated and a Flower deployment pick the same m, and
    m <= K always (C <= 1). Not Python's ``round``: ``round(2.5) == 2`` but ``round(3.5) == 4``.

    C*K is snapped to the nearest integer when within 1e-9 (relative) of it, so decimal
    fractions give the count they denote despite binary floating point:
    0.29 * 100 == 28.999999999999996 -> 29, not 28; 0.07 * 100 == 7.000000000000001 -> 7.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    x = fraction * num_clients
    nearest = round(x)
    m = nearest if abs(x - nearest) <= 1e-9 * max(1.0, x) else math.floor(x)
    return max(1, min(num_clients, m))
