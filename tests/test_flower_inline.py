"""Flower's ServerApp and ClientApps in this process (no Ray, no subprocesses): a client that is
lost mid-round or answers with a malformed payload follows ``fl.min_clients`` as in-process (one
log line, the round goes on with the others) instead of stopping the round."""

from __future__ import annotations

import json
import logging
import time

import pytest

from conftest import tiny_raw
from fedgen.config import config_from_dict

pytest.importorskip("flwr")


@pytest.mark.slow  # a tiny run on Flower in process
@pytest.mark.realdata
def test_a_lost_and_a_malformed_flower_client_leave_the_round_to_the_others(shared_root, data_root, caplog):
    from fedgen.deploy.client_app import make_client_app
    from fedgen.deploy.launch import settings_for
    from fedgen.deploy.server_app import make_server_app
    from fedgen.testing.flower_inline import run_inline

    raw = tiny_raw(shared_root, data_root, fraction=1.0, rounds=1, min_clients=1)
    raw["data"]["num_clients"] = 3
    raw["threads"] = 1
    raw["eval"]["max_tokens"] = 2000
    raw["personalize"] = {"enabled": False}
    cfg = config_from_dict(raw)
    spoiled: list[str] = []

    def network(reply):
        """Of the three clients' replies, the first is lost and the second arrives without arrays."""
        if reply.metadata.message_type != "train" or len(spoiled) == 2:
            return reply
        if not spoiled:
            spoiled.append("lost")
            return None
        spoiled.append("malformed")
        del reply.content["arrays"]
        return reply

    rc = settings_for(cfg, shared_root / "inline-faults").to_run_config()
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="fedgen"):
        run_inline(make_server_app(rc), make_client_app(rc), 3, rc, intercept=network)
    print(f"Flower in process, a round with a lost and a malformed client: {time.perf_counter() - t0:.1f} s")

    rows = [json.loads(x) for x in (shared_root / "inline-faults" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows[1]["sampled"]) == 3 and rows[1]["received"] == 1
    assert len(rows[1]["clients"]) == 1 and not rows[1]["skipped"]  # the third client's update counts
    assert (shared_root / "inline-faults" / "summary.json").is_file()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("no reply from client(s)" in x and "the round goes on" in x for x in lines) == 1
    assert sum("malformed reply" in x for x in lines) == 1


def test_wire_bytes_are_what_flower_pushes_for_a_message():
    import torch
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import push_objects
    from flwr.supercore.task_identity import TaskIdentity

    from fedgen.runtime.flower.records import payload_bytes, to_arrays, wire_bytes

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    arrays = to_arrays({"a": torch.zeros(4, 64), "b": torch.ones(64, 4)})
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"round": 1})}), 7, MessageType.TRAIN)
    pushed: list[int] = []
    push_objects(get_all_nested_objects(msg), lambda _, content: pushed.append(len(content)))
    assert wire_bytes(msg) == sum(pushed)  # the object contents a ServerApp pushes to the SuperLink
    assert payload_bytes(arrays) == 2 * (128 + 256 * 4) < wire_bytes(msg) < payload_bytes(arrays) + 2000
