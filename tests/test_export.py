"""``fedgen export``: a run's global or personalized model as a plain checkpoint that stock libraries load
without fedgen, equal to the unmerged model (merging LoRA only reorders fp32 sums: atol 1e-4 on logits,
1e-5 on images in [-1, 1]); the exported word-level tokenizer round-trips PTB text."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fedgen.cli import main
from fedgen.config import load_config
from fedgen.data.ptb import load_ptb
from fedgen.experiment.build import Experiment
from fedgen.experiment.run import saved_model_state
from fedgen.tasks.image.gan import gan_of

pytestmark = pytest.mark.realdata

LOGITS_ATOL = 1e-4  # fp32 logits of magnitude ~10: merged vs unmerged differ by summation order only
IMAGE_ATOL = 1e-5  # tanh images in [-1, 1]


def unmerged(run, client):
    """The run's model as fedgen runs it: backbone + unmerged LoRA adapter (eval mode)."""
    exp = Experiment.build(load_config(run / "config.yaml"), progress=False)
    exp.params.load(saved_model_state(exp, run, client))
    exp.params.model.eval()
    return exp


@pytest.fixture(scope="module")
def text_run(tiny_text_run):
    """The session's tiny personalized text run (conftest), read only."""
    return tiny_text_run[0]


@pytest.mark.parametrize("client", [None, 3])
def test_an_exported_gpt2_loads_with_transformers_alone_and_gives_the_unmerged_logits(
    text_run, client, tmp_path, capsys
):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    out = tmp_path / "export"
    argv = ["export", "--run", str(text_run), str(out)] + (
        [] if client is None else ["--client", str(client)]
    )
    assert main(argv) == 0
    model = GPT2LMHeadModel.from_pretrained(out).eval()
    keys = model.state_dict().keys()
    assert "transformer.h.0.attn.c_attn.weight" in keys and not any(
        "q_proj" in k or "lora" in k for k in keys
    )
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(["the stock market fell sharply", "in new york"], padding=True, return_tensors="pt")[
        "input_ids"
    ]
    assert ids[0, 0] == tok.eos_token_id == 0  # fedgen's LM starts every stream with <eos>
    exp = unmerged(text_run, client)
    with torch.no_grad():
        ours = exp.params.model(input_ids=ids).logits
        theirs = model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=LOGITS_ATOL, rtol=0), (ours - theirs).abs().max()
    meta = json.loads((out / "fedgen_export.json").read_text())
    assert meta["client"] == client and meta["algorithm"] == "fedgen"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    capsys.readouterr()


def test_the_exported_tokenizer_round_trips_ptb_text(text_run, data_root, tmp_path):
    from transformers import AutoTokenizer

    from fedgen.commands.export import export

    out = export(text_run, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(out)
    ptb = load_ptb(data_root)
    lines = (data_root / "ptb" / "ptb.valid.txt").read_text().splitlines(keepends=True)[:200]
    text = "".join(lines)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    words = [w for s in ptb.valid[:200] for w in s]  # each sentence ends with <eos>
    assert ids == [int(i) for i in ptb.vocab.encode(words)]
    assert tok.decode(ids) == " ".join(words)
    assert tok.convert_ids_to_tokens(tok("an unknownword")["input_ids"]) == ["<eos>", "an", "<unk>"]


def test_an_exported_generator_loads_without_fedgen_and_draws_the_unmerged_images(
    shared_root, cifar_root, tmp_path
):
    from fedgen.commands.export import export
    from test_image import tiny_image_run

    run, _ = tiny_image_run(shared_root / "image", cifar_root)  # the image tests' run, made once
    out = export(run, tmp_path / "gen", client=0)
    spec = importlib.util.spec_from_file_location("load_generator", out / "load_generator.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    assert "fedgen" not in (out / "load_generator.py").read_text().split('"""', 2)[2]  # no fedgen import
    gen, cfg = loader.load_generator(out)
    exp = unmerged(run, 0)
    labels = torch.arange(10).repeat_interleave(3)
    z = torch.randn(len(labels), cfg["nz"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = gan_of(exp.params.model).generator(z, labels)
        theirs = gen(z, labels)
    assert theirs.shape == (30, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=IMAGE_ATOL, rtol=0), (ours - theirs).abs().max()
    assert (out / "adapter" / "adapter_config.json").is_file()
