"""The smoothness-vs-fairness observation: the same student trained with the same soft-label smoothness
for every class (SSD) and with class-wise smoothness (DSD: sharper for the hard classes).

Smoothness is set either by the teacher temperature in distillation (ABSLD with fixed class-wise
temperatures) or by class-wise label smoothing of one-hot labels in PGD-AT. Which classes are hard
comes from a reference run's class-wise robust error on the validation split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .methods.absld import ABSLD
from .methods.pgd_at import PGDAT
from .runs import load_run


def class_error(run_dir: str | Path, attack: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Class-wise robust error (%) from the run's last validation evaluation (the test set stays unused)."""
    rec = load_run(run_dir)
    hist = rec["history"]
    vals = [v for v in hist.get("val", []) if isinstance(v, dict) and v]
    if not vals:
        raise ValueError(f"{run_dir} has no validation evaluation to rank classes by")
    last = vals[-1]
    key = attack or [a for a in last if a != "clean"][-1]
    return 100.0 - np.asarray(last[key]["class_acc"], dtype=float), rec["config"]["resolved"]["classes"]


def ranking(error: np.ndarray, classes: list[str]) -> list[str]:
    """Every class from the hardest (highest error) to the easiest: the one ranking of hard classes."""
    return [classes[i] for i in np.argsort(-np.asarray(error, dtype=float))]


def hard_by_seed(references: dict, n_hard: int) -> dict[int, list[str]]:
    """{seed: the n_hard hardest classes of that seed's reference run}: each seed's DSD follows its own."""
    return {seed: ranking(*class_error(run))[:n_hard] for seed, run in references.items()}


def ranked_differently(hard_of: dict[int, list[str]]) -> bool:
    """Whether the seeds' reference runs name different hardest classes (hard_by_seed's result)."""
    return len({tuple(h) for h in hard_of.values()}) > 1


def pair_hard_words(hard_words: str, hard_of: dict[int, list[str]]) -> str:
    """The study's hard-class caption for an SSD/DSD figure: where the seeds' reference runs rank their
    hardest classes differently, it adds that each seed's DSD follows its own."""
    if ranked_differently(hard_of):
        return f"{hard_words};\neach seed's DSD follows its own reference run's ranking"
    return hard_words


def dsd_values(error: np.ndarray, sharp: float, smooth: float) -> np.ndarray:
    """Per class, linear in the class error: the hardest class gets `sharp`, the easiest `smooth`."""
    e = np.asarray(error, dtype=float)
    span = e.max() - e.min()
    if span == 0:
        return np.full_like(e, (sharp + smooth) / 2)
    return smooth - (e - e.min()) / span * (smooth - sharp)


@dataclass
class Plan:
    classes: list[str]
    error: np.ndarray
    hard: list[str]
    tau_dsd: np.ndarray
    tau_ssd: float
    ls_dsd: np.ndarray
    ls_ssd: float

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"reference robust error (%)": self.error, "hard": [c in self.hard for c in self.classes],
                             "DSD temperature": self.tau_dsd, "SSD temperature": self.tau_ssd,
                             "DSD label smoothing": self.ls_dsd, "SSD label smoothing": self.ls_ssd},
                            index=self.classes).round(3)


def plan(error: np.ndarray, classes: list[str], n_hard: int, tau_sharp: float, tau_smooth: float,
         ls_sharp: float, ls_smooth: float) -> Plan:
    """DSD values from the class errors; SSD uses their mean, so both have the same average smoothness."""
    if not (0 < tau_sharp <= tau_smooth):
        raise ValueError(f"need 0 < tau_sharp <= tau_smooth, got {tau_sharp}, {tau_smooth}")
    if not (0 <= ls_sharp <= ls_smooth <= 1):
        raise ValueError(f"need 0 <= ls_sharp <= ls_smooth <= 1, got {ls_sharp}, {ls_smooth}")
    if not (1 <= n_hard < len(classes)):
        raise ValueError(f"n_hard must lie in [1, {len(classes) - 1}], got {n_hard}")
    tau = dsd_values(error, tau_sharp, tau_smooth)
    ls = dsd_values(error, ls_sharp, ls_smooth)
    return Plan(list(classes), np.asarray(error, float), ranking(error, classes)[:n_hard], tau,
                float(tau.mean()), ls, float(ls.mean()))


PAIR_LABELS = ("SSD (temperature)", "DSD (temperature)", "SSD (label smoothing)", "DSD (label smoothing)")


def pair_configs(base: dict, reference: str | Path, p: Plan) -> dict[str, dict]:
    """The four configs by label: SSD/DSD by teacher temperature (distilling from the reference) and by
    label smoothing (PGD-AT), identical to `base` (its name included: the plan names the runs) but for
    the method."""
    teacher = {"checkpoint": str(reference)}
    kd = lambda tau: {"name": ABSLD.name, "teacher": teacher, "temperature_schedule": "fixed",  # noqa: E731
                      "tau_init_adv": [float(t) for t in np.broadcast_to(tau, (len(p.classes),))],
                      "tau_init_nat": [float(t) for t in np.broadcast_to(tau, (len(p.classes),))]}
    ls = lambda s: {"name": PGDAT.name,  # noqa: E731
                    "label_smoothing": [float(v) for v in np.broadcast_to(s, (len(p.classes),))]}
    methods = (kd(p.tau_ssd), kd(p.tau_dsd), ls(p.ls_ssd), ls(p.ls_dsd))
    return {label: {**base, "method": m} for label, m in zip(PAIR_LABELS, methods)}
