"""Run directories of record: config.json, history.jsonl, checkpoints, metrics.json, status.json.

Every file is written atomically (temporary file, then rename), so a killed run never leaves a
half-written record behind.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import atomic_write

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None

# what a run directory holds; nothing else is ever deleted by overwrite
RUN_FILES = ("config.json", "history.jsonl", "status.json", "last.pt", "best.pt", "fair_best.pt",
             "averaged.pt", "metrics.json", "metrics.csv", "per_image.npz", "run.lock")
_TEMP = re.compile(r"^(" + "|".join(re.escape(f) for f in RUN_FILES) + r").*\.tmp$")
_TRACKER_FILES = re.compile(r"^events\.out\.tfevents\.")  # TensorBoard's event files (trackers/tensorboard.py)


class RunExistsError(FileExistsError):
    """The run directory already holds a run (or other files) and neither resume nor overwrite applies."""


class RunLockedError(RuntimeError):
    """Another process is writing this run directory."""


class RunRecordError(ValueError):
    """A run's record file (config.json, status.json, history.jsonl) that is not valid JSON."""


def read_json(path: Path) -> Any:
    """A run record, with a broken file named (and what to do) instead of a bare JSONDecodeError."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise RunRecordError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): the file is "
                             f"damaged; restore it, or train the run again with --overwrite") from None


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
    return atomic_write(path, lambda f: f.write(text), binary=False)


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
    per_image = property(lambda self: self.path / "per_image.npz")

    def checkpoint(self, which: str) -> Path:
        return self.path / f"{which}.pt"

    def checkpoint_or_last(self, which: str) -> Path | None:
        """The run's `which` checkpoint (fair_best, best, last, averaged), else its last.pt, else None."""
        for cand in (self.checkpoint(which), self.last):
            if cand.is_file():
                return cand
        return None

    def exists(self) -> bool:
        """True when the directory holds anything besides its lock file."""
        return self.path.is_dir() and any(p.name != "run.lock" for p in self.path.iterdir())

    def foreign_entries(self) -> list[str]:
        """Names in the directory that this project's runs do not write (the user's own files)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.path.iterdir()
                      if not (p.is_file() and (p.name in RUN_FILES or _TEMP.match(p.name) or _TRACKER_FILES.match(p.name))))

    def clear(self) -> None:
        """Delete the run's record (never the lock, never anything else); refuses a foreign directory."""
        foreign = self.foreign_entries()
        if foreign:
            raise RunExistsError(f"{self.path} is not only a run directory: it also holds {', '.join(foreign[:8])}"
                                 f"{' ...' if len(foreign) > 8 else ''}; refusing to delete anything there")
        for p in self.path.iterdir():
            if p.name != "run.lock":
                p.unlink()

    def lock(self) -> "RunLock":
        """Hold the directory for one writer until the returned lock is released (or the process dies)."""
        return RunLock(self.path / "run.lock")

    def status(self) -> dict:
        """status.json; a "running" one that no process is writing (no holder of run.lock: the process was
        killed, or its disk filled before it could record the failure) reads as "interrupted"."""
        if not self.status_file.is_file():
            return {}
        s = read_json(self.status_file)
        if isinstance(s, dict) and s.get("state") == "running" and not _lock_held(self.path / "run.lock"):
            return {**s, "state": "interrupted", "recorded_state": "running"}
        return s

    def set_status(self, state: str, **info) -> None:
        write_json_atomic(self.status_file, {"state": state, **info})

    def finished(self) -> bool:
        return self.status().get("state") == "finished" and self.metrics.is_file()

    def history(self) -> list[dict]:
        if not self.history_file.is_file():
            return []
        out = []
        for i, line in enumerate(self.history_file.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RunRecordError(f"{self.history_file} line {i} is not valid JSON ({e.msg}): the file is "
                                         f"damaged; --resume rewrites it from last.pt") from None
        return out

    def read_config(self) -> dict:
        return read_json(self.config)

    def append_history(self, record: dict) -> None:
        before = self.history_file.read_text() if self.history_file.is_file() else ""
        write_text_atomic(self.history_file, before + json.dumps(_clean(record)) + "\n")

    def truncate_history(self, last_epoch: int, last_record: dict | None = None) -> None:
        """Make the history agree with the checkpoint of `last_epoch`: drop records past it (a kill between
        the history and the checkpoint writes) and put back its own record when that line is missing."""
        keep = [r for r in self.history() if r["epoch"] <= last_epoch]
        if last_record is not None and not any(r["epoch"] == last_epoch for r in keep):
            keep.append(last_record)
        write_text_atomic(self.history_file, "".join(json.dumps(_clean(r)) + "\n" for r in keep))


def _lock_held(path: Path) -> bool:
    """Whether the process whose pid run.lock names (its last writer) is alive. Read only, never a
    lock attempt: probing with flock could make a writer starting at that moment see the run taken."""
    try:
        pid = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # alive, another user's
    return True


class RunLock:
    """An exclusive flock on <run>/run.lock, holding the writer's pid; released when the process ends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+")
        if fcntl is None:
            return
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.seek(0)
            holder = self._f.read().strip() or "unknown"
            self._f.close()
            raise RunLockedError(f"{self.path.parent} is being written by another process (pid {holder}); "
                                 f"wait for it to finish or stop it, or give this run another name") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"{os.getpid()}\n")
        self._f.flush()

    def release(self) -> None:
        if not self._f.closed:
            try:   # no writer any more: a status left at "running" (a failure a full disk kept out) reads interrupted
                self._f.seek(0)
                self._f.truncate()
                self._f.flush()
            except OSError:
                pass
            if fcntl is not None:
                fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def load_run(path: str | os.PathLike) -> dict:
    """Everything a notebook needs from a run directory: config, history (DataFrame), metrics table."""
    from .evaluate import load_table

    run = RunDir(path)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.path} is not a run directory (no config.json)")
    out = {"path": run.path, "config": run.read_config(),
           "history": pd.DataFrame(run.history()), "status": run.status(), "metrics": None}
    if run.metrics.is_file():
        out["metrics"] = load_table(run.metrics)
    return out
