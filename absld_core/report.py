"""The study's comparison from its finished runs, with or without a notebook: per-seed results, the
mean over seeds with 95% intervals per attack, the claims from paired differences, and the files
(figures/<preset>/per_seed.csv, summary.md, summary.csv, class_wise_<attack>.csv).

    report = compare(runs)                           # runs: plan.finished_runs(P)
    md, csv = write(report, "figures/smoke", "Study 'smoke'")
    absld summary --preset gpu-check                 # the same from the command line (no notebook)

Notebook 04 shows this report with its figures; `absld summary` writes it where no notebook runs (a
lent GPU machine has no papermill).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import claims, intervals
from .study import StudyError, run_classes, write_summary


@dataclass
class Report:
    runs: dict
    classes: list
    per_seed: pd.DataFrame
    attack: str                 # the attack the claims and the class tables use (PGD-20 when there is one)
    tables: dict                # {attack: mean over seeds [95% interval] of Avg / Worst / NSD and classes}
    claims: list

    @property
    def claims_text(self) -> str:
        return "\n".join(f"- {s}" for s in self.claims) or "(the methods these claims compare were not run)"


def compare(runs: dict) -> Report:
    if not runs:
        raise StudyError("no finished runs to compare: train the study first (absld sweep, or notebooks 01-03)")
    classes = run_classes(next(iter(runs.values())))
    per_seed = intervals.per_seed_table(runs)
    attack = "pgd20" if "pgd20" in set(per_seed["attack"]) else per_seed["attack"].iloc[-1]
    tables = {a: intervals.summarise(runs, a, classes=classes) for a in per_seed["attack"].unique()}
    return Report(runs, classes, per_seed, attack, tables, claims.student_claims(runs, attack, classes))


def write(report: Report, figure_dir: str | Path, title: str) -> tuple[Path, Path]:
    """per_seed.csv, summary.md, summary.csv and class_wise_<attack>.csv in figure_dir."""
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    from .runs import write_text_atomic

    write_text_atomic(figure_dir / "per_seed.csv", report.per_seed.to_csv(index=False))
    return write_summary(report.tables, figure_dir, title, report.attack, report.claims_text)


def summarise_preset(preset: str, overrides: list[str] | None = None, out_root: str | Path = ".") -> tuple[Path, Path]:
    """`absld summary`: the report of a preset's finished runs under out_root (runs/<preset>), into
    out_root/figures/<preset>."""
    import os

    from . import plan
    from .declare import N4
    from .presets import load_preset, spec_parameters

    class Parameters(dict):  # notebook 04's parameters, and each notebook's own for its runs' names
        def of(self, notebook):
            return spec_parameters(spec, notebook)

    spec = load_preset(preset, overrides)
    cwd = os.getcwd()
    os.chdir(out_root)  # run_root is relative to the study's root, as for the notebooks
    try:
        P = Parameters(spec_parameters(spec, N4))
        report = compare(plan.finished_runs(P))
        md, csv = write(report, P["figure_dir"], f"Study '{spec['name']}': class-wise robustness (test set)")
        return md.resolve(), csv.resolve()
    finally:
        os.chdir(cwd)
