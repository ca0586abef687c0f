"""Run directories of record: config.json, history.jsonl, checkpoints, metrics.json, status.json.

Every file is written atomically (temporary file, then rename), so a killed run never leaves a
half-written record behind.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


class RunExistsError(FileExistsError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


def _clean(v: Any):
    """JSON-safe: NaN/inf become None, tensors and numpy values become lists and numbers."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(_clean(obj), indent=1) + "\n")


class RunDir:
    """One training run on disk."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    history_file = property(lambda self: self.path / "history.jsonl")
    metrics = property(lambda self: self.path / "metrics.json")
    status_file = property(lambda self: self.path / "status.json")
    last = property(lambda self: self.path / "last.pt")

    def checkpoint(self, which: str) -> Path:
        return self.path / f"{which}.pt"

    def exists(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def status(self) -> dict:
        if not self.status_file.is_file():
            return {}
        return json.loads(self.status_file.read_text())

    def set_status(self, state: str, **info) -> None:
        write_json_atomic(self.status_file, {"state": state, **info})

    def finished(self) -> bool:
        return self.status().get("state") == "finished" and self.metrics.is_file()

    def history(self) -> list[dict]:
        if not self.history_file.is_file():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]

    def append_history(self, record: dict) -> None:
        before = self.history_file.read_text() if self.history_file.is_file() else ""
        write_text_atomic(self.history_file, before + json.dumps(_clean(record)) + "\n")

    def truncate_history(self, last_epoch: int) -> None:
        """Drop records past the checkpointed epoch (a kill between history and checkpoint writes)."""
        keep = [r for r in self.history() if r["epoch"] <= last_epoch]
        write_text_atomic(self.history_file, "".join(json.dumps(r) + "\n" for r in keep))


def load_run(path: str | os.PathLike) -> dict:
    """Everything a notebook needs from a run directory: config, history (DataFrame), metrics table."""
    from .evaluate import load_table

    run = RunDir(path)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.path} is not a run directory (no config.json)")
    out = {"path": run.path, "config": json.loads(run.config.read_text()),
           "history": pd.DataFrame(run.history()), "status": run.status(), "metrics": None}
    if run.metrics.is_file():
        out["metrics"] = load_table(run.metrics)
    return out
