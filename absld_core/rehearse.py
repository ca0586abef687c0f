"""A preset rehearsed on a CPU in minutes, and what its real run will cost.

    absld study --preset paper --rehearse

The rehearsal runs the preset's own notebooks, configuration and code paths (architectures,
teacher -> students, the lr schedule with its milestones mapped onto the shortened run,
validation and checkpoint selection, every evaluation attack including standard AutoAttack, every
figure) and shrinks only what must shrink for a CPU: REHEARSAL below (a few batches per epoch, a
handful of epochs, tiny evaluation subsets, AutoAttack's iterations and Square queries, device cpu)
and the sizes (NARROW, NARROW_CHANNELS: channels, not code paths; the WRN-34 teacher stays 34 layers
deep, the ResNet-18 students 18). Datasets
that are official files (CIFAR-10/100) are written as small fixtures in the official format, from
the JPEG copy in ../shared/data when it is there, else from synthetic images. Everything goes to
<out>/rehearse/ (runs/ and figures/ of the preset), never into the real runs.

Before it runs, it prints the cost of the real run, per training: epochs, steps, the FLOPs of one
training step counted with torch.utils.flop_counter on the real method, model (and teacher) at the
real image size (attack passes included; validation and evaluation not), the FLOPs per epoch and in
all, and the memory one batch needs (parameters, gradients, momentum, teacher, and the activations
autograd saves, measured at batch 2 and scaled to the batch size, fp32: an upper bound under bf16).
A time is given only as an estimate: FLOPs divided by an assumed sustained throughput.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import params, plan, study
from .runs import write_json_atomic

SHARED_JPEG = study.ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# what a rehearsal shrinks (the preset keeps everything else); milestones scale with the epochs
REHEARSAL = {"epochs": 4, "train_per_class": 2, "val_per_class": 1, "test_per_class": 2, "batch_size": 10,
             "aa_iters": 2, "aa_queries": 20, "device": "cpu",
             # every core: a rehearsal proves code paths, it is never compared with a sweep's runs
             "threads": max(1, min(8, os.cpu_count() or 1))}
PER_NOTEBOOK = {"01_smoothness_vs_fairness": {"reference_epochs": 2}, "02_teacher": {"teacher_epochs": 2},
                "05_temperature_explorer": {"device": "cpu"}}
OFFICIAL_FILE_DATASETS = ("cifar10",)
TRAIN_SIZES = {"cifar10": (50000, 10, (3, 32, 32)), "cifar100": (50000, 100, (3, 32, 32)),
               "svhn": (73257, 10, (3, 32, 32))}


# ------------------------------------------------------------------------------------ data fixtures
def write_cifar10_fixture(dest: str | Path, train_per_class: int = 8, test_per_class: int = 4,
                          source: str | Path | None = SHARED_JPEG) -> Path:
    """The official CIFAR-10 python files (cifar-10-batches-py/data_batch_1..5, test_batch,
    batches.meta) with a few images per class: the first ones of each class in the JPEG copy when
    `source` exists, else synthetic class patterns. Returns the root to pass as data_root."""
    dest = Path(dest)
    folder = dest / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if source is not None and Path(source).is_file():
        parts = _from_jpeg_tar(Path(source), classes, train_per_class, test_per_class)
    else:
        parts = _synthetic(classes, train_per_class, test_per_class)
    (xtr, ytr), (xte, yte) = parts
    shards = np.array_split(np.arange(len(ytr)), 5)
    for i, idx in enumerate(shards, 1):
        _dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": ytr[idx].tolist(),
                                             "data": xtr[idx].reshape(len(idx), -1), "filenames": [f"{j}.png" for j in idx]})
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": yte.tolist(),
                                  "data": xte.reshape(len(yte), -1), "filenames": [f"{j}.png" for j in range(len(yte))]})
    _dump(folder / "batches.meta", {"label_names": classes, "num_cases_per_batch": len(shards[0]), "num_vis": 3072})
    return dest


def write_imagefolder_fixture(dest: str | Path, train_per_class: int = 8, test_per_class: int = 4,
                              source: str | Path | None = SHARED_JPEG) -> Path:
    """A small image folder (train/<class>/*.png, test/<class>/*.png) in the layout `imagefolder` reads,
    from the CIFAR-10 JPEG copy when `source` exists, else synthetic images."""
    from PIL import Image

    dest = Path(dest)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if source is not None and Path(source).is_file():
        (xtr, ytr), (xte, yte) = _from_jpeg_tar(Path(source), classes, train_per_class, test_per_class)
    else:
        (xtr, ytr), (xte, yte) = _synthetic(classes, train_per_class, test_per_class)
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        for i, (img, label) in enumerate(zip(x, y)):
            folder = dest / split / classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return dest


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _from_jpeg_tar(path: Path, classes, n_train: int, n_test: int):
    from PIL import Image

    want = {("train", c): n_train for c in classes} | {("test", c): n_test for c in classes}
    got: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in want}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            bits = m.name.split("/")
            if len(bits) < 3:
                continue
            key = (bits[-3], bits[-2])
            if key in got and len(got[key]) < want[key]:
                with Image.open(tar.extractfile(m)) as im:
                    got[key].append(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
            if all(len(got[k]) >= want[k] for k in want):
                break
    missing = [k for k in want if len(got[k]) < want[k]]
    if missing:
        return _synthetic(classes, n_train, n_test)  # a copy with another layout: synthetic images instead

    def stack(split, n):
        x = np.stack([img for c in classes for img in got[(split, c)][:n]])
        return x, np.repeat(np.arange(len(classes)), n)

    return stack("train", n_train), stack("test", n_test)


def _synthetic(classes, n_train: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(len(classes), 3, 32, 32))

    def make(n):
        y = np.repeat(np.arange(len(classes)), n)
        x = np.clip(base[y] + rng.normal(0, 40, size=(len(y), 3, 32, 32)), 0, 255).astype(np.uint8)
        return x, y

    return make(n_train), make(n_test)


# ------------------------------------------------------------------------------------ cost of the real run
def _pair_method(job: plan.Job) -> dict:
    """A pair's method for costing (its temperatures come from the reference run, which does not exist yet)."""
    from . import smoothness

    C = TRAIN_SIZES.get(job.config["data"]["dataset"], (0, 10, None))[1]
    p = smoothness.Plan([str(c) for c in range(C)], np.zeros(C), ["0"], np.ones(C), 1.0, np.zeros(C), 0.0)
    return smoothness.pair_configs(job.config, job.pair["reference"], p)[job.label]["method"]


def _FlopCounter():
    """Counts FLOPs with torch.utils.flop_counter's per-operator formulas (matmuls, convolutions,
    attention, forward and backward). FlopCounterMode itself also tracks modules with backward hooks,
    which the attacks' autograd.grad on a leaf input does not support, so only its formulas are used."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

    return Counter()


def step_cost(cfg_dict: dict, teacher_model: dict | None, num_classes: int, image_shape, probe: int = 2) -> dict:
    """FLOPs of one training step per image and activation bytes per image, counted on a CPU at batch
    `probe` with the real method, model and image size (fp32); parameters and optimiser state in bytes."""
    import torch

    from .config import TrainConfig
    from .data import BatchIterator
    from .engine import build_student, make_session
    from .methods import registry
    from .models import build_model

    d = {**cfg_dict, "device": "cpu", "precision": "fp32", "progress": False, "compile": False,
         "optim": {**cfg_dict["optim"], "epochs": 1, "batch_size": probe}}
    if d["method"].get("teacher"):
        d["method"] = {**d["method"], "teacher": {**d["method"]["teacher"], "checkpoint": "unused"}}
    cfg = TrainConfig.from_dict(d)
    device = torch.device("cpu")
    ds = SimpleNamespace(num_classes=num_classes, image_shape=tuple(image_shape), val_x=None, val_y=None)
    torch.manual_seed(0)
    model = build_student(cfg, ds)
    teacher = None
    if registry.get(cfg.method.name).needs_teacher and teacher_model is not None:
        kw = {k: v for k, v in (("width", teacher_model.get("width")), ("depth", teacher_model.get("depth"))) if v is not None}
        teacher = build_model(teacher_model["arch"], num_classes, image_shape[0], **kw).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2 * probe, *image_shape), dtype=torch.uint8, generator=gen)
    y = torch.arange(2 * probe) % num_classes
    ds.val_x = torch.randint(0, 256, (num_classes, *image_shape), dtype=torch.uint8, generator=gen)
    ds.val_y = torch.arange(num_classes)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    class Counting(torch.nn.Module):
        """The training forward, counting what autograd keeps for the backward (the attacks' own
        graphs are freed after each of their steps and are smaller: one view, no optimiser)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *views):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                return self.inner(*views)

    session = make_session(cfg, ds, device, model=model, teacher=teacher, wrap=Counting)
    epoch = max(1, int(cfg_dict["method"].get("ham_start_epoch", 1) or 1))  # a warm-up: cost the step after it
    counts = []
    for n in (0, 1):  # an epoch of no batch and one of one: the difference is one step (a method's per-epoch
        # work, its validation passes say, cancels); a third of the images the older 1-and-2-batch count ran
        loader = BatchIterator(x[: n * probe], y[: n * probe], probe, augment=cfg.data.augment, pad=cfg.data.pad,
                               device=device, drop_last=True)
        counter, saved[0] = _FlopCounter(), 0
        with counter:
            session.epoch(epoch, loader)
        counts.append((counter.total, saved[0]))
    step_flops, per_step_saved = counts[1][0] - counts[0][0], counts[1][1]
    n_params = sum(p.numel() for p in model.parameters())
    t_params = sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    return {"flops_per_image": step_flops / probe, "saved_bytes_per_image": per_step_saved / probe,
            "state_bytes": 4 * (3 * n_params + t_params), "params": n_params, "teacher_params": t_params}


def cost_report(jobs: list[plan.Job], tflops: float = 100.0, shape_hint: tuple | None = None,
                log=None) -> list[dict]:
    """Per training of the real plan: epochs, steps, FLOPs per step / epoch / in all, memory per batch,
    and a time estimate at `tflops` sustained (an assumption, stated as such). shape_hint: (classes,
    image shape) of an image folder, so that its size follows from train_per_class without decoding it.
    log: a line per step counted (each distinct method, model and batch is counted once)."""
    rows, cache = [], {}
    teachers = {j.key: j.config["model"] for j in jobs if j.label in ("teacher", "reference")}
    for j in jobs:
        cfg = j.config if j.pair is None else {**j.config, "method": _pair_method(j)}
        data = cfg["data"]
        n_train, C, shape = TRAIN_SIZES.get(data["dataset"], (None, None, None))
        if n_train is None and shape_hint is not None and data.get("train_per_class"):
            C, shape = shape_hint
            n_train = data["train_per_class"] * C
        if n_train is None:
            from .config import TrainConfig
            from .engine import prepare_data
            ds = prepare_data(TrainConfig.from_dict(cfg))
            n_train, C, shape = len(ds.train_y) + len(ds.val_y if ds.val_y is not None else []), ds.num_classes, ds.image_shape
        if data.get("train_per_class"):
            n_train = min(n_train, data["train_per_class"] * C)
        n_train -= (data.get("val_per_class") or 0) * C
        teacher_model = teachers.get(j.deps[0]) if j.deps else None
        if teacher_model is None and cfg["method"].get("teacher"):
            teacher_model = {"arch": cfg["method"]["teacher"].get("arch") or cfg["model"]["arch"]}
        key = json.dumps([cfg["model"], teacher_model, cfg["method"], cfg["attack"], cfg["optim"]["batch_size"]],
                         sort_keys=True, default=str)  # runs that differ only in name, seed or teacher path share a probe
        key = key.replace(str(cfg["method"].get("teacher", {}).get("checkpoint", "")), "")
        if key not in cache:
            if log is not None:
                log(f"  counting one training step of {cfg['method']['name']} on {cfg['model']['arch']} "
                    f"(probe {len(cache) + 1}, for {j.key})")
            cache[key] = step_cost(cfg, teacher_model, C, shape)
        c = cache[key]
        batch, epochs = cfg["optim"]["batch_size"], cfg["optim"]["epochs"]
        steps = math.ceil(n_train / batch)
        flops_epoch = c["flops_per_image"] * n_train
        mem = c["state_bytes"] + c["saved_bytes_per_image"] * batch
        uses_width = cfg["model"]["arch"] in ("small_cnn", "wrn")  # resnet18 and the others have one width
        row = {"run": j.key, "method": cfg["method"]["name"], "model": f"{cfg['model']['arch']}"
               + (f" w{cfg['model']['width']}" if cfg["model"].get("width") and uses_width else ""), "epochs": epochs,
               "steps": steps * epochs, "attack_steps_per_batch": cfg["attack"]["steps"],
               "gflops_per_step": c["flops_per_image"] * batch / 1e9, "pflops_per_epoch": flops_epoch / 1e15,
               "pflops_total": flops_epoch * epochs / 1e15, "batch_memory_gib": mem / 2**30,
               "estimate_hours": flops_epoch * epochs / (tflops * 1e12) / 3600}
        rows.append(row)
    return rows


def format_report(rows: list[dict], tflops: float) -> str:
    import pandas as pd

    df = pd.DataFrame(rows).set_index("run")
    total = df["pflops_total"].sum()
    lines = ["Cost of the real run (training only; validation and the final evaluations come on top):",
             df.round({"gflops_per_step": 1, "pflops_per_epoch": 3, "pflops_total": 2, "batch_memory_gib": 2,
                       "estimate_hours": 2}).to_string(),
             f"total: {total:.1f} PFLOP of training, {df['steps'].sum():,} optimiser steps; the largest batch needs "
             f"{df['batch_memory_gib'].max():.1f} GiB (fp32 upper bound).",
             f"estimate_hours is an ESTIMATE: the counted FLOPs divided by an assumed {tflops:g} TFLOP/s sustained "
             f"(pass --tflops with your GPU's measured training throughput); it is not a measured time."]
    return "\n".join(lines)


# a width is a number of channels, not a code path: the rehearsal trains the preset's architectures
# (the same classes, layers and depth) at these sizes; the cost table uses the real ones.
# NARROW: the `width` parameter (WRN widen factor, small CNN channels); NARROW_CHANNELS: the
# `channels` parameter of the ResNet-18s (first-stage channels, 64 in the papers: 16 costs 1/16)
NARROW = {"wrn": 1, "small_cnn": 8}
NARROW_CHANNELS = 16


def _narrow_widths(spec: dict) -> list[str]:
    """Overrides that narrow the students' and the teacher's sizes for the rehearsal (WRN widen
    factor 1, small CNN 8 channels, ResNet-18 16 first-stage channels); an external teacher
    checkpoint keeps its own."""
    from .models import RESNET_CHANNELS, RESNETS

    P = {**params.defaults(), **spec["parameters"]}
    T = {**P, **spec["per_notebook"].get("02_teacher", {})}
    sizes = [("", P, "")] + ([("02_teacher.", T, "teacher_")] if T.get("teacher_checkpoint") is None else [])
    out = []
    for prefix, W, name in sizes:  # name: the parameters' prefix (teacher_arch, teacher_width, ...)
        arch, width, channels = W.get(f"{name}arch"), W.get(f"{name}width"), W.get(f"{name}channels")
        if arch in NARROW and width is not None and width > NARROW[arch]:
            out.append(f"{prefix}{name}width={NARROW[arch]}")
        if arch in RESNETS and (channels or RESNET_CHANNELS) > NARROW_CHANNELS:
            out.append(f"{prefix}{name}channels={NARROW_CHANNELS}")
    return out


# ------------------------------------------------------------------------------------ the rehearsal
def rehearsal_overrides(spec: dict, out: Path) -> list[str]:
    """The overrides that shrink a preset for a CPU: REHEARSAL, per-notebook epochs, data fixtures."""
    over = [f"{k}={v}" for k, v in REHEARSAL.items()]
    over += _narrow_widths(spec)
    for nb, values in PER_NOTEBOOK.items():
        if nb in spec["notebooks"]:
            declared = {p.name for p in params.for_notebook(nb)}
            over += [f"{nb}.{k}={v}" for k, v in values.items() if k in declared]
    dataset = spec["parameters"].get("dataset")
    n_train, n_test = REHEARSAL["train_per_class"] + REHEARSAL["val_per_class"], REHEARSAL["test_per_class"]
    if dataset in OFFICIAL_FILE_DATASETS:
        root = write_cifar10_fixture(out / "data" / dataset, train_per_class=n_train, test_per_class=n_test)
        over.append(f"data_root={root}")
    elif dataset == "imagefolder":
        root = write_imagefolder_fixture(out / "data" / "imagefolder", train_per_class=n_train, test_per_class=n_test)
        over.append(f"data_root={root}")
    elif dataset in ("cifar100", "svhn"):
        raise study.StudyError(f"no rehearsal fixture for {dataset} yet; rehearse a cifar10, imagefolder or digits preset")
    return over


def rehearse(preset: str, overrides: list[str] | None = None, out_root: str | Path = ".", tflops: float = 100.0,
             log=print) -> int:
    """Print the real run's cost, then run every notebook of the preset shrunk for a CPU."""
    import math
    import time

    if isinstance(tflops, bool) or not isinstance(tflops, (int, float)) or not math.isfinite(tflops) or tflops <= 0:
        raise study.StudyError(f"--tflops {tflops!r} is invalid: the GPU's sustained training throughput in TFLOP/s, "
                         f"a positive number (such as 100)")

    overrides = list(overrides or [])
    out = Path(out_root).resolve() / "rehearse"
    out.mkdir(parents=True, exist_ok=True)
    spec = study.load_preset(preset, overrides)
    real = plan.study_plan(preset, overrides)
    shrink = rehearsal_overrides(spec, out)
    hint = None
    root = [o.split("=", 1)[1] for o in shrink if o.startswith("data_root=")]
    if root and spec["parameters"].get("dataset") == "imagefolder":
        from .data import load_dataset
        ds = load_dataset("imagefolder", root[0], cache=False)
        hint = (ds.num_classes, ds.image_shape)
    clock = out / "rehearsal_time.json"   # the time of earlier calls that did not finish (a resumed rehearsal)
    earlier = json.loads(clock.read_text()) if clock.is_file() else {"seconds": 0.0, "calls": 0}
    t0 = time.time()
    rc = None
    try:
        log(f"cost of the real run: counting one training step per distinct method and model ({len(real)} runs)")
        log(format_report(cost_report(real, tflops, hint, log=log), tflops))
        log(f"\nrehearsal of {spec['name']!r} on the CPU ({', '.join(shrink)}) -> {out}")
        rc = study.run_study(preset, overrides + shrink, force=False, out_root=out, log=log)
    finally:
        total, calls = earlier["seconds"] + time.time() - t0, earlier["calls"] + 1
        if rc == 0:
            clock.unlink(missing_ok=True)
        else:
            write_json_atomic(clock, {"seconds": total, "calls": calls})
    log(f"rehearsal {'passed' if rc == 0 else 'FAILED'} in {total:.0f} s"
        + (f" over {calls} calls (this one {time.time() - t0:.0f} s)" if calls > 1 else ""))
    return rc
