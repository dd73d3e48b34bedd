"""FedGen-Edge and the paper's baselines, each as: what is trained, what is uploaded, what each
client keeps. All share one training loop (:func:`fedgen.fl.client.local_train`), one server
loop (:func:`fedgen.fl.server.federate`) and one FedAvg (weights n_k).

=============  ======  =========  ==========================================================
algorithm      trains  mode       uploaded / kept on the client
=============  ======  =========  ==========================================================
fedgen         LoRA    federated  whole adapter; after the last round each client fine-tunes
                                  the global adapter for ``personalize.epochs``
fedavg-full    all     federated  every model parameter
fedper         all     federated  all but the personal layers (last ``fedper_personal_blocks``
                                  transformer blocks + final LayerNorm), which never leave it
ditto          LoRA    federated  global adapter w by FedAvg; personal adapter v_k trained with
                                  loss + lambda/2 ||v_k - w||^2 is kept
local          LoRA    local      nothing: each client trains its own adapter on its own data
central-full   all     central    nothing (raw data pooled centrally): upper bound
central-lora   LoRA    central    nothing (raw data pooled centrally)
=============  ======  =========  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgen.fl.client import Client, ClientData, FitResult, derive_seed
from fedgen.models.params import State


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    trains: str  # "lora" | "full"
    mode: str  # "federated" | "local" | "central"
    has_global: bool  # a single global model exists and is evaluated on PTB valid/test
    personalized: str | None  # "finetune" | "kept" | None


ALGORITHMS: dict[str, AlgorithmSpec] = {
    s.name: s
    for s in (
        AlgorithmSpec("fedgen", "lora", "federated", True, "finetune"),
        AlgorithmSpec("fedavg-full", "full", "federated", True, None),
        AlgorithmSpec("fedper", "full", "federated", False, "kept"),
        AlgorithmSpec("ditto", "lora", "federated", True, "kept"),
        AlgorithmSpec("local", "lora", "local", False, "kept"),
        AlgorithmSpec("central-full", "full", "central", True, None),
        AlgorithmSpec("central-lora", "lora", "central", True, None),
    )
}


def fedper_personal_keys(keys: list[str], n_layer: int, personal_blocks: int) -> list[str]:
    """FedPer's personal tensors: the last ``personal_blocks`` transformer blocks and ``ln_f``.

    GPT-2's LM head is tied to the input embedding, so it stays shared with it.
    """
    prefixes = tuple(f"transformer.h.{i}." for i in range(n_layer - personal_blocks, n_layer))
    return [k for k in keys if k.startswith(prefixes) or k.startswith("transformer.ln_f.")]


GAN_GENERATOR_BLOCKS = (("net.0.", "net.1."), ("net.3.", "net.4."), ("net.6.", "net.7."), ("net.9.",))


def fedper_gan_personal_keys(keys: list[str], personal_blocks: int) -> list[str]:
    """FedPer on the conditional GAN: the generator's last ``personal_blocks`` (transposed conv +
    BatchNorm) blocks and the discriminator's head (output conv + class projection)."""
    blocks = GAN_GENERATOR_BLOCKS[len(GAN_GENERATOR_BLOCKS) - personal_blocks :]
    prefixes = tuple(f"generator.{p}" for b in blocks for p in b)
    prefixes += ("discriminator.head.", "discriminator.embed.")
    return [k for k in keys if k.startswith(prefixes)]


class FedAvgClient:
    """Train the received state, upload all of it (FedGen-Edge, FedAvg-full)."""

    def __init__(self, client: Client):
        self.client = client
        self.kept: dict[int, State] = {}

    def fit(self, state: State, data: ClientData, seed: int) -> FitResult:
        return self.client.fit(state, data, seed)

    def personalized(self, global_state: State):
        """Client k's personalized model (``k -> state``), or None when clients keep none."""
        return None

    def server_part(self, state: State) -> State:
        """The part of a full client state that the server holds and averages."""
        return state


class FedPerClient(FedAvgClient):
    """Shared layers come from the server; personal layers stay here and are never uploaded."""

    def __init__(self, client: Client, personal_keys: list[str], init_personal: State):
        self.client, self.personal_keys, self.init = client, set(personal_keys), init_personal
        self.kept: dict[int, State] = {}

    def personalized(self, shared: State):
        return lambda k: {**shared, **self.kept.get(k, self.init)}

    def server_part(self, state: State) -> State:
        return {k: v for k, v in state.items() if k not in self.personal_keys}

    def fit(self, shared: State, data: ClientData, seed: int) -> FitResult:
        r = self.client.fit(self.personalized(shared)(data.client_id), data, seed)
        self.kept[data.client_id] = {k: v for k, v in r.state.items() if k in self.personal_keys}
        upload = {k: v for k, v in r.state.items() if k not in self.personal_keys}
        return FitResult(r.client_id, upload, r.num_examples, r.metrics)


class DittoClient(FedAvgClient):
    """Upload the locally trained global adapter; keep a personal one pulled towards it."""

    def __init__(self, client: Client, lam: float):
        self.client, self.lam = client, lam
        self.kept: dict[int, State] = {}

    def personalized(self, w: State):
        return lambda k: self.kept.get(k, w)  # never-sampled clients use the global adapter

    def fit(self, w: State, data: ClientData, seed: int) -> FitResult:
        k = data.client_id
        r = self.client.fit(w, data, seed)
        v = self.client.fit(self.kept.get(k, w), data, derive_seed(seed, "ditto"), prox=(self.lam, w))
        self.kept[k] = v.state
        return FitResult(k, r.state, r.num_examples, {**r.metrics, "personal_loss": v.metrics["train_loss"]})
