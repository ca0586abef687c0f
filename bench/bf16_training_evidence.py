"""Does bf16 training weaken the result? ABSLD trained to convergence on digits in fp32 and in bf16
(training passes and training attacks), several seeds each, compared on PGD-20 Avg / Worst / NSD with
95% intervals; and the bf16 training attack's strength against the fp32 one on the same models
(PGD-10 robust accuracy, class by class).

    .venv/bin/python bench/bf16_training_evidence.py --seeds 0,1,2,3,4,5 --workers 2

Setting: the digits (offline), small CNN width 16 students, 300 epochs of the ABSLD paper's schedule
(x0.1 after 215, 260, 285), batch 64, lr 0.05, eps 16/255, training PGD-KL 5 steps of 4/255, from one
fp32 TRADES teacher (width 32, 60 epochs). Runs go to runs/bench/bf16_evidence/; results (with the
machine) to bench/results/bf16_training_evidence.json and .md. On a CPU without native bf16, bf16 is
emulated (slow) and `auto` would choose fp32; the script still runs both when asked.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402

ROOT = HERE.parent / "runs" / "bench" / "bf16_evidence"
EPS, ALPHA = 16 / 255, 4 / 255


def base(name: str, seed: int, precision: str, epochs: int) -> dict:
    return {"name": name, "out_dir": str(ROOT), "seed": seed, "precision": precision, "progress": False,
            "eval_every": 25, "data": {"dataset": "digits", "val_per_class": 15, "pad": 1},
            "model": {"arch": "small_cnn", "width": 16},
            "attack": {"eps": EPS, "alpha": ALPHA, "steps": 5, "eval_alpha": 4 / 255,
                       "val_attacks": ["clean", "pgd10"], "test_attacks": ["clean", "pgd20"]},
            "optim": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "schedule": "paper300"}}


def run_one(cfg: dict) -> str:
    import torch
    torch.set_num_threads(1)
    from absld_core.experiments import run_or_resume
    from absld_core.runs import RunDir
    path = run_or_resume(cfg, log=lambda *a: None)
    # training seconds as the run recorded them epoch by epoch: a run reused from an earlier invocation
    # (or resumed after a kill) keeps its own measured time rather than this call's wall time
    seconds = sum(h.get("seconds", 0.0) for h in RunDir(path).history())
    return json.dumps({"path": str(path), "seconds": float(seconds)})


def interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    from scipy import stats
    v = np.asarray(values, float)
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h


def difference(a, b) -> tuple[float, float, float]:
    """mean(b) - mean(a) with a 95% Welch interval."""
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    if se == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    h = float(stats.t.ppf(0.975, df) * se)
    return d, d - h, d + h


def attack_strength(run_dirs: dict) -> dict:
    """PGD-10 (the training attack's budget, CE) in fp32 and in bf16 on the same final models."""
    import torch
    from absld_core.engine import prepare_data
    from absld_core.config import TrainConfig
    from absld_core.evaluate import evaluate
    from absld_core.models import model_from_checkpoint
    torch.set_num_threads(2)
    out = {}
    for label, path in run_dirs.items():
        cfg = TrainConfig.from_dict(json.loads((Path(path) / "config.json").read_text()))
        ds = prepare_data(cfg)
        model, _ = model_from_checkpoint(Path(path) / "fair_best.pt", "cpu")
        tables = {}
        for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            torch.manual_seed(0)
            tables[prec] = evaluate(model, ds.test_x, ds.test_y, ["clean", "pgd10"], classes=ds.classes, eps=EPS,
                                    pgd_alpha=ALPHA, amp_dtype=dtype, progress=False, seed=0)
        out[label] = {p: {"avg": float(t.loc["pgd10", "avg"]), "worst": float(t.loc["pgd10", "worst"]),
                          "class_acc": [float(t.loc["pgd10", c]) for c in ds.classes]} for p, t in tables.items()}
        out[label]["classes"] = list(ds.classes)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2, help="training processes of one thread each")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.perf_counter()
    teacher_cfg = {**base("teacher", 0, "fp32", args.teacher_epochs), "method": {"name": "trades"},
                   "model": {"arch": "small_cnn", "width": 32}}
    teacher = json.loads(run_one(teacher_cfg))["path"]
    jobs = {(p, s): {**base(f"absld-{p}-seed{s}", s, p, args.epochs),
                     "method": {"name": "absld", "teacher": {"checkpoint": teacher}}}
            for p in ("fp32", "bf16") for s in seeds}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        done = {k: json.loads(f.result()) for k, f in zip(jobs, [ex.submit(run_one, c) for c in jobs.values()])}
    rows = {}
    for (p, s), d in done.items():
        m = json.loads((Path(d["path"]) / "metrics.json").read_text())["rows"]["pgd20"]
        rows.setdefault(p, []).append({"seed": s, "avg": m["avg"], "worst": m["worst"], "nsd": m["nsd"],
                                       "seconds": d["seconds"]})
    summary, diffs = {}, {}
    for metric in ("avg", "worst", "nsd"):
        for p in ("fp32", "bf16"):
            summary.setdefault(p, {})[metric] = interval([r[metric] for r in rows[p]])
        diffs[metric] = difference([r[metric] for r in rows["fp32"]], [r[metric] for r in rows["bf16"]])
    # the project's own paired comparison as well: the same seeds and test images, a paired bootstrap
    # over both (absld_core.intervals, as notebooks 01 and 04 state their claims)
    from absld_core.intervals import describe, paired_difference
    paired = paired_difference({s: done[("bf16", s)]["path"] for s in seeds},
                               {s: done[("fp32", s)]["path"] for s in seeds}, "pgd20", names=("bf16", "fp32"))
    paired_lines = [describe(paired, m, "bf16", "fp32") for m in ("avg", "worst", "nsd")]
    strength = attack_strength({p: done[(p, seeds[0])]["path"] for p in ("fp32", "bf16")})
    result = {"what": __doc__.split("\n\n")[0], "machine": machine_info(), "seeds": seeds, "epochs": args.epochs,
              "per_seed": rows, "mean_and_95ci": summary, "bf16_minus_fp32_and_95ci": diffs,
              "bf16_minus_fp32_paired_bootstrap": {m: paired[m] for m in ("avg", "worst", "nsd")},
              "attack_strength_pgd10": strength, "wall_seconds": time.perf_counter() - t0}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bf16_training_evidence.json").write_text(json.dumps(result, indent=1))
    lines = ["| precision | PGD-20 Avg (95% CI) | Worst (95% CI) | NSD (95% CI) | training s per run |", "|---|---|---|---|---|"]
    for p in ("fp32", "bf16"):
        c = summary[p]
        secs = np.mean([r["seconds"] for r in rows[p]])
        lines.append(f"| {p} | {c['avg'][0]:.1f} ({c['avg'][1]:.1f} to {c['avg'][2]:.1f}) | {c['worst'][0]:.1f} "
                     f"({c['worst'][1]:.1f} to {c['worst'][2]:.1f}) | {c['nsd'][0]:.3f} ({c['nsd'][1]:.3f} to "
                     f"{c['nsd'][2]:.3f}) | {secs:.0f} |")
    for metric, (d, lo, hi) in diffs.items():
        verdict = "the interval contains 0" if lo <= 0 <= hi else "the interval excludes 0"
        lines.append(f"\nbf16 - fp32 (Welch, over seed means), {metric}: {d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}); {verdict}.")
    lines.append("\nPaired bootstrap over seeds and test images (absld_core.intervals):\n")
    lines += [f"- {t}" for t in paired_lines]
    lines.append("\nTraining-attack strength (PGD-10, 16/255, step 4/255) on the seed-"
                 f"{seeds[0]} models, robust accuracy %, class by class:\n")
    for label, s in strength.items():
        lines.append(f"| model trained in {label} | attack | " + " | ".join(s["classes"]) + " | Avg |")
        lines.append("|---|---|" + "---|" * (len(s["classes"]) + 1))
        for prec in ("fp32", "bf16"):
            lines.append(f"| | {prec} | " + " | ".join(f"{a:.1f}" for a in s[prec]["class_acc"]) + f" | {s[prec]['avg']:.1f} |")
        lines.append("")
    md = "\n".join(lines) + "\n"
    (HERE / "results" / "bf16_training_evidence.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
