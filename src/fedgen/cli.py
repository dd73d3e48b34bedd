"""``fedgen`` command line: run | compare | pretrain | generate | report | data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fedgen.errors import FedgenError


def _load(args) -> object:
    from fedgen.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "backbone", None):
        overrides.append(f"model.backbone={args.backbone}")
    if getattr(args, "data_dir", None):
        overrides.append(f"data.dir={args.data_dir}")
    return load_config(args.config, overrides)


def _result_table(summary: dict) -> str:
    if summary.get("task") == "image":
        from fedgen.report.image import result_table
    else:
        from fedgen.report.text import result_table
    return result_table(summary)


def cmd_run(args) -> int:
    from fedgen.run import run_experiment

    if args.resume:
        cfg = _load(args) if args.config else None
        summary = run_experiment(
            cfg, args.resume, resume=True, stop_after=args.stop_after, progress=not args.quiet
        )
    else:
        summary = run_experiment(_load(args), args.out, stop_after=args.stop_after, progress=not args.quiet)
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


def cmd_compare(args) -> int:
    from fedgen.compare import ORDER, compare

    cfg = _load(args)
    algs = ORDER if args.algorithms == "all" else [a.strip() for a in args.algorithms.split(",")]
    unknown = [a for a in algs if a not in ORDER]
    if unknown:
        raise FedgenError(f"unknown algorithm(s) {unknown}; choose from {', '.join(ORDER)} or 'all'")
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
    from fedgen.pretrain import pretrain_backbone
    from fedgen.run import backbone_path

    cfg = _load(args)
    if args.task and args.task != cfg.task:
        raise FedgenError(f"--task {args.task}: the config is for the {cfg.task} task (set task: in it)")
    if cfg.task == "image":
        from fedgen.image_run import gan_backbone_path, pretrain_gan

        default, marker, pretrain, what = gan_backbone_path, "fedgen_gan.json", pretrain_gan, "GAN backbone"
    else:
        default, marker, pretrain, what = backbone_path, "config.json", pretrain_backbone, "backbone"
    out = Path(args.out) if args.out else default(cfg)
    if (out / marker).is_file() and not args.force:
        print(f"{what} already exists: {out} (use --force to retrain)")
        return 0
    pretrain(cfg, out, progress=not args.quiet)
    return 0


def cmd_generate(args) -> int:
    from fedgen.config import load_config
    from fedgen.run import Experiment, saved_model_state

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise FedgenError(f"{run} is not a run directory (no config.yaml)")
    exp = Experiment.build(load_config(run / "config.yaml"), progress=False)
    exp.params.load(saved_model_state(exp, run, args.client))
    if exp.cfg.task == "image":
        import torch

        from fedgen.image_run import save_grid

        classes = exp.task.num_classes
        labels = torch.arange(classes).repeat_interleave(args.num)
        who = "global" if args.client is None else f"client_{args.client:03d}"
        out = Path(args.out) if args.out else run / "samples" / f"generate-{who}-seed{args.seed}.png"
        save_grid(exp.task.generate(exp.params.model, labels, seed=args.seed), out, rows=classes)
        print(f"{classes} classes x {args.num} samples written to {out}")
        return 0
    for i in range(args.num):
        text = exp.task.sample(
            exp.params.model,
            args.prompt,
            max_new_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k or None,
            seed=args.seed + i,
        )
        print(text)
    return 0


def cmd_report(args) -> int:
    from fedgen.run import RunDir

    rd = RunDir(Path(args.run))
    if not (rd.path / "summary.json").is_file():
        raise FedgenError(f"{rd.path} has no summary.json (is the run finished? resume it with --resume)")
    summary = json.loads((rd.path / "summary.json").read_text())
    pers_file = rd.path / "personalization.json"
    pers = json.loads(pers_file.read_text()) if pers_file.is_file() else None
    if summary.get("task") == "image":
        from fedgen.report.image import write_report
    else:
        from fedgen.report.text import write_report
    print(write_report(rd.path, summary, rd.read_metrics(), pers))
    print(_result_table(summary))
    return 0


def cmd_data(args) -> int:
    from fedgen.data import cifar10, corpus, ptb

    if args.action == "fetch":
        if args.dataset == "ptb":
            paths = ptb.fetch_ptb(args.dir, base_url=args.url or ptb.PTB_URL, force=args.force)
            print(f"PTB ready in {Path(next(iter(paths.values()))).parent}")
        elif args.dataset == "cifar10":
            folder = cifar10.fetch_cifar10(args.dir, url=args.url or cifar10.CIFAR10_URL, force=args.force)
            print(f"CIFAR-10 ready in {folder}")
        else:
            folder = corpus.fetch_pretrain(args.dir, base_url=args.url, force=args.force)
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
        from fedgen.run import load_partition

        cfg = _load(args)
        if cfg.task == "image":
            from fedgen.image_run import load_image_partition, splits

            data = cifar10.load_cifar10(cfg.data.dir)
            part = load_image_partition(cfg, data.train_y[splits(cfg, data)[1]])
            print(json.dumps(part.stats["summary"], indent=2))
            return 0
        _, part = load_partition(cfg, ptb.load_ptb(cfg.data.dir))
        s = part.stats["summary"]
        print(json.dumps(s, indent=2))
        for t, words in enumerate(part.topic_words):
            print(f"topic {t:2d} ({s['topic_sizes'].get(str(t), 0):4d} docs): {' '.join(words)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedgen", description="Federated LoRA fine-tuning of generative models.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config_required=True):
        sp.add_argument("--config", required=config_required, help="YAML config (see configs/)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. fl.rounds=10")
        sp.add_argument("--backbone", help="HF checkpoint dir (overrides model.backbone)")
        sp.add_argument("--data-dir", help="data root (default $FEDGEN_DATA or ./data)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="run a FedGen-Edge experiment")
    common(r, config_required=False)
    r.add_argument("--out", help="run directory (default runs/<name>-<time>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    r.add_argument("--stop-after", type=int, metavar="N", help="stop after round N (resumable)")
    r.set_defaults(func=cmd_run)

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
    pt.add_argument("--task", choices=["text", "image"], help="check that the config is for this task")
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

    rp = sub.add_parser("report", help="rewrite and print a finished run's report")
    rp.add_argument("--run", required=True)
    rp.set_defaults(func=cmd_report)

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
