"""PGD-10 attack generation speed: ours against torchattacks, same model, batch and machine.

    .venv/bin/python bench/attack_throughput.py [--models resnet18,small_cnn] [--batch 128] [--repeats 3]

Writes bench/results/attack_throughput_<device>.json (images per second, best of `repeats` timed runs
after one warm-up, machine recorded). Both attacks: eps 8/255, step 2/255, 10 steps, uniform random
start, model in eval mode, fp32.
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

from absld_core import attacks  # noqa: E402
from absld_core.models import build_model  # noqa: E402


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet18,small_cnn")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    device = torch.device(args.device)
    eps, alpha, steps = 8 / 255, 2 / 255, 10
    results = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, 10).to(device).eval()
        x = torch.rand(args.batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        ours = timed(lambda: attacks.pgd(model, x, y, eps, alpha, steps), args.repeats, device)
        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        ref = timed(lambda: ta(x, y), args.repeats, device)
        row = {"model": name, "batch": args.batch, "steps": steps, "ours_images_per_s": args.batch / ours,
               "torchattacks_images_per_s": args.batch / ref, "ratio_ours_over_torchattacks": ref / ours}
        results.append(row)
        print(json.dumps(row))
    out = HERE / "results" / f"attack_throughput_{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"what": "PGD-10 attack generation, images per second (best of repeats)",
                               "machine": machine_info(), "settings": vars(args), "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
