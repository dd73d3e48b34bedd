"""The ClientApp: one SuperNode serves the partition(s) named in its ``node_config``.

* ``partition-id=K`` (deployment: ``flower-supernode --node-config partition-id=K``; the
  simulation engine sets it for each virtual node), or ``partition-ids="0,5,7"`` for several.
* ``store-dir`` (optional): where this node keeps its clients' states between rounds
  (default ``$FLWR_HOME/fedgen-store`` or ``~/.flwr/fedgen-store``), one sub-directory per run.

``train`` builds the experiment from the run's config (once per process), then calls the
algorithm's ``ClientLogic.fit(state, data, seed)`` with ``seed = derive_seed(seed, "fit", round, k)``,
exactly as :class:`~fedgen.runtime.simulate.InProcessRuntime` does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedgen.fl.client import derive_seed
from fedgen.runtime.flower.config import experiment_for, run_settings
from fedgen.runtime.flower.records import from_arrays, to_arrays, to_metrics
from fedgen.runtime.store import ClientStore


def partitions(node_config: dict) -> list[int]:
    """The partition ids a node serves, from its ``node_config``."""
    if "partition-ids" in node_config:
        return sorted(int(x) for x in str(node_config["partition-ids"]).replace(" ", "").split(",") if x)
    if "partition-id" in node_config:
        return [int(node_config["partition-id"])]
    raise ValueError("this SuperNode has no partition: start it with --node-config partition-id=K")


def store_for(node_config: dict, run_key: str) -> ClientStore:
    """This node's client store for one run (``run_key``: the run directory's identity)."""
    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    root = Path(str(node_config.get("store-dir", home / "fedgen-store")))
    return ClientStore(root / hashlib.sha256(run_key.encode()).hexdigest()[:16])


def make_client_app(default_run_config: dict | None = None) -> ClientApp:
    """A ClientApp; ``default_run_config`` stands in for a missing ``context.run_config`` (simulation)."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        ids = partitions(dict(context.node_config))
        return Message(RecordDict({"config": ConfigRecord({"partition-ids": ids})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings = run_settings(context.run_config, default_run_config)
        cfg = msg.content["config"]
        k, rnd = int(cfg["client"]), int(cfg["round"])
        if k not in partitions(dict(context.node_config)):
            raise ValueError(f"client {k} is not served by this node")
        exp, logic = experiment_for(settings)
        store = store_for(dict(context.node_config), settings.run_key)
        logic.kept = store
        store.begin_round(rnd)
        state = from_arrays(msg.content["arrays"])
        res = logic.fit(state, exp.data[k], derive_seed(exp.cfg.seed, "fit", rnd, k))
        store.end_round()
        metrics = to_metrics({**res.metrics, "client": k, "num-examples": res.num_examples})
        content = RecordDict({"arrays": to_arrays(res.state), "metrics": metrics})
        if k in store:  # evaluation mirror of the kept state (see fedgen.runtime.flower.runtime)
            content["kept"] = to_arrays(store[k])
        return Message(content, reply_to=msg)

    return app


app = make_client_app()
