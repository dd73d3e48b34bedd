"""Tiny real-data configs for tests and benchmarks (``tests/conftest.py``, ``benchmarks/``)."""

from __future__ import annotations

from pathlib import Path


def tiny_text_raw(
    root: Path, data_dir: str | Path, threads: int = 2, personalize: bool = False, **fl
) -> dict:
    """A real-PTB experiment small enough for CI: 8 clients, 1-layer d=64 backbone.

    Plumbing-sized: the client-test figures are computed at round 0 and after the last round only,
    and the personalization step (3 more client-epochs per client, ~60% of a tiny run) runs only
    when asked (``personalize=True``: the validated recipe with a 2-point grid). ``fl`` updates
    the ``fl`` section.
    """
    pers = {"lr_multipliers": [1.0, 0.3], "max_epochs": 1} if personalize else {"enabled": False}
    return {
        "name": "tiny",
        "seed": 0,
        "threads": threads,
        "data": {
            "dir": str(data_dir),
            "num_clients": 8,
            "max_docs": 120,
            "num_topics": 4,
            "lda_max_iter": 5,
        },
        "model": {"n_layer": 1, "n_embd": 64, "n_head": 2, "context": 32},
        "lora": {"r": 4, "alpha": 8},
        "pretrain": {
            "steps": 120,
            "batch_size": 32,
            "lr": 0.003,
            "warmup_steps": 10,
            "sources": ["us-presidential-addresses"],
        },
        "fl": {"rounds": 2, "fraction": 0.5, "local_epochs": 1, "batch_size": 16, "lr": 0.01, **fl},
        "eval": {"max_tokens": 1500, "local_every": 1000},
        "personalize": pers,
        "output": {"root": str(root), "keep_checkpoints": 2},
    }
