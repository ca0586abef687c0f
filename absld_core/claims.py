"""The study's claims about the student methods, stated from paired differences with 95% intervals.

    runs = plan.finished_runs(P)                  # {label: {seed: run directory}} of notebooks 02 and 03
    for line in student_claims(runs, "pgd20", classes): print(line)

(b) ABSLD beats RSLAD on the worst class and NSD; (c) HAM improves the worst class over PGD-AT at a
lower training cost; (d) ABSLD+HAM beats both of its parts on the worst class. Claim (a), DSD vs SSD,
is notebook 01's (`plots.describe_smoothness`). A claim "holds" only when its interval excludes 0 in
its direction; every number is computed from the runs, none is written in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import intervals, plan
from .methods.absld import ABSLD
from .methods.absld_ham import ABSLDHAM
from .methods.ham import HAM
from .methods.pgd_at import PGDAT
from .methods.rslad import RSLAD
from .methods import registry
from .runs import load_run

def display(label: str) -> str:
    """A run label as tables name it: the method's display name from the registry."""
    return "ABSLD (eta scaled)" if label == plan.ETA_SCALED else registry.display_name(label)


def train_seconds(by_seed: dict[int, Path]) -> float:
    """Mean over seeds of a run's training time (the history's per-epoch seconds, validation included):
    a measurement of the machine, kept out of the generated (tracked) summaries."""
    return float(np.mean([load_run(p)["history"]["seconds"].sum() for p in by_seed.values()]))


def trained_examples(by_seed: dict[int, Path]) -> float:
    """Mean over seeds of the adversarial examples a run trained on, summed over its epochs (an epoch's
    samples times its kept fraction: early dropping trains on fewer). The same on every machine."""
    def one(p):
        h = load_run(p)["history"]
        kept = h["kept_fraction"].fillna(1.0) if "kept_fraction" in h else 1.0
        return float((h["samples"] * kept).sum())
    return float(np.mean([one(p) for p in by_seed.values()]))


def _verdict(ok: bool) -> str:
    return "**holds**" if ok else "**not shown**"


def student_claims(runs: dict[str, dict[int, Path]], attack: str, classes: list[str]) -> list[str]:
    """Claims (b)-(d) for the methods present, each with its computed differences and a verdict."""
    out = []

    def diff(a, b):
        return intervals.paired_difference(runs[a], runs[b], attack, names=(display(a), display(b)), classes=classes)

    have = lambda *names: all(n in runs for n in names)  # noqa: E731
    if have(ABSLD.name, RSLAD.name):
        d = diff(ABSLD.name, RSLAD.name)
        ok = d["worst"][1] > 0 and d["nsd"][2] < 0
        out.append(f"(b) ABSLD beats RSLAD on the worst class and NSD: {_verdict(ok)}. "
                   f"{intervals.describe(d, 'worst')}. {intervals.describe(d, 'nsd')}.")
    if have(HAM.name, PGDAT.name):
        d = diff(HAM.name, PGDAT.name)
        cost = trained_examples(runs[HAM.name]) / trained_examples(runs[PGDAT.name])
        ok = d["worst"][1] > 0 and cost < 1
        out.append(f"(c) HAM improves the worst class at a lower cost than PGD-AT: {_verdict(ok)}. "
                   f"{intervals.describe(d, 'worst')}. Adversarial examples trained on, HAM / PGD-AT: {cost:.2f} "
                   f"(summed over each run's epochs, mean over seeds; a count, the same on every machine).")
    if have(ABSLDHAM.name, ABSLD.name, HAM.name):
        d1, d2 = diff(ABSLDHAM.name, ABSLD.name), diff(ABSLDHAM.name, HAM.name)
        ok = d1["worst"][1] > 0 and d2["worst"][1] > 0
        out.append(f"(d) ABSLD+HAM beats both of its parts on the worst class: {_verdict(ok)}. "
                   f"{intervals.describe(d1, 'worst')}. {intervals.describe(d2, 'worst')}.")
    if have(plan.ETA_SCALED, ABSLD.name):
        d = diff(plan.ETA_SCALED, ABSLD.name)
        out.append(f"(e) ABSLD with eta scaled to the paper's temperature travel, against the plain squeeze: "
                   f"{intervals.describe(d, 'worst')}. {intervals.describe(d, 'avg')}. {intervals.describe(d, 'nsd')}.")
    return out
