"""LoRA for ``nn.ConvTranspose2d``, plugged into PEFT as a custom module.

PEFT 0.21 supports Conv1d/2d/3d but rejects transposed convolutions. This layer reuses
PEFT's conv LoRA (``peft.tuners.lora.layer._ConvNd``), which builds its factors with the
base layer's own type, so here:

* ``lora_A = ConvTranspose2d(in, r, k, stride, padding)`` (no bias, Kaiming-uniform),
* ``lora_B = ConvTranspose2d(r, out, 1)`` (a 1x1 map, zero-initialised: output unchanged),

and output = base(x) + B(A(x)) * alpha / r. Only the merge differs from Conv2d: a
transposed convolution's weight is ``[in, out, kh, kw]``, so the merged delta is
``einsum('irhw,ro->iohw', A, B)``. Register it with :func:`conv_lora_config` and the adapter
saves, loads and merges through PEFT like any other (``PeftModel.from_pretrained`` needs
the same registration: :func:`load_image_adapter`).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import _ConvNd
from torch import nn

from fedgen.models.lora import lora_config


class LoraConvTranspose2d(_ConvNd):
    """PEFT LoRA layer for ``nn.ConvTranspose2d`` (groups = 1, dilation = 1, no output padding)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs):
        if not isinstance(base_layer, nn.ConvTranspose2d):
            raise TypeError(f"LoraConvTranspose2d wraps nn.ConvTranspose2d, got {type(base_layer).__name__}")
        if base_layer.groups != 1 or base_layer.dilation != (1, 1) or base_layer.output_padding != (0, 0):
            raise ValueError("LoRA on ConvTranspose2d needs groups=1, dilation=1 and output_padding=0")
        super().__init__(base_layer, adapter_name, **kwargs)
        self.conv_fn = F.conv_transpose2d

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        conv = cast(nn.ConvTranspose2d, module)  # the base layer, checked in __init__
        return conv.in_channels, conv.out_channels

    @property
    def lora_variants(self):
        return {(): None}

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        a = self.lora_A[adapter].weight  # [in, r, kh, kw]
        b = cast(torch.Tensor, self.lora_B[adapter].weight)[:, :, 0, 0]  # [r, out]; a ConvTranspose2d's
        return torch.einsum("irhw,ro->iohw", a, b) * self.scaling[adapter]


def conv_lora_config(r: int, alpha: float, targets: list[str], dropout: float = 0.0) -> LoraConfig:
    """A PEFT LoraConfig whose transposed convolutions use :class:`LoraConvTranspose2d`."""
    cfg = lora_config(r, alpha, targets, dropout)
    cfg._register_custom_module({nn.ConvTranspose2d: LoraConvTranspose2d})
    return cfg


def generator_conv_names(model: nn.Module) -> list[str]:
    """Module names of every (transposed) convolution in ``model.generator``."""
    return [
        n
        for n, m in model.named_modules()
        if n.startswith("generator.") and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]


def add_generator_lora(
    gan: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets: list[str] | None = None
) -> PeftModel:
    """Wrap a GAN with LoRA on its generator's convolutions (``targets``: module names; default all).

    The discriminator is untouched."""
    names = generator_conv_names(gan) if targets is None else targets
    return get_peft_model(gan, conv_lora_config(r, alpha, names, dropout))


def load_image_adapter(gan: nn.Module, path) -> PeftModel:
    """Load a saved generator adapter with PEFT (re-registering the transposed-conv layer)."""
    cfg = LoraConfig.from_pretrained(str(path))
    cfg._register_custom_module({nn.ConvTranspose2d: LoraConvTranspose2d})
    return PeftModel.from_pretrained(gan, str(path), config=cfg)
