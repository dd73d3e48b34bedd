"""GPT-2 backbone with split q/k/v, LoRA on query and value via PEFT, and the adapter/backbone formats."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import GPT2LMHeadModel

from fedgen.core.errors import FedgenError
from fedgen.data.ptb import Vocab
from fedgen.models.gpt import (
    BACKBONE_META,
    VOCAB_FILE,
    SplitQKV,
    build_gpt,
    count_params,
    freeze,
    fuse_qkv,
    gpt2_config,
    load_backbone,
    save_backbone,
    split_qkv,
)
from fedgen.models.lora import add_lora, save_adapter
from fedgen.models.params import ParamSet

VOCAB, N_LAYER, N_EMBD, CONTEXT = 50, 2, 32, 16
R, ALPHA, TARGETS = 8, 16.0, ["q_proj", "v_proj"]


def adapter_state(model):
    """The exchanged LoRA state (what clients upload), detached copies."""
    return ParamSet(model, "lora").state()


def load_adapter_state(model, state) -> None:
    ParamSet(model, "lora").load(state)


def lora_parameters(model):
    return ParamSet(model, "lora").parameters()


def tiny_config():
    return gpt2_config(
        vocab_size=VOCAB, n_layer=N_LAYER, n_embd=N_EMBD, n_head=4, context=CONTEXT, dropout=0.0
    )


def tiny_backbone(seed: int = 0) -> GPT2LMHeadModel:
    """A split, frozen tiny backbone in eval mode (same weights for the same seed)."""
    model = build_gpt(tiny_config(), seed)
    freeze(model)
    return model.eval()


def tiny_adapted(seed: int = 0):
    return add_lora(tiny_backbone(seed), R, ALPHA, TARGETS).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, CONTEXT), generator=torch.Generator().manual_seed(1))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def tiny_vocab() -> Vocab:
    return Vocab(["<eos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 2)])


def set_nonzero_adapter(model) -> None:
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)


# ---------------------------------------------------------------------------------------------- split q/k/v


def test_split_qkv_keeps_the_fused_models_logits(ids: torch.Tensor) -> None:
    torch.manual_seed(0)
    fused = GPT2LMHeadModel(tiny_config()).eval()
    before = logits(fused, ids)
    split = split_qkv(copy.deepcopy(fused))
    assert all(isinstance(b.attn.c_attn, SplitQKV) for b in split.transformer.h)
    assert torch.allclose(logits(split, ids), before, atol=1e-5)


def test_fuse_of_split_round_trips_the_state_dict_exactly() -> None:
    torch.manual_seed(0)
    fused = GPT2LMHeadModel(tiny_config())
    want = {k: v.clone() for k, v in fused.state_dict().items()}
    back = fuse_qkv(split_qkv(fused)).state_dict()
    assert list(back) == list(want)
    for k, v in want.items():
        assert torch.equal(back[k], v), k


def test_build_gpt_is_deterministic_for_a_seed(ids: torch.Tensor) -> None:
    assert torch.equal(logits(tiny_backbone(3), ids), logits(tiny_backbone(3), ids))
    assert not torch.equal(logits(tiny_backbone(3), ids), logits(tiny_backbone(4), ids))


# ----------------------------------------------------------------------------------------------------- LoRA


def test_fresh_adapter_with_zero_b_leaves_logits_exactly_unchanged(ids: torch.Tensor) -> None:
    backbone = tiny_backbone()
    before = logits(backbone, ids)
    adapted = add_lora(backbone, R, ALPHA, TARGETS).eval()
    assert all(torch.count_nonzero(v) == 0 for k, v in adapter_state(adapted).items() if "lora_B" in k)
    assert torch.equal(logits(adapted, ids), before)


def test_only_lora_a_and_b_of_q_and_v_are_trainable() -> None:
    model = tiny_adapted()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == N_LAYER * len(TARGETS) * 2
    for n in trainable:
        assert ".lora_A." in n or ".lora_B." in n, n
        assert ".q_proj." in n or ".v_proj." in n, n
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    for part in ("k_proj", "c_proj", "mlp", "wte", "wpe", "ln_f"):
        assert any(part in n for n in frozen), part
    assert not any(".k_proj.lora" in n for n, _ in model.named_parameters())


def test_backward_of_the_lm_loss_gives_grads_only_to_lora(ids: torch.Tensor) -> None:
    model = tiny_adapted().train()
    model(input_ids=ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    # B starts at zero, so A gets no gradient yet but B does.
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_trainable_count_is_layers_times_targets_times_r_times_din_plus_dout() -> None:
    model = tiny_adapted()
    assert count_params(model, trainable_only=True) == N_LAYER * len(TARGETS) * R * (N_EMBD + N_EMBD)
    assert sum(v.numel() for v in adapter_state(model).values()) == N_LAYER * len(TARGETS) * R * 2 * N_EMBD


def test_trainable_count_of_the_paper_6_layer_768_model_with_r8_is_147456() -> None:
    cfg = gpt2_config(vocab_size=100, n_layer=6, n_embd=768, n_head=12, context=16, dropout=0.0)
    model = build_gpt(cfg, 0)
    freeze(model)
    model = add_lora(model, 8, 16.0, TARGETS)
    assert count_params(model, trainable_only=True) == 147_456 == 6 * 2 * 8 * (768 + 768)


# -------------------------------------------------------------------------------------------- adapter state


def test_adapter_state_round_trips_through_load_adapter_state(ids: torch.Tensor) -> None:
    source = tiny_adapted()
    set_nonzero_adapter(source)
    state = adapter_state(source)
    assert list(state) == sorted(state)
    target = tiny_adapted()
    load_adapter_state(target, state)
    for k, v in adapter_state(target).items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(logits(target, ids), logits(source, ids))


def test_exchange_keys_are_pefts_own_saved_keys() -> None:
    from peft import get_peft_model_state_dict

    model = tiny_adapted()
    assert list(adapter_state(model)) == sorted(get_peft_model_state_dict(model))


def test_a_param_set_leaves_requires_grad_alone_until_asked() -> None:
    model = tiny_backbone()
    params = ParamSet(model, "full")
    assert not any(p.requires_grad for p in model.parameters())
    params.mark_trainable()
    assert all(p.requires_grad for p in model.parameters())


def test_adapter_state_is_a_detached_copy() -> None:
    model = tiny_adapted()
    state = adapter_state(model)
    for v in state.values():
        v.add_(1.0)
    assert all(not torch.equal(v, state[k]) for k, v in adapter_state(model).items())


def test_loading_an_adapter_state_with_a_wrong_shape_raises() -> None:
    model = tiny_adapted()
    state = adapter_state(model)
    key = next(iter(state))
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    with pytest.raises(Exception, match="size|shape"):
        load_adapter_state(model, state)


def test_loading_an_adapter_state_with_an_unknown_lora_key_raises() -> None:
    model = tiny_adapted()
    state = adapter_state(model)
    state["base_model.model.transformer.h.0.attn.c_attn.k_proj.lora_A.weight"] = torch.zeros(R, N_EMBD)
    with pytest.raises(FedgenError, match="k_proj"):
        load_adapter_state(model, state)


def test_saved_adapter_is_a_peft_directory_that_peft_loads_with_identical_logits(
    tmp_path: Path, ids: torch.Tensor
) -> None:
    model = tiny_adapted()
    set_nonzero_adapter(model)
    want = logits(model, ids)
    assert not torch.equal(want, logits(tiny_backbone(), ids))
    out = save_adapter(model, adapter_state(model), tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["target_modules"] == sorted(TARGETS)
    assert (cfg["r"], cfg["lora_alpha"]) == (R, ALPHA)
    loaded = PeftModel.from_pretrained(tiny_backbone(), str(out)).eval()
    assert torch.equal(logits(loaded, ids), want)


# ------------------------------------------------------------------------------------------- backbone files


def test_backbone_save_load_round_trip_keeps_logits_vocab_and_meta(tmp_path: Path, ids: torch.Tensor) -> None:
    model, vocab = tiny_backbone(5), tiny_vocab()
    out = save_backbone(model, vocab, tmp_path / "bb", {"source": "test", "steps": 7})
    for name in ("config.json", "model.safetensors", VOCAB_FILE, BACKBONE_META):
        assert (out / name).is_file(), name
    assert not (tmp_path / "bb.tmp").exists()
    loaded, loaded_vocab, meta = load_backbone(out)
    assert all(isinstance(b.attn.c_attn, SplitQKV) for b in loaded.transformer.h)
    assert loaded_vocab == vocab
    assert meta["source"] == "test" and meta["steps"] == 7 and meta["path"] == str(out)
    assert torch.equal(logits(loaded.eval(), ids), logits(model, ids))
    # saving does not fuse the caller's model
    assert all(isinstance(b.attn.c_attn, SplitQKV) for b in model.transformer.h)


def test_save_backbone_overwrites_an_existing_checkpoint(tmp_path: Path, ids: torch.Tensor) -> None:
    save_backbone(tiny_backbone(1), tiny_vocab(), tmp_path / "bb", {})
    save_backbone(tiny_backbone(2), tiny_vocab(), tmp_path / "bb", {})
    loaded, _, _ = load_backbone(tmp_path / "bb")
    assert torch.equal(logits(loaded.eval(), ids), logits(tiny_backbone(2), ids))


def test_load_backbone_without_config_json_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedgenError, match="config.json"):
        load_backbone(tmp_path / "empty")


def test_load_backbone_with_a_vocab_of_the_wrong_size_raises(tmp_path: Path) -> None:
    out = save_backbone(tiny_backbone(), tiny_vocab(), tmp_path / "bb", {})
    Vocab(["<eos>", "<unk>", "a", "b"]).save(out / VOCAB_FILE)
    with pytest.raises(FedgenError, match="4 tokens"):
        load_backbone(out)


def test_load_backbone_without_vocab_raises(tmp_path: Path) -> None:
    out = save_backbone(tiny_backbone(), tiny_vocab(), tmp_path / "bb", {})
    (out / VOCAB_FILE).unlink()
    with pytest.raises(FedgenError, match=VOCAB_FILE):
        load_backbone(out)


def test_loading_an_adapter_state_with_a_missing_key_raises() -> None:
    model = tiny_adapted()
    state = adapter_state(model)
    del state[next(iter(state))]
    with pytest.raises(FedgenError):
        load_adapter_state(model, state)
