"""Command line: `absld train`, `absld eval`, `absld study`.

    absld train --config presets/train/teacher.yaml --set optim.epochs=5 --set method.eta=0.2
    absld eval --checkpoint runs/x/fair_best.pt --dataset digits --attacks clean,fgsm,pgd20,cw,aa
    absld study --preset smoke
"""
from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    from .config import load_config
    from .engine import train

    cfg = load_config(args.config, args.set)
    if args.resume:
        cfg = cfg.replace(resume=True)
    if args.overwrite:
        cfg = cfg.replace(overwrite=True)
    run = train(cfg)
    print(run)
    return 0


def _eval(args) -> int:
    import torch

    from .data import load_dataset
    from .evaluate import evaluate, format_table, save_table
    from .models import model_from_checkpoint

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    ds = load_dataset(args.dataset, args.root)
    model, meta = model_from_checkpoint(args.checkpoint, args.device, defaults={"num_classes": ds.num_classes},
                                        arch=args.model, num_classes=args.num_classes, width=args.width,
                                        depth=args.depth)
    if int(meta["num_classes"]) != ds.num_classes:
        raise ValueError(f"checkpoint {args.checkpoint} predicts {meta['num_classes']} classes but "
                         f"{args.dataset} has {ds.num_classes}")
    x, y = (ds.test_subset(args.per_class) if args.per_class else (ds.test_x, ds.test_y))
    aa_opts = {"n_iter": args.aa_iters} if args.aa_iters else {}
    df = evaluate(model, x, y, attacks, classes=ds.classes, eps=args.eps_255 / 255, pgd_alpha=args.alpha,
                  device=torch.device(args.device), batch_size=args.batch_size, aa_opts=aa_opts)
    print(format_table(df))
    if args.out:
        save_table(df, args.out)
        print(f"saved {args.out}")
    return 0


def _study(args) -> int:
    from .study import run_study

    return run_study(args.preset, overrides=args.set, force=args.force, out_root=args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="absld", description="Adversarial robust fairness: ABSLD, RSLAD, HAM")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run from a YAML config")
    t.add_argument("--config", required=True, help="YAML/JSON training config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. optim.lr=0.05 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start again, deleting the run directory")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="class-wise accuracy and robustness of a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", required=True, help="cifar10, cifar100, svhn, imagefolder, digits, synthetic")
    e.add_argument("--root", default=None, help="dataset folder or archive")
    e.add_argument("--attacks", default="clean,fgsm,pgd20,cw30", help="comma list: clean,fgsm,pgdN,cwN,aa,aa:apgd-ce+...")
    e.add_argument("--eps-255", type=float, default=8.0, help="L-inf radius in units of 1/255 (default 8)")
    e.add_argument("--alpha", type=float, default=0.003, help="PGD/CW step size in [0,1] units (default 0.003)")
    e.add_argument("--per-class", type=int, default=None, help="evaluate on a class-balanced test subset")
    e.add_argument("--aa-iters", type=int, default=None, help="AutoAttack iterations (fewer for CPU runs)")
    e.add_argument("--model", default=None, help="architecture, for checkpoints that do not record it")
    e.add_argument("--num-classes", type=int, default=None)
    e.add_argument("--width", type=int, default=None)
    e.add_argument("--depth", type=int, default=None)
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--out", default=None, help="save the table (.json or .csv)")
    e.set_defaults(func=_eval)

    s = sub.add_parser("study", help="run the notebooks of a preset with papermill")
    s.add_argument("--preset", default="smoke", help="smoke, cifar10-cpu, paper, or a path to a preset YAML")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset parameter")
    s.add_argument("--force", action="store_true", help="re-run notebooks even when nothing changed")
    s.add_argument("--out", default=".", help="where runs/ and figures/ go (default: here)")
    s.set_defaults(func=_study)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .data import DatasetError
    from .models import CheckpointError
    from .runs import RunExistsError

    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, RunExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
