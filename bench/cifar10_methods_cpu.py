"""Recorded CPU run on the CIFAR-10 JPEG copy: a PGD-AT teacher, then RSLAD, ABSLD, HAM and ABSLD+HAM
students from it under the same budget; class-wise PGD-20 table of each.

    .venv/bin/python bench/cifar10_methods_cpu.py [--train-per-class 600] [--epochs 10]

Writes bench/results/cifar10_cpu_methods.{json,md}. Runs live in runs/bench-cifar10-cpu/ and the
script resumes them, so it can be stopped and started again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402

from absld_core.experiments import class_table, markdown_summary, run_or_resume, summary_table, train_students  # noqa: E402

ARCHIVE = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(ARCHIVE))
    ap.add_argument("--train-per-class", type=int, default=600)
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--out", default="runs/bench-cifar10-cpu")
    args = ap.parse_args()
    if not Path(args.root).exists():
        print(f"CIFAR-10 JPEG copy not found at {args.root}", file=sys.stderr)
        return 2
    base = {
        "out_dir": args.out, "progress": False, "seed": 0, "eval_every": 2,
        "data": {"dataset": "imagefolder", "root": args.root, "train_per_class": args.train_per_class,
                 "val_per_class": args.val_per_class, "test_per_class": args.test_per_class},
        "model": {"arch": "small_cnn", "width": args.width},
        "attack": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "eval_alpha": 0.003,
                   "val_attacks": ["clean", "pgd10"], "test_attacks": ["clean", "fgsm", "pgd20", "cw30"]},
        "optim": {"epochs": args.epochs, "batch_size": 128, "lr": 0.1, "schedule": "paper300"},
    }
    t0 = time.time()
    teacher = run_or_resume({**base, "name": "teacher-pgd_at", "method": {"name": "pgd_at"},
                             "optim": {**base["optim"], "epochs": args.teacher_epochs}})
    ham_start = max(1, round(args.epochs * 50 / 120))  # HAM switches on at 50/120 of training
    runs = train_students({**base, "name": "student"}, teacher, ["rslad", "absld", "ham", "absld_ham"],
                          {"ham": {"ham_start_epoch": ham_start}, "absld_ham": {"ham_start_epoch": ham_start}})
    labels = {"teacher (PGD-AT)": teacher, **{m: p for m, p in runs.items()}}
    table = summary_table(labels, ["clean", "pgd20", "cw30"])
    classes = class_table(labels, "pgd20")
    hist = {m: [json.loads(l) for l in (Path(p) / "history.jsonl").read_text().splitlines()] for m, p in labels.items()}
    result = {
        "what": "CIFAR-10 (JPEG copy) CPU run: small CNN teacher and students, class-wise PGD-20 on a "
                "class-balanced test subset",
        "settings": {**vars(args), "ham_start_epoch": ham_start, "eps": "8/255", "train_attack": "10 steps of 2/255",
                     "eval": "PGD-20 step 0.003, CW-inf 30 steps; robust counted only where clean is correct"},
        "machine": machine_info(), "wall_seconds": time.time() - t0,
        "summary": {m: {f"{a} {c}": v for (a, c), v in r.items()} for m, r in table.to_dict(orient="index").items()},
        "class_pgd20": classes.to_dict(orient="index"),
        "final_temperatures": {m: {"tau_adv": h[-1].get("tau_adv"), "tau_nat": h[-1].get("tau_nat")}
                               for m, h in hist.items() if "tau_adv" in h[-1]},
        "kept_fraction": {m: [r.get("kept_fraction") for r in h] for m, h in hist.items() if "kept_fraction" in h[-1]},
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "cifar10_cpu_methods.json").write_text(json.dumps(result, indent=1, default=str))
    md = ["# CIFAR-10 (JPEG copy), CPU: teacher and students under one budget", "",
          f"Machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} cores), torch "
          f"{result['machine']['torch']}, {result['machine']['when']}; wall time {result['wall_seconds'] / 60:.0f} min.", "",
          f"Settings: small CNN width {args.width}; {args.train_per_class - args.val_per_class} training images per class "
          f"({args.val_per_class} per class held out for checkpoint selection), test subset of {args.test_per_class} per class; "
          f"teacher PGD-AT {args.teacher_epochs} epochs, students {args.epochs} epochs, paper300 lr schedule scaled, "
          f"eps 8/255, PGD-10 training attack; HAM and ABSLD+HAM drop easy examples from epoch {ham_start}.", "",
          markdown_summary(table), "Class-wise PGD-20 accuracy (%):", "",
          markdown_summary(classes), ""]
    (out / "cifar10_cpu_methods.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
