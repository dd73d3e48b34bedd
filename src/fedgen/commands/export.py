"""``fedgen export --run DIR [--client K] OUT``: a run's global model, or client K's personalized one,
merged into a plain checkpoint that stock libraries load without fedgen, with the unmerged PEFT
adapter beside it (``OUT/adapter/``, LoRA algorithms only).

* **text** (GPT-2 backbones): LoRA merged, q/k/v fused back into GPT-2's ``c_attn``
  (:func:`fedgen.models.gpt.fuse_qkv`), saved with ``save_pretrained`` (safetensors), plus a
  ``tokenizer.json`` built with the ``tokenizers`` library from our word vocabulary (newline ->
  ``<eos>``, ``<eos>`` prepended as fedgen does), wrapped so that
  ``GPT2LMHeadModel.from_pretrained(OUT)`` and ``AutoTokenizer.from_pretrained(OUT)`` work. Other
  Hugging Face causal LMs: merged and saved as they are, with the backbone's own tokenizer files.
* **image**: the merged generator as ``generator.safetensors`` + ``generator_config.json`` and a
  self-contained ``load_generator.py`` (torch + safetensors only; see the README).

Exporters are looked up by task name in :data:`EXPORTERS` (:func:`register_exporter` adds one), so a
task needs no change; a task class may also define ``export(exp, out)`` itself.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedgen.core.errors import FedgenError

if TYPE_CHECKING:
    from fedgen.experiment.build import Experiment

EXPORTERS: dict[str, Callable[[Experiment, Path], list[str]]] = {}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def register_exporter(task: str, fn: Callable[[Experiment, Path], list[str]]) -> None:
    """``fn(exp, out) -> [written file names]`` exports the loaded model of ``task`` runs."""
    EXPORTERS[task] = fn


def merged_model(exp: Experiment) -> nn.Module:
    """A copy of the loaded model with any LoRA merged into its base weights (eval mode)."""
    model = copy.deepcopy(exp.params.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval()


# -------------------------------------------------------------------------------------------- text


def word_tokenizer(itos: list[str], eos: str = "<eos>", unk: str = "<unk>"):
    """A ``PreTrainedTokenizerFast`` over our word vocabulary: whitespace split, newline = ``eos``,
    ``eos`` prepended as the LM's start token (as in training and in fedgen's sampling)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(itos)}, unk_token=unk))
    tok.normalizer = normalizers.Replace("\n", f" {eos} ")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos_id = itos.index(eos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{eos} $A", pair=f"{eos} $A $B", special_tokens=[(eos, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, eos_token=eos, bos_token=eos, pad_token=eos
    )


def export_text(exp: Experiment, out: Path) -> list[str]:
    from fedgen.models.gpt import VOCAB_FILE, SplitQKV, fuse_qkv

    model = merged_model(exp)
    if any(isinstance(m, SplitQKV) for m in model.modules()):
        model = fuse_qkv(model)
        fused = type(model)(model.config)  # a plain GPT-2 (fresh c_attn Conv1D modules), same weights
        fused.load_state_dict(model.state_dict())
        model = fused
    model.save_pretrained(out, safe_serialization=True)
    backbone = Path(exp.setup.backbone.get("path") or "")
    if (backbone / "tokenizer.json").is_file():  # a Hugging Face LM with its own tokenizer
        for name in TOKENIZER_FILES:
            if (backbone / name).is_file():
                shutil.copyfile(backbone / name, out / name)
    elif (backbone / VOCAB_FILE).is_file():
        from fedgen.data.ptb import Vocab

        word_tokenizer(Vocab.load(backbone / VOCAB_FILE).itos).save_pretrained(out)
        shutil.copyfile(backbone / VOCAB_FILE, out / VOCAB_FILE)
    else:
        raise FedgenError(
            f"backbone {backbone}: no tokenizer.json or {VOCAB_FILE} to export a tokenizer from"
        )
    return sorted(p.name for p in out.iterdir() if p.is_file())


# ------------------------------------------------------------------------------------------- image

LOADER = '''"""Load a generator exported by `fedgen export` (torch + safetensors only, no fedgen).

    from load_generator import load_generator
    g, cfg = load_generator("OUT")                    # the directory `fedgen export` wrote
    z = torch.randn(10, cfg["nz"]); y = torch.arange(10)
    images = g(z, y)                                  # [10, 3, 32, 32] in [-1, 1]

cfg["norm"] == "bn": BatchNorm uses the statistics of the batch (no running buffers), as in
training, so sample in class-mixed batches (fedgen draws batches of 100 in a shuffled label order);
"gn": per-sample GroupNorm, a sample does not depend on its batch.
"""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class CondNorm(nn.Module):
    """Parameter-free BatchNorm/GroupNorm, then a class-conditional gain and bias."""

    def __init__(self, c, num_classes, kind):
        super().__init__()
        if kind == "bn":
            self.norm = nn.BatchNorm2d(c, affine=False, track_running_stats=False)
        else:
            self.norm = nn.GroupNorm(math.gcd(c, min(32, max(1, c // 4))), c, affine=False)
        self.gain = nn.Embedding(num_classes, c)
        self.bias = nn.Embedding(num_classes, c)

    def forward(self, x, y):
        return self.norm(x) * (1 + self.gain(y)[:, :, None, None]) + self.bias(y)[:, :, None, None]


class Generator(nn.Module):
    """[z, embed(y)] -> 4 transposed convolutions (1 -> 4 -> 8 -> 16 -> 32 px) -> tanh RGB."""

    def __init__(self, nz, ngf, num_classes, embed_dim, norm):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        w = (8 * ngf, 4 * ngf, 2 * ngf)
        self.convs = nn.ModuleList([nn.ConvTranspose2d(nz + embed_dim, w[0], 4, 1, 0, bias=False)])
        self.convs.extend(nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False) for a, b in zip(w, w[1:]))
        self.norms = nn.ModuleList(CondNorm(c, num_classes, norm) for c in w)
        self.out = nn.ConvTranspose2d(w[-1], 3, 4, 2, 1)

    def forward(self, z, y):
        h = torch.cat([z, self.embed(y)], 1)[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms):
            h = torch.relu(norm(conv(h), y))
        return torch.tanh(self.out(h))


def load_generator(path):
    path = Path(path)
    cfg = json.loads((path / "generator_config.json").read_text())
    g = Generator(cfg["nz"], cfg["ngf"], cfg["num_classes"], cfg["embed_dim"], cfg["norm"])
    g.load_state_dict(load_file(str(path / "generator.safetensors")))
    return g.eval(), cfg
'''


def export_image(exp: Experiment, out: Path) -> list[str]:
    from dataclasses import asdict

    from safetensors.torch import save_file

    from fedgen.data.cifar10 import CLASSES

    gan = merged_model(exp)
    sd = {k: v.detach().contiguous() for k, v in gan.generator.state_dict().items()}
    save_file(sd, str(out / "generator.safetensors"))
    arch = asdict(gan.config)
    keys = ("nz", "ngf", "num_classes", "embed_dim", "norm")
    cfg = {**{k: arch[k] for k in keys}, "classes": list(CLASSES)}
    (out / "generator_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "load_generator.py").write_text(LOADER)
    return ["generator.safetensors", "generator_config.json", "load_generator.py"]


register_exporter("text", export_text)
register_exporter("image", export_image)


# ------------------------------------------------------------------------------------------ entry


def export(run_dir: str | Path, out: str | Path, client: int | None = None) -> Path:
    """Export a finished run's global model (``client=None``) or client ``client``'s personalized one."""
    from fedgen.config import load_config
    from fedgen.experiment.build import Experiment
    from fedgen.experiment.run import saved_model_state
    from fedgen.experiment.rundir import write_state

    run, out = Path(run_dir), Path(out)
    if not (run / "config.yaml").is_file():
        raise FedgenError(f"{run} is not a run directory (no config.yaml)")
    exp = Experiment.build(load_config(run / "config.yaml"), progress=False)
    fn = EXPORTERS.get(exp.cfg.task) or getattr(exp.task, "export", None)
    if fn is None:
        raise FedgenError(f"no exporter for task {exp.cfg.task!r} (fedgen.commands.export.register_exporter)")
    state = saved_model_state(exp, run, client)
    exp.params.load(state)
    if out.exists() and any(out.iterdir()):
        raise FedgenError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        files = fn(exp, out)
    if exp.peft_model is not None:
        write_state(out / "adapter", state, exp.peft_model)
        files.append("adapter/")
    who = "global model" if client is None else f"client {client}'s personalized model"
    (out / "fedgen_export.json").write_text(
        json.dumps(
            {
                "run": str(run.resolve()),
                "model": who,
                "client": client,
                "task": exp.cfg.task,
                "algorithm": exp.spec.name,
                "seed": exp.cfg.seed,
                "backbone": exp.setup.backbone.get("source"),
                "adapter": "adapter/: the unmerged PEFT adapter (loads onto fedgen's backbone)"
                if exp.peft_model is not None
                else None,
                "files": files,
            },
            indent=2,
        )
    )
    return out
