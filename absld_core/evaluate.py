"""Class-wise accuracy and robustness: Avg, Worst (and which class), NSD and the full class table.

    df = evaluate(model, x, y, attacks=["clean", "fgsm", "pgd20", "cw30", "aa"], classes=names)

Rows are attacks; columns are avg, worst, worst_class, nsd, n and one column per class (accuracy in
percent). A sample counts as robust under an attack only if it is classified correctly both clean and
under the attack (as AutoAttack counts), so robust accuracy never exceeds clean accuracy.
NSD is the population standard deviation of the class-wise accuracies divided by their mean.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import attacks as A
from .atomic import atomic_write
from .checks import check_device
from .attacks import model_mode
from .vocab import AttackSpec, parse_attack

SUMMARY_COLUMNS = ["avg", "worst", "worst_class", "nsd", "n"]
__all__ = ["evaluate", "evaluate_per_image", "save_per_image", "load_per_image", "AttackSpec", "parse_attack", "summarise", "save_table", "load_table",
           "class_accuracies", "SUMMARY_COLUMNS"]


def class_accuracies(correct: torch.Tensor, y: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class accuracy in percent from a boolean vector of correct predictions (bincount, no loop)."""
    total = torch.bincount(y, minlength=num_classes).double()
    hits = torch.bincount(y, weights=correct.double(), minlength=num_classes)
    acc = torch.where(total > 0, 100.0 * hits / total.clamp_min(1), torch.full_like(total, float("nan")))
    return acc.cpu().numpy()


def summarise(acc: np.ndarray, classes: Sequence[str], n: int) -> dict:
    """Worst class accuracy, its class name and NSD (std / mean of the class accuracies) from the
    class-wise accuracies; classes absent from the data (NaN) are ignored. Avg is the caller's."""
    valid = ~np.isnan(acc)
    a = acc[valid]
    mean = float(a.mean()) if a.size else float("nan")
    worst_i = int(np.nanargmin(acc)) if a.size else 0
    return {"worst": float(acc[worst_i]), "worst_class": str(classes[worst_i]),
            "nsd": float(a.std() / mean) if mean > 0 else float("nan"), "n": int(n)}


def _attack_batch(model, spec: AttackSpec, x, y, eps, pgd_alpha, cw_alpha, aa_opts, amp_dtype):
    if spec.kind == "clean":
        return x
    if spec.kind == "fgsm":
        return A.fgsm(model, x, y, eps, amp_dtype=amp_dtype, validate=False)
    if spec.kind == "pgd":
        return A.pgd(model, x, y, eps, pgd_alpha, spec.steps, amp_dtype=amp_dtype, validate=False)
    if spec.kind == "cw":
        return A.cw_inf(model, x, y, eps, cw_alpha, spec.steps, amp_dtype=amp_dtype, validate=False)
    return A.autoattack(model, x, y, eps, spec.aa_attacks, validate=False, **aa_opts)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str] | None = None,
             **kwargs) -> pd.DataFrame:
    """Class-wise accuracy under each attack (the table of `evaluate_per_image`)."""
    return evaluate_per_image(model, x, y, attacks, **kwargs)[0]


def evaluate_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             attacks: Sequence[str] | None = None, *, classes: Sequence[str] | None = None,
             eps: float | None = None, pgd_alpha: float | None = None, cw_alpha: float | None = None,
             batch_size: int = 256, device: str | torch.device | None = None, amp_dtype=None,
             aa_opts: dict | None = None, progress: bool = True,
             seed: int | None = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Class-wise accuracy under each attack, and per attack a boolean vector over the images (correct
    both clean and under the attack: what bootstrap intervals resample). x: uint8 or float [0,1]
    images; y: int64 labels.

    attacks, eps, pgd_alpha: None takes the defaults of config.AttackConfig (test_attacks, eps 8/255,
    eval_alpha 0.003 as in ABSLD/RSLAD; HAM uses eps/4); cw_alpha defaults to pgd_alpha.
    aa_opts: extra arguments for attacks.autoattack (n_iter, n_queries, batch_size).
    """
    from .config import AttackConfig

    default = AttackConfig()
    attacks = default.test_attacks if attacks is None else attacks
    if isinstance(attacks, str):   # "clean,pgd20" as on a command line, not letter by letter
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    A.check_batch(x, y, "evaluation images")
    eps = default.eps if eps is None else eps
    pgd_alpha = default.eval_alpha if pgd_alpha is None else pgd_alpha
    specs = [parse_attack(a) for a in attacks]
    if not specs:
        raise ValueError("attacks must name at least one of clean, fgsm, pgdN, cwN, aa")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"evaluate needs matching non-empty images and labels, got {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    device = check_device(str(device))   # cuda without CUDA: one line, not an assertion deep in torch
    if x.dtype != torch.uint8:
        A.check_images(x, "evaluation images")  # once, over the whole set: finite and in [0, 1]
    if classes is None:  # the class list is what the model predicts, never what the labels happen to hold
        with torch.no_grad(), model_mode(model):
            x0 = x[:1].to(device)
            num_classes = int(model(x0.float().div_(255.0) if x0.dtype == torch.uint8 else x0.float()).shape[1])
        classes = [str(c) for c in range(num_classes)]
    num_classes = len(classes)
    classes = list(classes)
    if int(y.max()) >= num_classes or int(y.min()) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] for {num_classes} classes; found labels from "
                         f"{int(y.min())} to {int(y.max())}")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        correct = _run_attacks(model, x, y, specs, eps, pgd_alpha, cw_alpha, batch_size, device, amp_dtype,
                               aa_opts, progress)
    rows = {}
    y_cpu = y.cpu()
    for s in specs:
        acc = class_accuracies(correct[s.name], y_cpu, num_classes)
        row = {"avg": 100.0 * correct[s.name].double().mean().item(), **summarise(acc, classes, len(y))}
        row.update({c: float(a) for c, a in zip(classes, acc)})
        rows[s.name] = row
    df = pd.DataFrame.from_dict(rows, orient="index")[SUMMARY_COLUMNS + classes]
    df.index.name = "attack"
    df.attrs.update({"eps": eps, "pgd_alpha": pgd_alpha, "classes": classes})
    return df, {k: v.numpy() for k, v in correct.items()}


def _run_attacks(model, x, y, specs, eps, pgd_alpha, cw_alpha, batch_size, device, amp_dtype, aa_opts, progress):
    """Per sample and attack: correct both clean and under the attack."""
    correct = {s.name: torch.zeros(len(y), dtype=torch.bool) for s in specs}
    from tqdm.auto import tqdm

    n_batches = -(-len(y) // batch_size)
    bar = tqdm(total=n_batches * len(specs), desc="evaluate", disable=not progress, leave=False)
    with model_mode(model):
        for b in range(n_batches):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            xb = x[sl].to(device)
            xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
            yb = y[sl].to(device)
            with torch.no_grad():
                clean_ok = (model(xb).argmax(1) == yb)
            for s in specs:
                if s.kind == "clean":
                    ok = clean_ok
                else:
                    xa = _attack_batch(model, s, xb, yb, eps, pgd_alpha, cw_alpha or pgd_alpha, aa_opts or {}, amp_dtype)
                    with torch.no_grad():
                        ok = (model(xa).argmax(1) == yb) & clean_ok
                correct[s.name][sl] = ok.cpu()
                bar.update(1)
    bar.close()
    return correct


def save_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the table as JSON (.json, with its eps/classes attributes) or CSV (.csv), atomically."""
    path = Path(path)
    if path.suffix == ".json":
        payload = {"attrs": {k: v for k, v in df.attrs.items()},
                   "rows": {str(i): {k: (None if isinstance(v, float) and np.isnan(v) else v)
                                     for k, v in r.items()} for i, r in df.to_dict(orient="index").items()}}
        text = json.dumps(payload, indent=1)
    elif path.suffix == ".csv":
        text = df.to_csv()
    else:
        raise ValueError(f"table path must end in .json or .csv, got {path}")
    return atomic_write(path, lambda f: f.write(text), binary=False)


def save_per_image(path: str | os.PathLike, y: torch.Tensor | np.ndarray, correct: dict[str, np.ndarray]) -> Path:
    """Labels and per-attack correctness of every test image, as an .npz of plain arrays (atomically)."""
    arrays = {"labels": np.asarray(y, dtype=np.int64)}
    arrays.update({f"correct/{k}": np.asarray(v, dtype=bool) for k, v in correct.items()})
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_per_image(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels, {attack: correct}) from save_per_image's file; no pickled objects are loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no per-image results at {path} (runs evaluated before they were recorded "
                                f"have none: absld_core.experiments.record_per_image(run_dir) evaluates the run again and records them)")
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = z["labels"]
            correct = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("correct/")}
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"{path} is not a per-image results file: {e}") from e
    bad = [k for k, v in correct.items() if v.shape != labels.shape or v.dtype != bool]
    if labels.ndim != 1 or bad:
        raise ValueError(f"{path}: per-image arrays do not match the labels ({bad or 'labels not 1-D'})")
    return labels, correct


def load_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation table at {path}")
    if path.suffix == ".json":
        payload = json.loads(path.read_text())
        rows = payload["rows"] if "rows" in payload else payload
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.attrs.update(payload.get("attrs", {}))
    else:
        df = pd.read_csv(path, index_col=0, dtype={"worst_class": str})
    df.index.name = "attack"
    return df


def format_table(df: pd.DataFrame, digits: int = 1) -> str:
    """The table as aligned text: one row per attack, summary columns then classes."""
    out = df.copy()
    for c in out.columns:
        if c not in ("worst_class", "n"):
            out[c] = out[c].astype(float).round(digits if c != "nsd" else 3)
    return out.to_string()
