"""Steady-state training throughput: our engine against a reference-style ABSLD step.

    .venv/bin/python bench/train_throughput.py --student small_cnn --teacher small_cnn --teacher-width 64
    .venv/bin/python bench/train_throughput.py --student resnet18 --teacher wrn --device cuda --batch 128
                                                         # the GPU comparison (ResNet-18 / WRN-34-10)

"Ours" times the engine's own epoch function (on-device data and augmentation, the method units,
vectorised class bookkeeping; the engine's precision (auto by default: bf16 training and training
attacks where the device has native bf16) and memory format; compile as asked). "Reference" is an ABSLD step
written the way the released script works: a DataLoader with per-sample CPU transforms, fp32, default
memory format, per-sample Python loops for the class temperatures and the class risks
(tests/reference_absld.py; tests/test_reference_step.py checks on every `make test` that it and the
engine's ABSLD step compute the same loss). This script only times. Results (images/s, seconds per 50,000-image epoch, peak memory, the ratio, the
machine) go to bench/results/train_throughput_<device>_<student>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the reference-style step lives with its equivalence test
from machine import machine_info  # noqa: E402
from reference_absld import ALPHA, EPS, K, CpuTransformDataset, reference_step  # noqa: E402

from absld_core.config import TrainConfig  # noqa: E402
from absld_core.data import BatchIterator  # noqa: E402
from absld_core.engine import make_session  # noqa: E402
from absld_core.methods import registry  # noqa: E402
from absld_core.precision import resolve  # noqa: E402
from absld_core.models import build_model  # noqa: E402

REFERENCE = "absld"  # the method the reference-style step implements


# ----------------------------------------------------------------------------- helpers
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process peak RSS


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def config(args, method: str) -> TrainConfig:
    cls = registry.get(method)
    own = registry.option_names(method)
    return TrainConfig.from_dict({
        "name": "bench", "device": args.device, "precision": args.precision,
        "channels_last": {"auto": None, "on": True, "off": False}[args.channels_last],
        "compile": args.compile, "progress": False,
        "model": {"arch": args.student},
        "attack": {"eps": EPS, "alpha": ALPHA, "steps": K,
                   "amp_dtype": None if args.attack_precision == "auto" else args.attack_precision},
        "method": {"name": method, "teacher": {"checkpoint": "unused"} if cls.needs_teacher else None,
                   **({"ham_start_epoch": 1} if "ham_start_epoch" in own else {})},
        "optim": {"epochs": 1, "batch_size": args.batch, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4,
                  "schedule": "constant"}})


def time_ours(args, method_name, student0, teacher, x, y, device) -> dict:
    cfg = config(args, method_name)
    ds = SimpleNamespace(num_classes=10, image_shape=tuple(x.shape[1:]), val_x=None, val_y=None)
    session = make_session(cfg, ds, device, model=copy.deepcopy(student0),
                           teacher=teacher if registry.get(method_name).needs_teacher else None)
    mf = torch.channels_last if session.prec.channels_last else torch.contiguous_format
    out = {}
    for phase, n in (("warmup", args.warmup), ("timed", args.steps)):
        if n == 0:
            continue
        loader = BatchIterator(x[: n * args.batch], y[: n * args.batch], args.batch, augment=True, device=device,
                               memory_format=mf, drop_last=True)
        reset_peak(device)
        rec, _ = session.epoch(1, loader)
        out = {"images_per_s": rec["images_per_second"], "seconds": rec["seconds"], "images": rec["samples"]}
    out["peak_memory_bytes"] = peak_memory(device)
    out["seconds_per_50k_epoch"] = 50000 / out["images_per_s"]
    return out


def time_reference(args, student0, teacher, x, y, device) -> dict:
    """One DataLoader for the warm-up and the timed steps, so that starting its worker processes is
    part of the warm-up, as it is of the first batches of a real epoch, not of the timed steps."""
    student = copy.deepcopy(student0).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    ds = CpuTransformDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy())
    tau_adv, tau_nat = torch.ones(10, device=device), torch.ones(10, device=device)
    risk_adv, risk_nat = [0.0] * 10, [0.0] * 10
    sub = torch.utils.data.Subset(ds, range((args.warmup + args.steps) * args.batch))
    loader = torch.utils.data.DataLoader(sub, batch_size=args.batch, shuffle=True, num_workers=args.ref_workers,
                                         drop_last=True, pin_memory=device.type == "cuda")
    batches = iter(loader)

    def steps(n):
        for _ in range(n):
            xb, yb = next(batches)
            reference_step(student, teacher, opt, xb.to(device), yb.to(device), tau_adv, tau_nat, risk_adv, risk_nat)

    steps(args.warmup)
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    steps(args.steps)
    sync(device)
    dt = time.perf_counter() - t0
    out = {"images_per_s": args.steps * args.batch / dt, "seconds": dt, "images": args.steps * args.batch,
           "peak_memory_bytes": peak_memory(device)}
    out["seconds_per_50k_epoch"] = 50000 / out["images_per_s"]
    return out


def setup(args):
    """Everything a measurement needs, the same in every process: data, student init, teacher."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the engine does; both paths get it
    torch.manual_seed(0)
    n = (args.steps + args.warmup) * args.batch
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(n) % 10
    student0 = build_model(args.student, 10)
    tkw = {"width": args.teacher_width} if args.teacher_width else {}
    if args.teacher == "wrn":
        tkw["depth"] = args.teacher_depth
    teacher = build_model(args.teacher, 10, **tkw).to(device).eval().requires_grad_(False)
    return device, x, y, student0, teacher


def measure(args, what: str) -> dict:
    """One measurement: 'sizes', 'reference' or one of our methods."""
    device, x, y, student0, teacher = setup(args)
    if what == "sizes":
        return {"teacher_parameters": sum(p.numel() for p in teacher.parameters()),
                "student_parameters": sum(p.numel() for p in student0.parameters())}
    baseline = peak_memory(device)
    out = (time_reference(args, student0, teacher, x, y, device) if what == "reference"
           else time_ours(args, what, student0, teacher, x, y, device))
    if device.type != "cuda":
        out["peak_rss_before_timing_bytes"] = baseline
    return out


def run(args, what: str) -> dict:
    """In a fresh process of its own (--isolate, the default), so that each path's peak memory is its
    own, and one path's allocator state or compiled kernels do not carry over to the next."""
    if not args.isolate:
        return measure(args, what)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(measure, args, what).result()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="small_cnn")
    ap.add_argument("--teacher", default="small_cnn")
    ap.add_argument("--teacher-width", type=int, default=None)
    ap.add_argument("--teacher-depth", type=int, default=34)
    ap.add_argument("--methods", default=None, help="comma list (default: every student method of the registry)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="the engine's default auto: bf16 where the device has it natively")
    ap.add_argument("--attack-precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="training attack passes (auto: as the training passes)")
    ap.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                    help="auto: on when training in bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--ref-workers", type=int, default=None, help="DataLoader workers of the reference (cpu: 0)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-isolate", dest="isolate", action="store_false",
                    help="measure every path in this process (peak memory is then the process's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda asked for, but this torch sees no CUDA device")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        ap.error(f"need --steps >= 1, --warmup >= 0 and --batch >= 1; got {args.steps}, {args.warmup}, {args.batch}")
    if args.ref_workers is None:
        args.ref_workers = 4 if device.type == "cuda" else 0
    methods = registry.student_names() if args.methods is None else [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(registry.names()))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {', '.join(registry.names())}")
    result = {"what": "training steps per second, steady state (after warm-up), our engine vs a reference-style "
                      "ABSLD step", "machine": machine_info(), "settings": vars(args),
              "peak_memory": ("torch.cuda.max_memory_allocated over the timed steps" if device.type == "cuda" else
                              "peak RSS of the process that ran the path (each path in its own process)"
                              if args.isolate else "peak RSS of the whole benchmark process"),
              **run(args, "sizes")}
    result["precision"] = resolve(config(args, REFERENCE), device).as_record()
    print(f"precision (--precision {args.precision}): {resolve(config(args, REFERENCE), device).describe()}", flush=True)
    result["reference_absld"] = run(args, "reference")
    print("reference absld:", result["reference_absld"], flush=True)
    result["ours"] = {}
    for m in methods:
        result["ours"][m] = run(args, m)
        print(f"ours {m}:", result["ours"][m], flush=True)
    if REFERENCE in result["ours"]:
        result["absld_speedup_over_reference"] = (result["ours"][REFERENCE]["images_per_s"]
                                                  / result["reference_absld"]["images_per_s"])
        print(f"ABSLD speed-up over the reference-style step: {result['absld_speedup_over_reference']:.2f}x")
    out = Path(args.out) if args.out else HERE / "results" / f"train_throughput_{device.type}_{args.student}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
