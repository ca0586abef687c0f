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
from .findings import Findings, zeros_text
from .study import StudyError, run_classes, write_summary


@dataclass
class Report:
    runs: dict
    classes: list
    per_seed: pd.DataFrame
    attack: str                 # the attack the claims and the class tables use (PGD-20 when there is one)
    tables: dict                # {attack: mean over seeds [95% interval] of Avg / Worst / NSD and classes}
    claims: list
    findings: Findings = None    # the records, and what the temperature and kept-fraction figures show

    @property
    def claims_text(self) -> str:
        return "\n".join(f"- {s}" for s in self.claims) or "(the methods these claims compare were not run)"


def compare(runs: dict, hard=()) -> Report:
    """The report of finished runs; `hard`: the study's hard classes (plan.hard_classes), for the findings."""
    if not runs:
        raise StudyError("no finished runs to compare: train the study first (absld sweep, or notebooks 01-03)")
    classes = run_classes(next(iter(runs.values())))
    per_seed = intervals.per_seed_table(runs)
    attack = "pgd20" if "pgd20" in set(per_seed["attack"]) else per_seed["attack"].iloc[-1]
    tables = {a: intervals.summarise(runs, a, classes=classes) for a in per_seed["attack"].unique()}
    F = Findings.of(runs, hard)
    F.zeros = zeros_text(per_seed, attack, classes)
    return Report(runs, classes, per_seed, attack, tables, claims.student_claims(runs, attack, classes), F)


def write(report: Report, figure_dir: str | Path, title: str) -> tuple[Path, Path]:
    """per_seed.csv, summary.md, summary.csv and class_wise_<attack>.csv in figure_dir."""
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    from .runs import write_text_atomic

    write_text_atomic(figure_dir / "per_seed.csv", report.per_seed.to_csv(index=False))
    notes = "\n".join(f"- {f}" for f in (report.findings.sentences if report.findings else []))
    return write_summary(report.tables, figure_dir, title, report.attack, report.claims_text, notes)


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
        hard = plan.hard_classes(P)
        report = compare(plan.finished_runs(P), hard[0] if hard else ())
        md, csv = write(report, P["figure_dir"], f"Study '{spec['name']}': class-wise robustness (test set)")
        return md.resolve(), csv.resolve()
    finally:
        os.chdir(cwd)


def conclusion(report: Report) -> str:
    """Notebook 04's closing paragraph, computed: each claim's verdict, what the intervals cover, and
    which student is ahead on the worst class by paired differences (claims.leader)."""
    from .intervals import scope
    from .vocab import attack_label

    n = int(report.tables[report.attack]["n_seeds"].max())
    students = {k: v for k, v in report.runs.items() if k != "teacher"}
    lines = [f"Over {n} seed(s) ({scope(n)}), {len(students)} students, {attack_label(report.attack)} on the test set."]
    for c in report.claims:
        head = c.split(". ", 1)[0]
        lines.append(f"- {head}.")
    if len(students) > 1:
        lines.append("\n" + claims.leader(students, report.attack, report.classes, "worst"))
    return "\n".join(lines)


def write_smoothness(verdicts: dict, figure_dir: str | Path, preset: str) -> Path:
    """Notebook 01's statements (per smoothness kind: the paired differences and the verdict) as
    figures/<preset>/smoothness.md, the file the docs quote for claim (a)."""
    from .runs import write_text_atomic

    body = "\n\n".join(f"## By {kind}\n\n{text}" for kind, text in verdicts.items())
    return write_text_atomic(Path(figure_dir) / "smoothness.md",
                             f"# Study '{preset}': SSD vs DSD, PGD-20 on the test set (notebook 01)\n\n{body}\n")
