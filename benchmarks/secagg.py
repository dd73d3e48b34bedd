"""What SecAgg+ costs on the aggregate: quantization error, bytes and seconds per round.

m clients each hold a change of the adapter's size (Gaussian, std ``--std``, fixed seed) and a
weight n_k. (A) plain FedAvg of the changes (:func:`fedgen.fl.aggregate.fedavg`); (B) one round
of Flower's ``SecAggPlusWorkflow`` with ``secaggplus_mod`` on each ClientApp
(:func:`fedgen.runtime.flower.secagg.secure_round`, the runtime's code), the apps in this
process over Flower's protobuf (:class:`fedgen.testing.flower_inline.InlineGrid`). No training:
only what SecAgg+ adds is timed. Reported: max |B - A|, its bound m * (2c/Q) / sum(n_k / max n),
protobuf bytes per round of (B) against plain messages carrying the same states, and seconds.

    python benchmarks/secagg.py [--params 8192] [--clients 5] [--out benchmarks/results/secagg.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from fedgen.config.schema import SecAggConfig
from fedgen.fl.aggregate import fedavg
from fedgen.runtime.flower.records import to_arrays
from fedgen.runtime.flower.secagg import fitres_reply, read_fitins, secagg_when_asked, secure_round
from fedgen.testing.flower_inline import SUPERLINK, InlineGrid


def client_app(changes: dict[int, dict], sizes: dict[int, int]) -> ClientApp:
    app = ClientApp(mods=[secagg_when_asked])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        k = int(context.node_config["partition-id"])
        if "arrays" in msg.content.array_records:  # plain: the client's new state, as FlowerRuntime.fit
            return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)
        reference = {n: t.float() for n, t in changes[k].items()}
        read_fitins(msg, reference)
        np.random.seed(k)
        return fitres_reply(msg, changes[k], sizes[k], {"client": k, "num-examples": sizes[k]}, None)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=8192, help="adapter parameters (configs/demo.yaml: 8192)")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--std", type=float, default=0.01, help="std of each change's entries")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    m, sa = a.clients, SecAggConfig(enabled=True)
    changes = {k: {"w": torch.randn(a.params, generator=gen, dtype=torch.float64) * a.std} for k in range(m)}
    sizes = {k: 200 + 7 * k for k in range(m)}
    plain = fedavg([changes[k] for k in range(m)], [sizes[k] for k in range(m)])["w"]
    state = {"w": torch.zeros(a.params)}
    nodes = {100 + k: {"partition-id": k} for k in range(m)}
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK
    rows = []
    for _ in range(a.repeats):
        app = client_app(changes, sizes)
        grid = InlineGrid(dict.fromkeys(nodes, app), nodes, {})
        ctx = Context(1, SUPERLINK, {}, RecordDict(), {})
        t0 = time.perf_counter()
        res = secure_round(grid, ctx, state, {n: n - 100 for n in nodes}, 1, sa, max(sizes.values()), None)
        secure_s = time.perf_counter() - t0
        wire_secure = grid.wire_down + grid.wire_up
        grid.wire_down = grid.wire_up = 0
        t0 = time.perf_counter()
        msgs = [
            Message(
                RecordDict({"arrays": to_arrays(state), "config": ConfigRecord({"round": 1})}),
                n,
                MessageType.TRAIN,
            )
            for n in nodes
        ]
        replies = grid.send_and_receive(msgs)
        assert all(isinstance(r.content["arrays"], ArrayRecord) for r in replies)
        plain_s = time.perf_counter() - t0
        diff = float((res.mean_change["w"] - plain).abs().max())
        rows.append((diff, secure_s, plain_s, wire_secure, grid.wire_down + grid.wire_up, res.bytes))
    diff, secure_s, plain_s, wire_secure, wire_plain, nbytes = rows[-1]
    bound = m * (2 * sa.clipping_range / sa.quantization_range) / (sum(sizes.values()) / max(sizes.values()))
    out = {
        "params": a.params,
        "clients": m,
        "change_std": a.std,
        "clipping_range": sa.clipping_range,
        "quantization_range": sa.quantization_range,
        "max_abs_diff_vs_fedavg": diff,
        "bound": bound,
        "wire_bytes_per_round_secagg": wire_secure,
        "wire_bytes_per_round_plain": wire_plain,
        "masked_upload_bytes_per_client": nbytes["secagg_masked_up_bytes"] / m,
        "protocol_bytes_per_round": nbytes["secagg_protocol_bytes"],
        "secagg_seconds_per_round_median": sorted(r[1] for r in rows)[len(rows) // 2],
        "plain_seconds_per_round_median": sorted(r[2] for r in rows)[len(rows) // 2],
    }
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
