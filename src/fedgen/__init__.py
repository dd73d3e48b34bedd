"""FedGen-Edge: federated LoRA fine-tuning of frozen generative backbones."""

import warnings as _warnings

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
