"""Study building blocks shared by the notebooks and the bench scripts: a teacher and every student
method under one budget, and the comparison tables built from run directories alone."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .evaluate import SUMMARY_COLUMNS
from .runs import RunDir, load_run



def student_methods() -> list[str]:
    """The methods the study compares: every registered method that joins it (the registry's list)."""
    from .methods import registry
    return registry.student_names()


class RetrainRefused(RuntimeError):
    """A finished (or started) run would be trained again because its configuration changed, and the
    caller did not ask for that (a notebook's `retrain` parameter)."""


def run_state(cfg: dict) -> tuple[str, list[str]]:
    """Where the run of `cfg` stands, and the fields of its config.json that differ from cfg:
    'new' (no run yet), 'done' (finished with this config), 'unfinished' (to resume), 'reevaluate'
    (finished; only evaluation fields differ: evaluated again, no training) or 'changed' (a field
    that changes training differs: it would be trained again)."""
    from .config import EVALUATION_FIELDS, TrainConfig, config_changes, normalised

    run = RunDir(Path(cfg.get("out_dir", "runs")) / cfg["name"])
    if not run.config.is_file():
        return "new", []
    new = TrainConfig.from_dict({**cfg, "resume": False, "overwrite": False}).to_json()
    changed = config_changes(normalised(run.read_config()), new)
    if changed:
        if run.finished() and all(c in EVALUATION_FIELDS for c in changed):
            return "reevaluate", changed
        return "changed", changed
    return ("done" if run.finished() else "unfinished"), []


def run_or_resume(cfg: dict, log=print, retrain: bool = True) -> Path:
    """Train a run: reuse a finished run with the same config, continue an unfinished one, evaluate a
    finished one again when only evaluation fields changed, and train again (saying why) when a
    training field changed, or, with retrain=False, refuse to (RetrainRefused names the fields)."""
    from .engine import reevaluate, train

    run = RunDir(Path(cfg.get("out_dir", "runs")) / cfg["name"])
    state, changed = run_state(cfg)
    if state == "new":
        return train({**cfg, "resume": False, "overwrite": run.exists()})
    if state == "reevaluate":
        log(f"{run.path}: only the evaluation changed ({', '.join(changed)}); evaluating the finished run again, "
            f"no training")
        return reevaluate(cfg, changed)
    if state == "changed":
        if not retrain:
            raise RetrainRefused(f"{run.path} would be trained again: {', '.join(changed[:6])} changed")
        log(f"{run.path}: configuration changed ({', '.join(changed[:6])}); training again")
        return train({**cfg, "resume": False, "overwrite": True})
    if state == "done":
        _say_thread_difference(run, cfg, log)
    return train({**cfg, "resume": True, "overwrite": False})


def _say_thread_difference(run: RunDir, cfg: dict, log) -> None:
    """A reused run whose thread count was not fixed, trained with another count than this process has."""
    import torch

    recorded = run.read_config().get("resolved", {}).get("intra_op_threads")
    if cfg.get("threads") is None and recorded is not None and recorded != torch.get_num_threads():
        log(f"{run.path}: reused; it trained with {recorded} thread(s), this process has {torch.get_num_threads()} "
            f"(bf16 on a CPU gives other weights with another count: set threads to fix it)")


def record_per_image(run_dir: str | Path, device: str = "cpu") -> Path:
    """Write per_image.npz for a finished run evaluated before per-image results were recorded (the
    intervals resample them): the checkpoint its metrics.json names, evaluated again with the run's own
    test attacks and settings. The evaluation is seeded, so it must reproduce metrics.json; if it does
    not, nothing is written and the error says by how much. Returns the file's path."""
    import numpy as np

    from .config import TrainConfig
    from .engine import prepare_data
    from .evaluate import evaluate_per_image, load_table, save_per_image
    from .checks import check_device
    from .models import model_from_checkpoint

    check_device(str(device))   # before blaming the checkpoint for a device this machine lacks
    run = RunDir(run_dir)
    if not run.finished():
        raise ValueError(f"{run.path} is not a finished run (status {run.status().get('state', 'missing')!r}); "
                         f"only a finished run's final evaluation can be recorded again")
    if run.per_image.is_file():
        return run.per_image
    cfg = TrainConfig.from_dict(run.read_config())  # from_dict sets the recorded "resolved" aside
    recorded = load_table(run.metrics)
    checkpoint = run.path / str(recorded.attrs.get("checkpoint", ""))
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run.path}: metrics.json names checkpoint {checkpoint.name!r}, which is not there")
    ds = prepare_data(cfg)
    model, _ = model_from_checkpoint(checkpoint, device)
    df, correct = evaluate_per_image(model, ds.test_x, ds.test_y, list(recorded.index), classes=ds.classes,
                                     eps=cfg.attack.eps, pgd_alpha=cfg.attack.eval_alpha, device=device,
                                     progress=False, aa_opts=cfg.attack.aa_options())
    cols = [c for c in ["avg", *ds.classes] if c in recorded.columns and c in df.columns]
    gap = float(np.abs(df.loc[recorded.index, cols].to_numpy(float) - recorded[cols].to_numpy(float)).max())
    if gap > 1e-6:
        raise ValueError(f"{run.path}: evaluating {checkpoint.name} again gives accuracies up to {gap:.3g} points "
                         f"away from metrics.json (another torch or device?); per_image.npz not written")
    return save_per_image(run.per_image, ds.test_y, correct)


def student_configs(base: dict, teacher_dir: str | Path, methods: Iterable[str] | None = None,
                    method_options: dict | None = None) -> dict[str, dict]:
    """One config per student method (None: every student method of the registry), identical but for
    the method (and its teacher). Options in base's `method` go to each method that has them."""
    from .methods import registry

    out = {}
    for m in (student_methods() if methods is None else methods):
        cls = registry.get(m)
        cfg = copy.deepcopy(base)
        method = {"name": m, **copy.deepcopy((method_options or {}).get(m, {}))}
        if cls.needs_teacher:
            method["teacher"] = {"checkpoint": str(teacher_dir)}
        own = registry.option_names(m)
        shared = {k: v for k, v in cfg.get("method", {}).items() if k in own}
        cfg["method"] = {**shared, **method}
        cfg["name"] = f"{base.get('name', 'student')}-{m}"
        out[m] = cfg
    return out


def train_students(base: dict, teacher_dir: str | Path, methods: Iterable[str] | None = None,
                   method_options: dict | None = None) -> dict[str, Path]:
    return {m: run_or_resume(c) for m, c in student_configs(base, teacher_dir, methods, method_options).items()}


def row_label(label: str, metrics: pd.DataFrame) -> str:
    """A table row's name; a run whose checkpoint was selected on the test set says so."""
    return f"{label} (test-selected)" if metrics.attrs.get("selection") == "test" else label


def summary_table(runs: dict[str, str | Path], attacks: Sequence[str] | None = None) -> pd.DataFrame:
    """Avg / Worst / NSD per method and attack from the runs' metrics.json (rows: methods)."""
    rows = {}
    for label, path in runs.items():
        rec = load_run(path)
        df = rec["metrics"]
        if df is None:
            continue
        label = row_label(label, df)
        hist = rec["history"]
        row = {}
        for a in (attacks or df.index):
            if a not in df.index:
                continue
            for col in ("avg", "worst", "nsd"):
                row[(a, col)] = float(df.loc[a, col])
            row[(a, "worst_class")] = df.loc[a, "worst_class"]
        if len(hist):
            row[("train", "seconds")] = float(hist["seconds"].sum())
            if "kept_fraction" in hist:
                row[("train", "kept_fraction")] = float(hist["kept_fraction"].mean())
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    if len(table.columns):
        table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def class_table(runs: dict[str, str | Path], attack: str = "pgd20") -> pd.DataFrame:
    """Method x class accuracy under one attack (for heatmaps and bar plots)."""
    rows = {}
    for label, path in runs.items():
        df = load_run(path)["metrics"]
        if df is not None and attack in df.index:
            classes = df.attrs.get("classes") or [c for c in df.columns if c not in SUMMARY_COLUMNS]
            rows[row_label(label, df)] = {c: float(df.loc[attack, c]) for c in classes}
    return pd.DataFrame.from_dict(rows, orient="index")


def markdown_summary(table: pd.DataFrame, digits: int = 1) -> str:
    """The summary table as GitHub markdown (one header row: 'attack metric')."""
    if table.empty:
        return "(no finished runs)\n"
    cols = [" ".join(c) if isinstance(c, tuple) else str(c) for c in table.columns]
    lines = ["| method | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for idx, r in table.iterrows():
        cells = []
        for c, v in zip(table.columns, r.values):
            name = c[-1] if isinstance(c, tuple) else c
            if isinstance(v, float):
                cells.append(f"{v:.3f}" if name in ("nsd", "kept_fraction") else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append(f"| {idx} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
