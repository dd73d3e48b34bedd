"""``fedgen run`` (in-process or on Flower) and ``fedgen deploy`` (certificates and node keys)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from fedgen.commands.options import config_of, overrides_of
from fedgen.config import load_config
from fedgen.core.errors import FedgenError
from fedgen.experiment.registry import report_of
from fedgen.experiment.run import resume_config, run_experiment


def _result_table(summary: dict) -> str:
    return report_of(summary).result_table(summary)


def cmd_run(args) -> int:
    if args.resume and not args.config and overrides_of(args):
        args.config = str(Path(args.resume) / "config.yaml")  # checked: only safe changes, recorded
        resume_config(args.resume, overrides_of(args))
    if getattr(args, "runtime", None):
        args.set = [*(args.set or []), f"runtime={args.runtime}"]
    cfg = config_of(args) if (args.config or not args.resume) else None
    runtime = args.runtime or (cfg.runtime if cfg is not None else _saved_runtime(args.resume))
    if runtime != "in-process":
        from fedgen.deploy.launch import run_on_flower  # lazy: Flower is imported only when used

        summary = run_on_flower(cfg, args.out, args.resume, args.stop_after, runtime)
    elif args.resume:
        summary = run_experiment(
            cfg, args.resume, resume=True, stop_after=args.stop_after, progress=not args.quiet
        )
    else:
        summary = run_experiment(cfg, args.out, stop_after=args.stop_after, progress=not args.quiet)
    if "stopped_after_round" in summary:
        print(
            f"stopped after round {summary['stopped_after_round']}; continue with: "
            f"fedgen run --resume {summary['run_dir']}"
        )
        return 0
    print()
    print(_result_table(summary))
    print(f"\nrun dir: {summary['run_dir']}  (report.md, summary.json, metrics.jsonl, adapters)")
    return 0


def _saved_runtime(run_dir: str) -> str:
    path = Path(run_dir) / "config.yaml"
    return load_config(path).runtime if path.is_file() else "in-process"


def cmd_deploy(args) -> int:
    from fedgen.runtime.flower import pki  # lazy: ``cryptography`` only for this command

    if args.action == "local":
        return _deploy_local(args)
    out = Path(args.out)
    if args.action == "certs":
        paths = pki.make_tls(out, args.host)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    elif args.action == "node-key":
        private, public = pki.make_node_key(out, args.name)
        print(f"private: {private}\npublic:  {public}  (flwr supernode register {public} CONNECTION)")
    return 0


def _deploy_local(args) -> int:
    """``fedgen deploy local``: a SuperLink and N SuperNodes on 127.0.0.1 with TLS and SuperNode
    authentication, the config's run on them (``flwr run``), its result table; every process is
    stopped when the run ends, fails or is interrupted (Ctrl-C)."""
    # lazy: Flower and ``cryptography`` only for this command
    from fedgen.deploy.launch import run_on_flower
    from fedgen.deploy.local import CONNECTION, Loopback

    args.set = [*(args.set or []), "runtime=flower-deploy"]
    cfg = config_of(args)
    nodes = args.nodes or cfg.data.num_clients
    if not 1 <= nodes <= cfg.data.num_clients:
        raise FedgenError(f"--nodes: between 1 and data.num_clients={cfg.data.num_clients}, got {nodes}")
    with tempfile.TemporaryDirectory(prefix="fedgen-deploy-local-") as root:
        print(f"SuperLink + {nodes} SuperNodes on 127.0.0.1 (TLS, SuperNode auth), logs in {root}")
        with Loopback(Path(root), nodes, num_partitions=cfg.data.num_clients) as fed:
            try:
                summary = run_on_flower(
                    cfg, args.out, None, None, "flower-deploy", superlink=CONNECTION, env=fed.env
                )
            except FedgenError:
                for name in ["superlink", *(f"supernode{i}" for i in range(nodes))]:
                    print(f"--- {name} log (last lines) ---\n{fed.log(name)[-1500:]}", file=sys.stderr)
                raise
    print()
    print(_result_table(summary))
    print(f"\nrun dir: {summary['run_dir']}  (report.md, summary.json, metrics.jsonl, adapters)")
    return 0
