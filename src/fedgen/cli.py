"""``fedgen`` command line: run | deploy | compare | reproduce | pretrain | generate | fid | report |
export | data. The parser only: each command's handler lives in :mod:`fedgen.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fedgen.core.errors import FedgenError
from fedgen.deploy.guide import DEPLOY_GUIDE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedgen", description="Federated LoRA fine-tuning of generative models.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config_required=True):
        sp.add_argument("--config", required=config_required, help="YAML config (see configs/)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. fl.rounds=10")
        sp.add_argument("--backbone", help="HF checkpoint dir (overrides model.backbone)")
        sp.add_argument("--data-dir", help="data root (default $FEDGEN_DATA or ./data)")
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (overrides device)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="run a FedGen-Edge experiment")
    common(r, config_required=False)
    r.add_argument("--out", help="run directory (default runs/<name>-<time>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    r.add_argument("--stop-after", type=int, metavar="N", help="stop after round N (resumable)")
    r.add_argument(
        "--runtime",
        choices=["in-process", "flower-sim", "flower-deploy"],
        help="where rounds run (default: the config's runtime:, in-process); see `fedgen deploy --help`",
    )
    r.set_defaults(func="run:cmd_run")

    dp = sub.add_parser(
        "deploy",
        help="run on a Flower deployment (TLS, SuperNode auth): step by step, and key/cert helpers",
        description=DEPLOY_GUIDE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dps = dp.add_subparsers(dest="action", required=True)
    dc = dps.add_parser("certs", help="write a CA and a SuperLink TLS certificate (ca.crt, server.pem/.key)")
    dc.add_argument("--out", required=True)
    dc.add_argument("--host", action="append", required=True, help="SuperLink host name or IP (repeatable)")
    dl = dps.add_parser(
        "local",
        help="run a config on a SuperLink + N SuperNodes started here (127.0.0.1, TLS, node auth)",
    )
    common(dl)
    dl.add_argument("--nodes", type=int, help="SuperNodes to start (default: one per client)")
    dl.add_argument("--out", help="run directory (default runs/<name>-<time>)")
    dk = dps.add_parser("node-key", help="write a SuperNode auth key pair (OpenSSH EC P-384)")
    dk.add_argument("--out", required=True)
    dk.add_argument("--name", required=True)
    dp.set_defaults(func="run:cmd_deploy")

    c = sub.add_parser("compare", help="run every algorithm x seed and tabulate (resumable)")
    common(c)
    c.add_argument("--algorithms", default="all", help="comma-separated names or 'all'")
    c.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    c.add_argument("--out", help="output dir (default runs/compare-<name>)")
    c.set_defaults(func="compare:cmd_compare")

    pt = sub.add_parser(
        "pretrain", help="pre-train the backbone offline (text: public corpus; image: public CIFAR-10 slice)"
    )
    common(pt)
    pt.add_argument("--task", help="check that the config is for this task (text, image, ...)")
    pt.add_argument("--out", help="checkpoint dir (default: the cache slot model.backbone=auto uses)")
    pt.add_argument("--force", action="store_true")
    pt.set_defaults(func="model:cmd_pretrain")

    g = sub.add_parser(
        "generate", help="sample text (or an image grid) from a run's global or personalized model"
    )
    g.add_argument("--run", required=True)
    g.add_argument("--client", type=int, help="use this client's personalized adapter")
    g.add_argument("--prompt", default="the")
    g.add_argument("--max-tokens", type=int, default=40)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num", type=int, default=1, help="number of samples (image runs: per class)")
    g.add_argument("--out", help="image runs: PNG path (default RUN/samples/generate-*.png)")
    g.set_defaults(func="model:cmd_generate")

    rp = sub.add_parser(
        "report", help="rewrite a finished run's report, or a suite's (dir of compare outputs)"
    )
    rp.add_argument(
        "--run", required=True, help="run dir, compare dir, or suite dir (fedgen reproduce --out)"
    )
    rp.add_argument(
        "--publish",
        metavar="OUT",
        help="suites: also copy the report, its figures and the run outputs it reads (no adapters) to OUT",
    )
    rp.add_argument(
        "--replace",
        action="store_true",
        help="with --publish: move an earlier publication at OUT aside (OUT.old-N) instead of refusing",
    )
    rp.set_defaults(func="report:cmd_report")

    fd = sub.add_parser("fid", help="Inception FID/KID of a finished image run's saved generators")
    fd.add_argument("run_dir")
    fd.add_argument("--n", type=int, help="samples per model set (default: the run's image.fid_samples)")
    fd.add_argument("--quiet", action="store_true", help="no progress bars")
    fd.set_defaults(func="model:cmd_fid")

    ex = sub.add_parser(
        "export", help="merge a run's global (or a client's personalized) model into a plain checkpoint"
    )
    ex.add_argument("--run", required=True)
    ex.add_argument("--client", type=int, help="export this client's personalized model")
    ex.add_argument("out", help="output directory (new or empty)")
    ex.set_defaults(func="export:cmd_export")

    rr = sub.add_parser("reproduce", help="the paper's experiments as one resumable suite, then its report")
    rr.add_argument("--suite", choices=["cpu", "paper"], required=True)
    rr.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    rr.add_argument("--dry-run", action="store_true", help="print the run plan, run nothing")
    rr.add_argument("--out", help="suite dir (default runs/reproduce-<suite>)")
    rr.add_argument("--tasks", help="comma-separated subset of text,image (default both)")
    rr.add_argument("--only", help="comma-separated subset of main,rank,epochs (default all)")
    rr.add_argument(
        "--algorithms", default="all", help="main comparison's algorithms, comma-separated or 'all'"
    )
    rr.add_argument("--text-config", help="replace the suite's text config")
    rr.add_argument("--image-config", help="replace the suite's image config")
    rr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override in every config")
    rr.add_argument("--data-dir", help="data root (default $FEDGEN_DATA or ./data)")
    rr.add_argument("--quiet", action="store_true", help="no progress bars")
    rr.set_defaults(func="reproduce:cmd_reproduce")

    d = sub.add_parser("data", help="fetch / verify datasets, show partitions")
    dsub = d.add_subparsers(dest="action", required=True)
    f = dsub.add_parser("fetch", help="download the canonical files (checksummed)")
    f.add_argument("dataset", choices=["ptb", "pretrain", "cifar10"])
    f.add_argument("--dir", help="data root (default $FEDGEN_DATA or ./data)")
    f.add_argument("--url", help="base URL (ptb, pretrain) or archive URL (cifar10) to download from")
    f.add_argument("--force", action="store_true")
    v = dsub.add_parser("verify", help="check the local files' checksums")
    v.add_argument("--dir")
    v.add_argument("--what", choices=["ptb", "pretrain", "cifar10", "all"], default="ptb")
    pa = dsub.add_parser("partition", help="build (cached) and describe the client partition")
    common(pa, config_required=False)
    d.set_defaults(func="data:cmd_data")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _, name = args.func.partition(":")
    try:
        # the command's module is imported only now: `fedgen --help` and one command's start-up
        # do not pay for every command's dependencies (torch, transformers, Flower)
        handler = getattr(importlib.import_module(f"fedgen.commands.{module}"), name)
        return handler(args)
    except FedgenError as e:
        print(f"fedgen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nfedgen: interrupted; a started run continues with `fedgen run --resume RUN_DIR`",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
