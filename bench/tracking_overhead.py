"""What TensorBoard logging costs a run: the same ABSLD training (digits, small CNN, a natural teacher)
with trackers on and off, alternated, several times; images per second of wall-clock time over whole
runs (the trackers write once per epoch, outside the timed step loop, so the history's own images/s
cannot see them), and the step loop's images/s from the history for comparison.

    python bench/tracking_overhead.py --epochs 10 --repeats 3      # writes bench/results/tracking_overhead.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402

import torch  # noqa: E402

from absld_core import train  # noqa: E402
from absld_core.runs import RunDir  # noqa: E402


def config(root: Path, name: str, epochs: int, trackers, teacher=None, method="absld") -> dict:
    return {"name": name, "out_dir": str(root), "progress": False, "seed": 0, "precision": "auto", "trackers": trackers,
            "data": {"dataset": "digits", "val_per_class": 15, "pad": 1},
            "model": {"arch": "small_cnn", "width": 16},
            "attack": {"eps": 16 / 255, "alpha": 4 / 255, "steps": 5, "eval_alpha": 4 / 255,
                       "val_attacks": ["clean", "pgd10"], "test_attacks": ["clean", "pgd20"]},
            "method": {"name": method, **({"teacher": {"checkpoint": str(teacher)}} if teacher else {})},
            "optim": {"epochs": epochs, "batch_size": 128, "lr": 0.1, "schedule": "paper300"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "tracking_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher = train(config(root, "teacher", 3, [], method="natural"))
        rows = {"tensorboard": [], "off": []}
        for r in range(args.repeats):
            for label in (("tensorboard", "off") if r % 2 == 0 else ("off", "tensorboard")):
                cfg = config(root, f"{label}-{r}", args.epochs, ["tensorboard"] if label == "tensorboard" else [],
                             teacher)
                t0 = time.perf_counter()
                run = train(cfg)
                wall = time.perf_counter() - t0
                hist = RunDir(run).history()
                images = sum(h["samples"] for h in hist)
                rows[label].append({"wall_seconds": wall, "wall_images_per_s": images / wall,
                                    "step_loop_images_per_s": statistics.median(h["images_per_second"] for h in hist[1:])})
                print(label, r, {k: round(v, 1) for k, v in rows[label][-1].items()}, flush=True)
    summary = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in rows.items()}
    change = summary["tensorboard"]["wall_images_per_s"] / summary["off"]["wall_images_per_s"] - 1
    result = {"what": "ABSLD on digits, small CNN width 16, batch 128, trackers on vs off; medians over repeats",
              "machine": machine_info(), "settings": vars(args), "runs": rows, "median": summary,
              "wall_images_per_s_change": change}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"tensorboard vs off, wall-clock images/s: {100 * change:+.1f}% (medians of {args.repeats} runs each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
