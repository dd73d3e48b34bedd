"""``fedgen data fetch | verify | partition``: the datasets (checksummed) and the client partition."""

from __future__ import annotations

from pathlib import Path

from fedgen.commands.options import config_of
from fedgen.data import cifar10, corpus, corpus_fetch, ptb
from fedgen.experiment.registry import make_task


def cmd_data(args) -> int:
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
        print(make_task(config_of(args)).describe_partition())
    return 0
