"""Batched multi-client LoRA training (fl/batched.py): a round's clients trained together give the
adapters, sample counts and metrics of training them one by one, as ordinary PEFT adapters.

Tiny random backbones are built here (our GPT-2 with q/k/v split, and a Llama with q_proj/v_proj),
with random token windows: no data files, CPU, fp32, dropout off.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from fedgen.config import config_from_dict
from fedgen.core.errors import ConfigError
from fedgen.fl.algorithms import DittoClient, FedAvgClient
from fedgen.fl.batched import unsupported
from fedgen.fl.client import Client, LocalTrainConfig
from fedgen.models.gpt import build_gpt, gpt2_config
from fedgen.models.lora import add_lora, init_adapter, read_adapter, save_adapter
from fedgen.models.params import ParamSet
from fedgen.runtime.simulate import InProcessRuntime, use_batched
from fedgen.tasks.base import ClientData
from fedgen.tasks.text.lm import LMObjective

ROOT = Path(__file__).resolve().parent.parent
VOCAB, CONTEXT = 50, 16
# examples per client: unequal numbers of batches of 8, last batches partial, one client without data
SIZES = {0: 37, 1: 16, 2: 5, 3: 0, 4: 24}
TRAIN = LocalTrainConfig(epochs=2, batch_size=8, lr=0.01, weight_decay=0.01, max_grad_norm=0.05)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def backbone(arch: str) -> torch.nn.Module:
    if arch == "gpt2":  # our word-level GPT-2, fused c_attn split into q/k/v_proj
        return build_gpt(gpt2_config(VOCAB, n_layer=2, n_embd=32, n_head=4, context=CONTEXT, dropout=0.0), 0)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
    )
    return LlamaForCausalLM(cfg)


def client_setup(arch: str, dropout: float = 0.0, kind: str = "lora", train: LocalTrainConfig = TRAIN):
    """(Client, start state with a non-zero B, client data) for a tiny LoRA model."""
    model = add_lora(backbone(arch), r=4, alpha=8, targets=["q_proj", "v_proj"], dropout=dropout)
    init_adapter(model, 1)
    params = ParamSet(model, kind)
    params.mark_trainable()
    g = torch.Generator().manual_seed(0)
    state = params.state()
    for k in state:  # B = 0 would leave A's first gradients at zero
        if "lora_B" in k:
            state[k] = 0.1 * torch.randn(state[k].shape, generator=g)
    windows = {k: torch.randint(0, VOCAB, (n, CONTEXT + 1), generator=g) for k, n in SIZES.items()}
    data = {k: ClientData(k, x, None) for k, x in windows.items()}
    return Client(LMObjective(None, CONTEXT), params, train), state, data


def fit_both(client: Client, state, data, max_steps=None):
    logic = FedAvgClient(client)
    seq = InProcessRuntime(logic, data, seed=3).fit(state, list(data), 7, max_steps)
    runtime = InProcessRuntime(logic, data, seed=3, batched=True)
    assert runtime.batched
    return seq, runtime.fit(state, list(data), 7, max_steps)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_clients_train_the_adapters_of_sequential_training(arch: str) -> None:
    client, state, data = client_setup(arch)
    seq, bat = fit_both(client, state, data, max_steps={4: 3})  # client 4 is a partial straggler
    assert [r.client_id for r in bat] == [r.client_id for r in seq] == list(SIZES)
    for s, b in zip(seq, bat, strict=True):
        assert b.num_examples == s.num_examples
        assert b.metrics["steps"] == s.metrics["steps"]
        assert b.metrics["train_loss"] == pytest.approx(s.metrics["train_loss"], abs=1e-5, nan_ok=True)
        assert max((b.state[k] - s.state[k]).abs().max().item() for k in s.state) <= 1e-5
    assert [r.metrics["steps"] for r in seq] == [10, 4, 2, 0, 3]  # 2 epochs of ceil(n / 8); 3 max
    moved = [max((r.state[k] - state[k]).abs().max().item() for k in state) for r in seq]
    assert min(moved[:3]) > 1e-3 and moved[3] == 0.0  # trained; client 3 has no data


def test_batched_states_are_ordinary_peft_adapters(tmp_path) -> None:
    client, state, data = client_setup("gpt2")
    seq, bat = fit_both(client, state, data)
    for s, b in zip(seq, bat, strict=True):
        assert list(b.state) == list(s.state)
        assert [(v.shape, v.dtype) for v in b.state.values()] == [
            (v.shape, v.dtype) for v in s.state.values()
        ]
    model = client.model
    set_peft_model_state_dict(model, bat[0].state)  # stock PEFT loads it ...
    loaded = get_peft_model_state_dict(model)
    assert all(torch.equal(loaded[k], bat[0].state[k]) for k in bat[0].state)
    back = read_adapter(save_adapter(model, bat[0].state, tmp_path / "adapter"))  # ... and our I/O
    assert all(torch.equal(back[k], bat[0].state[k]) for k in bat[0].state)


def test_unsupported_setups_fall_back_to_one_by_one_with_a_debug_line(caplog) -> None:
    client, state, data = client_setup("gpt2")
    assert unsupported(FedAvgClient(client)) is None
    assert "DittoClient" in unsupported(DittoClient(client, lam=1.0))
    full, _, _ = client_setup("gpt2", kind="full")
    assert "full model" in unsupported(FedAvgClient(full))
    dropped, state, data = client_setup("gpt2", dropout=0.1)
    assert "dropout" in unsupported(FedAvgClient(dropped))
    with caplog.at_level(logging.DEBUG, logger="fedgen.runtime.simulate"):
        runtime = InProcessRuntime(FedAvgClient(dropped), data, seed=3, batched=True)
        results = runtime.fit(state, [0, 1], 1) + runtime.fit(state, [2], 2)
    assert not runtime.batched and [r.metrics["steps"] for r in results] == [10, 4, 2]
    lines = [r.getMessage() for r in caplog.records if "batched" in r.getMessage()]
    assert len(lines) == 1 and "dropout" in lines[0]


def test_batched_clients_config() -> None:
    default = config_from_dict({})
    assert default.batched_clients == "auto"
    assert use_batched("auto", torch.device("cuda")) and not use_batched("auto", torch.device("cpu"))
    assert use_batched("on", torch.device("cpu")) and not use_batched("off", torch.device("cuda"))
    keys = {config_from_dict({"batched_clients": v}).result_digest() for v in ("auto", "on", "off")}
    assert keys == {default.result_digest()} == {"c6f4849b057c"}  # the key runs had before the setting
    with pytest.raises(ConfigError, match="^config batched_clients: expected"):
        config_from_dict({"batched_clients": "yes"})
    with pytest.raises(ConfigError, match="^config batched_clients: on needs runtime: in-process$"):
        config_from_dict({"batched_clients": "on", "runtime": "flower-sim"})


def test_benchmark_runs_and_writes_its_result(tmp_path, monkeypatch) -> None:
    path = ROOT / "benchmarks" / "multiclient.py"
    spec = importlib.util.spec_from_file_location("multiclient_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "multiclient.json"
    args = "--random-data --layers 1 --embd 16 --heads 2 --context 8 --clients 3 --examples 10 --repeats 1"
    monkeypatch.setattr(sys, "argv", ["multiclient.py", *args.split(), "--device", "cpu", "--out", str(out)])
    assert bench.main() == 0
    r = json.loads(out.read_text())
    assert r["client_examples"] == [10, 8, 7] and r["client_steps"] == [2, 1, 1]
    assert set(r["client_steps_per_second"]) == {"sequential", "batched"}
    assert r["max_abs_diff"] <= 1e-5 and r["ratio_batched_to_sequential"] > 0
