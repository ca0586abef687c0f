"""Does running the attack in bf16 change class-wise PGD accuracy? fp32 vs bf16-autocast attack on the
same checkpoint and the same test images (the forward that scores the result is fp32 in both).

    .venv/bin/python bench/attack_precision.py --checkpoint runs/smoke/teacher/fair_best.pt --dataset digits

Writes bench/results/attack_precision_<device>_<name>.json with both class-wise tables, the
per-class differences and the time of each.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402

from absld_core.data import load_dataset  # noqa: E402
from absld_core.evaluate import evaluate  # noqa: E402
from absld_core.models import model_from_checkpoint  # noqa: E402
from absld_core.cli import DEFAULT_ATTACK, fraction  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--root", default=None)
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--attack", default="pgd20")
    ap.add_argument("--eps", type=fraction, default=DEFAULT_ATTACK.eps, help="[0,1] units; 8/255 may be written so")
    ap.add_argument("--alpha", type=fraction, default=DEFAULT_ATTACK.eval_alpha, help="[0,1] units")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    ds = load_dataset(args.dataset, args.root)
    x, y = ds.test_subset(args.per_class) if args.per_class else (ds.test_x, ds.test_y)
    model, meta = model_from_checkpoint(args.checkpoint, args.device)
    tables, seconds = {}, {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        t = time.perf_counter()
        tables[label] = evaluate(model, x, y, ["clean", args.attack], classes=ds.classes, eps=args.eps,
                                 pgd_alpha=args.alpha, device=args.device, amp_dtype=dtype, progress=False)
        seconds[label] = time.perf_counter() - t
    a, b = tables["fp32"].loc[args.attack], tables["bf16"].loc[args.attack]
    diff = {c: float(b[c] - a[c]) for c in ds.classes}
    result = {"what": f"{args.attack} accuracy with the attack in fp32 vs bf16 autocast", "machine": machine_info(),
              "settings": vars(args), "n": len(y),
              "fp32": {k: (float(v) if k != "worst_class" else v) for k, v in a.items()},
              "bf16": {k: (float(v) if k != "worst_class" else v) for k, v in b.items()},
              "bf16_minus_fp32_per_class": diff, "max_abs_class_difference": max(abs(v) for v in diff.values()),
              "avg_difference": float(b["avg"] - a["avg"]), "seconds": seconds}
    name = args.name or Path(args.checkpoint).parent.name
    out = HERE / "results" / f"attack_precision_{torch.device(args.device).type}_{name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("avg_difference", "max_abs_class_difference", "seconds")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
