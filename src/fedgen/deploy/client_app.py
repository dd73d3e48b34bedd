"""The ClientApp: one SuperNode serves the partition(s) named in its ``node_config``.

* ``partition-id=K`` (deployment: ``flower-supernode --node-config partition-id=K``; the
  simulation engine sets it for each virtual node), or ``partition-ids="0,5,7"`` for several.
* ``store-dir`` (optional): where this node keeps its clients' states between rounds
  (default ``$FLWR_HOME/fedgen-store`` or ``~/.flwr/fedgen-store``), one sub-directory per run.

``train`` builds the experiment from the run's config (once per process), then calls the
algorithm's ``ClientLogic.fit(state, data, seed)`` with ``seed = derive_seed(seed, "fit", round, k)``,
exactly as :class:`~fedgen.runtime.simulate.InProcessRuntime` does, and prepares its upload as
the in-process clients do (:func:`fedgen.fl.server.client_update`: DP clipping). In a SecAgg+
round (``flower.secagg``) Flower's ``secaggplus_mod`` carries the protocol and ``train`` answers
with the checked change from the global state (:mod:`fedgen.runtime.flower.secagg`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedgen.core.seeding import derive_seed
from fedgen.deploy.run_config import experiment_for, run_settings
from fedgen.experiment.loop import round_policy
from fedgen.fl.server import client_update
from fedgen.runtime.flower.records import from_arrays, to_arrays, to_metrics
from fedgen.runtime.flower.secagg import fitres_reply, is_secure, read_fitins, secagg_when_asked
from fedgen.runtime.store import ClientStore


def partitions(node_config: dict) -> list[int]:
    """The partition ids a node serves, from its ``node_config``."""
    if "partition-ids" in node_config:
        return sorted(int(x) for x in str(node_config["partition-ids"]).replace(" ", "").split(",") if x)
    if "partition-id" in node_config:
        return [int(node_config["partition-id"])]
    raise ValueError("this SuperNode has no partition: start it with --node-config partition-id=K")


def store_for(node_config: dict, run_key: str, run_id: str | None = None) -> ClientStore:
    """This node's client store for one run (``run_key``: the run's identity, its run id); with
    ``run_id`` every state is tagged with it and a state of another run is refused."""
    home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    root = Path(str(node_config.get("store-dir", home / "fedgen-store")))
    return ClientStore(root / hashlib.sha256(run_key.encode()).hexdigest()[:16], run_id)


def make_client_app(default_run_config: dict | None = None) -> ClientApp:
    """A ClientApp; ``default_run_config`` stands in for a missing ``context.run_config`` (simulation)."""
    app = ClientApp(mods=[secagg_when_asked])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        ids = partitions(dict(context.node_config))
        return Message(RecordDict({"config": ConfigRecord({"partition-ids": ids})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings = run_settings(context.run_config, default_run_config)
        exp, logic = experiment_for(settings)
        secure = is_secure(msg)
        if secure:
            state, rnd, k = read_fitins(msg, logic.server_part(exp.init))
        else:
            cfg: Mapping[str, Any] = msg.content["config"]
            k, rnd = int(cfg["client"]), int(cfg["round"])
            state = from_arrays(msg.content.array_records["arrays"])
        if k not in partitions(dict(context.node_config)):
            raise ValueError(f"client {k} is not served by this node")
        store = store_for(dict(context.node_config), settings.run_key, settings.run_id or None)
        logic.kept = store
        store.begin_round(rnd)
        res = logic.fit(state, exp.data[k], derive_seed(exp.cfg.seed, "fit", rnd, k))
        store.end_round()
        policy = round_policy(exp)
        upload, reason = client_update(res, state, rnd, policy, secure)
        if secure:
            # secaggplus_mod rounds stochastically with numpy's global generator: seeded, reproducible
            np.random.seed(derive_seed(exp.cfg.seed, "secagg", rnd, k) % 2**32)
            sent = upload.state if upload is not None else state
            change = {key: sent[key].double() - state[key].double() for key in state}
            weight = 1 if policy.dp is not None else res.num_examples
            metrics = {**res.metrics, "client": k, "num-examples": res.num_examples}
            return fitres_reply(msg, change, weight, metrics, reason)
        assert upload is not None  # only a secure round withholds an update
        res = upload
        record = to_metrics({**res.metrics, "client": k, "num-examples": res.num_examples})
        content = RecordDict({"arrays": to_arrays(res.state), "metrics": record})
        if k in store:  # evaluation mirror of the kept state (see fedgen.runtime.flower.runtime)
            content["kept"] = to_arrays(store[k])
        return Message(content, reply_to=msg)

    return app


app = make_client_app()
