"""FedGen-Edge: federated LoRA fine-tuning of frozen generative backbones."""

import os as _os
import warnings as _warnings

# OpenMP threads that spin-wait collapse (10-40x slower) when another process shares the
# cores, as on small CI machines. Passive waiting costs little when the machine is idle.
# Takes effect only if set before torch is first imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# Third-party chatter that says nothing to our users (transformers' deprecation notes
# triggered inside PEFT, weight-loading progress bars).
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers is a hard dependency
        pass
