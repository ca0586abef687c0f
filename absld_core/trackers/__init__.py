"""Experiment trackers: what a run shows while it trains, beside its history.jsonl.

    TrainConfig(trackers=("tensorboard",))    # the default; () turns tracking off

A tracker is one file in this folder that registers a class with `@register("name")`: the engine
calls `epoch(record)` once per epoch, after the epoch's line is in history.jsonl (never inside a
training step, so no host-device sync is added), `final(table_markdown)` after the test evaluation,
and `close()`. Every value it gets is already a plain number on the host. A resumed run calls
`restart(history)` first: the tracker writes its record again from the run's (truncated) history, so
its curves agree with history.jsonl after any kill, with no step missing or repeated. Weights & Biases
or MLflow would be one more file here.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from pathlib import Path

_TRACKERS: dict[str, type] = {}


class TrackerError(ValueError):
    """An unknown tracker, or one whose package is missing."""


def register(name: str):
    def add(cls):
        cls.name = name
        _TRACKERS[name] = cls
        return cls
    return add


def names() -> list[str]:
    return sorted(_TRACKERS)


class Tracker:
    """The interface; `classes` are the run's class names (tags name them)."""
    name = ""

    def __init__(self, run_dir: Path, classes: list[str], run_name: str):
        self.run_dir, self.classes, self.run_name = Path(run_dir), list(classes), run_name

    def epoch(self, record: dict) -> None:
        raise NotImplementedError

    def restart(self, history: list[dict]) -> None:
        """Start the record again from a run's history (a resume after a kill)."""
        raise NotImplementedError

    def final(self, table_markdown: str) -> None:
        pass

    def close(self) -> None:
        pass


def _number(v) -> float | None:
    """A finite number as float; anything else (None, NaN, text, lists) as None. history.jsonl records
    NaN as null, so a tracker writes exactly what the history can say."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def scalars(record: dict, classes: list[str]) -> dict[str, float]:
    """One epoch's history record as tag -> value, grouped so that TensorBoard's default view reads well:
    train/* (loss, lr, images/s, HAM's kept fraction, ABSLD's eta, any other number a method records),
    one section per class-wise quantity with the classes named (class_risk_adv/3, tau_adv/3, FRL's and
    CFA's class weights and eps), and per validation attack val_<attack>/{avg,worst,nsd} and
    val_<attack>_class/<class>. Values that are not finite numbers are left out."""
    out = {}
    C = len(classes)

    def put(tag, v):
        x = _number(v)
        if x is not None:
            out[tag] = x

    for key, v in record.items():
        if key in ("epoch", "val"):
            continue
        if isinstance(v, list) and len(v) == C:
            for c, x in zip(classes, v):
                put(f"{key}/{c}", x)
        else:
            put(f"train/{key}", v)
    for attack, row in (record.get("val") or {}).items():
        for m in ("avg", "worst", "nsd"):
            put(f"val_{attack}/{m}", row.get(m))
        for c, x in zip(classes, row.get("class_acc") or []):
            put(f"val_{attack}_class/{c}", x)
    return out


def build(names_: tuple | list, run_dir: Path, classes: list[str], run_name: str) -> list[Tracker]:
    out = []
    for n in names_:
        if n not in _TRACKERS:
            raise TrackerError(f"trackers: unknown tracker {n!r}; known: {', '.join(names()) or 'none'} (or [] for none)")
        out.append(_TRACKERS[n](run_dir, classes, run_name))
    return out


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
