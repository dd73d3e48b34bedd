"""``fedgen`` command line: run | compare | reproduce | pretrain | generate | fid | report | export | data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fedgen.errors import FedgenError


def _overrides(args) -> list[str]:
    overrides = list(args.set or [])
    if getattr(args, "backbone", None):
        overrides.append(f"model.backbone={args.backbone}")
    if getattr(args, "device", None):
        overrides.append(f"device={args.device}")
    if getattr(args, "data_dir", None):
        overrides.append(f"data.dir={args.data_dir}")
    return overrides


def _load(args) -> object:
    from fedgen.config import load_config

    return load_config(args.config, _overrides(args))


def _result_table(summary: dict) -> str:
    from fedgen.registry import task_class

    return task_class(summary.get("task", "text")).report.result_table(summary)


def cmd_run(args) -> int:
    from fedgen.run import run_experiment

    if args.resume and not args.config and _overrides(args):
        from fedgen.run import resume_config

        args.config = str(Path(args.resume) / "config.yaml")  # checked: only safe changes, recorded
        resume_config(args.resume, _overrides(args))
    if getattr(args, "runtime", None):
        args.set = [*(args.set or []), f"runtime={args.runtime}"]
    cfg = _load(args) if (args.config or not args.resume) else None
    runtime = args.runtime or (cfg.runtime if cfg is not None else _saved_runtime(args.resume))
    if runtime != "in-process":
        from fedgen.runtime.flower.launch import run_on_flower

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
    from fedgen.config import load_config

    path = Path(run_dir) / "config.yaml"
    return load_config(path).runtime if path.is_file() else "in-process"


def cmd_deploy(args) -> int:
    from fedgen.runtime.flower import pki

    out = Path(args.out)
    if args.action == "certs":
        paths = pki.make_tls(out, args.host)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    elif args.action == "node-key":
        private, public = pki.make_node_key(out, args.name)
        print(f"private: {private}\npublic:  {public}  (flwr supernode register {public} CONNECTION)")
    return 0


def cmd_compare(args) -> int:
    from fedgen.compare import compare
    from fedgen.registry import algorithm_names

    cfg = _load(args)
    known = algorithm_names()
    algs = known if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    unknown = [a for a in algs if a not in known]
    if unknown:
        raise FedgenError(f"unknown algorithm(s) {unknown}; choose from {', '.join(known)} or 'all'")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise FedgenError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    out = args.out or str(Path(cfg.output.root) / f"compare-{cfg.name}")
    result = compare(cfg, algs, seeds, out, progress=not args.quiet)
    print()
    print(result["markdown"])
    print(f"\nwritten: {out}/compare.json, {out}/compare.md")
    return 0


def cmd_pretrain(args) -> int:
    from fedgen.registry import make_task

    cfg = _load(args)
    if args.task and args.task != cfg.task:
        raise FedgenError(f"--task {args.task}: the config is for the {cfg.task} task (set task: in it)")
    task = make_task(cfg)
    out = Path(args.out) if args.out else task.backbone_path()
    if task.backbone_ready(out) and not args.force:
        print(f"backbone already exists: {out} (use --force to retrain)")
        return 0
    task.pretrain(out, progress=not args.quiet)
    return 0


def cmd_generate(args) -> int:
    from fedgen.config import load_config
    from fedgen.experiment import Experiment
    from fedgen.run import saved_model_state

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise FedgenError(f"{run} is not a run directory (no config.yaml)")
    exp = Experiment.build(load_config(run / "config.yaml"), progress=False)
    exp.params.load(saved_model_state(exp, run, args.client))
    who = "global" if args.client is None else f"client_{args.client:03d}"
    print(exp.task.generate(exp, run, who, args))
    return 0


def cmd_export(args) -> int:
    from fedgen.export import export

    out = export(args.run, args.out, args.client)
    print(f"exported to {out} (see {out}/fedgen_export.json)")
    return 0


def cmd_fid(args) -> int:
    from fedgen.run import recompute_fid

    table, written = recompute_fid(args.run_dir, args.n, progress=not args.quiet)
    print(table)
    print(f"\nwritten: {', '.join(written)}")
    return 0


def cmd_report(args) -> int:
    from fedgen.registry import task_class
    from fedgen.report.parts import is_suite
    from fedgen.rundir import RunDir

    rd = RunDir(Path(args.run))
    if not (rd.path / "summary.json").is_file() and is_suite(rd.path):
        from fedgen.report.publish import publish_suite
        from fedgen.report.suite import write_suite_report

        print(
            publish_suite(rd.path, args.publish, replace=args.replace)
            if args.publish
            else write_suite_report(rd.path)
        )
        return 0
    if args.publish:
        raise FedgenError(f"--publish: {rd.path} is not a suite or compare dir")
    if not (rd.path / "summary.json").is_file():
        raise FedgenError(f"{rd.path} has no summary.json (is the run finished? resume it with --resume)")
    summary = json.loads((rd.path / "summary.json").read_text())
    pers_file = rd.path / "personalization.json"
    pers = json.loads(pers_file.read_text()) if pers_file.is_file() else None
    report = task_class(summary.get("task", "text")).report
    print(report.write_report(rd.path, summary, rd.read_metrics(), pers))
    print(report.result_table(summary))
    return 0


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise FedgenError(f"--seeds: expected comma-separated integers, got {text!r}") from None


def cmd_reproduce(args) -> int:
    from fedgen.config import load_config
    from fedgen.registry import algorithm_names
    from fedgen.reproduce import KINDS, SUITES, config_path, describe, extra_configs, plan, run_suite

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(SUITES[args.suite])
    kinds = tuple(k.strip() for k in args.only.split(",")) if args.only else KINDS
    if set(tasks) - set(SUITES[args.suite]) or set(kinds) - set(KINDS):
        raise FedgenError(
            f"--tasks: choose from {', '.join(SUITES[args.suite])}; --only: from {', '.join(KINDS)}"
        )
    given = {"text": args.text_config, "image": args.image_config}
    configs = {t: load_config(given[t] or config_path(SUITES[args.suite][t]), overrides) for t in tasks}
    known = algorithm_names()
    algs = known if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    if set(algs) - set(known):
        raise FedgenError(
            f"unknown algorithm(s) {sorted(set(algs) - set(known))}; choose from {', '.join(known)}"
        )
    extras = extra_configs(args.suite, overrides, tasks)
    parts = plan(configs=configs, algorithms=algs, kinds=kinds, extras=extras)
    seeds = _seeds(args.seeds)
    if args.dry_run:
        print(describe(parts, seeds))
        return 0
    out = args.out or str(Path(next(iter(configs.values())).output.root) / f"reproduce-{args.suite}")
    command = "fedgen " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"] else None
    report = run_suite(parts, seeds, out, progress=not args.quiet, command=command)
    print(f"\nsuite report: {report}")
    return 0


def cmd_data(args) -> int:
    from fedgen.data import cifar10, corpus, corpus_fetch, ptb

    if args.action == "fetch":
        if args.dataset == "ptb":
            paths = ptb.fetch_ptb(args.dir, base_url=args.url or ptb.PTB_URL, force=args.force)
            print(f"PTB ready in {Path(next(iter(paths.values()))).parent}")
        elif args.dataset == "cifar10":
            folder = cifar10.fetch_cifar10(args.dir, url=args.url or cifar10.CIFAR10_URL, force=args.force)
            print(f"CIFAR-10 ready in {folder}")
        else:
            folder = corpus_fetch.fetch_pretrain(args.dir, base_url=args.url, force=args.force)
            print(f"pre-training corpus ready in {folder}")
    elif args.action == "verify":
        if args.what in ("ptb", "all"):
            paths = ptb.verify_ptb(args.dir)
            print(f"PTB OK ({len(paths)} files in {ptb.data_root(args.dir) / 'ptb'})")
        if args.what in ("pretrain", "all"):
            files = corpus.pretrain_files(args.dir, verify=True)
            print(f"pre-training corpus OK ({sum(len(v) for v in files.values())} files)")
        if args.what in ("cifar10", "all"):
            paths = cifar10.verify_cifar10(args.dir)
            print(f"CIFAR-10 OK ({len(paths)} files in {ptb.data_root(args.dir) / 'cifar10'})")
    elif args.action == "partition":
        from fedgen.registry import make_task

        print(make_task(_load(args)).describe_partition())
    return 0


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
    r.set_defaults(func=cmd_run)

    from fedgen.runtime.flower.guide import DEPLOY_GUIDE

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
    dk = dps.add_parser("node-key", help="write a SuperNode auth key pair (OpenSSH EC P-384)")
    dk.add_argument("--out", required=True)
    dk.add_argument("--name", required=True)
    dp.set_defaults(func=cmd_deploy)

    c = sub.add_parser("compare", help="run every algorithm x seed and tabulate (resumable)")
    common(c)
    c.add_argument("--algorithms", default="all", help="comma-separated names or 'all'")
    c.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    c.add_argument("--out", help="output dir (default runs/compare-<name>)")
    c.set_defaults(func=cmd_compare)

    pt = sub.add_parser(
        "pretrain", help="pre-train the backbone offline (text: public corpus; image: public CIFAR-10 slice)"
    )
    common(pt)
    pt.add_argument("--task", help="check that the config is for this task (text, image, ...)")
    pt.add_argument("--out", help="checkpoint dir (default: the cache slot model.backbone=auto uses)")
    pt.add_argument("--force", action="store_true")
    pt.set_defaults(func=cmd_pretrain)

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
    g.set_defaults(func=cmd_generate)

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
    rp.set_defaults(func=cmd_report)

    fd = sub.add_parser("fid", help="Inception FID/KID of a finished image run's saved generators")
    fd.add_argument("run_dir")
    fd.add_argument("--n", type=int, help="samples per model set (default: the run's image.fid_samples)")
    fd.add_argument("--quiet", action="store_true", help="no progress bars")
    fd.set_defaults(func=cmd_fid)

    ex = sub.add_parser(
        "export", help="merge a run's global (or a client's personalized) model into a plain checkpoint"
    )
    ex.add_argument("--run", required=True)
    ex.add_argument("--client", type=int, help="export this client's personalized model")
    ex.add_argument("out", help="output directory (new or empty)")
    ex.set_defaults(func=cmd_export)

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
    rr.set_defaults(func=cmd_reproduce)

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
    d.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
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
