"""The study's claims about the student methods, stated from paired differences with 95% intervals.

    runs = plan.finished_runs(P)                  # {label: {seed: run directory}} of notebooks 02 and 03
    for line in student_claims(runs, "pgd20", classes): print(line)

(b) ABSLD beats RSLAD on the worst class and NSD; (c) HAM improves the worst class over PGD-AT at a
lower training cost; (d) ABSLD+HAM beats both of its parts on the worst class; (e) ABSLD with eta
scaled against the plain one; (f) ABSLD against the best fair-AT baseline (FRL, CFA, FAT). Claim (a),
DSD vs SSD, is notebook 01's (`plots.describe_smoothness`). A claim holds only when its interval
excludes 0 in its direction, and its verdict says what the interval covers (`intervals.verdict`: a
plain "holds" needs three seeds); every number is computed from the runs, none is written in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import intervals, plan
from .vocab import attack_label
from .methods.absld import ABSLD
from .methods.absld_ham import ABSLDHAM
from .methods.cfa import CFA
from .methods.fat import FAT
from .methods.frl import FRL
from .methods.ham import HAM
from .methods.pgd_at import PGDAT
from .methods.rslad import RSLAD
from .labels import display
from .runs import load_run

FAIR_BASELINES = (FRL.name, CFA.name, FAT.name)  # the fair adversarial-training baselines



def train_seconds(by_seed: dict[int, Path]) -> float:
    """Mean over seeds of a run's training time (the history's per-epoch seconds, validation included):
    a measurement of the machine, kept out of the generated (tracked) summaries."""
    return float(np.mean([load_run(p)["history"]["seconds"].sum() for p in by_seed.values()]))


def _examples(p) -> tuple[float, float, int]:
    """(adversarial examples trained on, examples the epochs offered, epochs) of one run: an epoch's
    samples times its kept fraction (early dropping trains on fewer), summed over the epochs."""
    h = load_run(p)["history"]
    kept = h["kept_fraction"].fillna(1.0) if "kept_fraction" in h else 1.0
    return float((h["samples"] * kept).sum()), float(h["samples"].sum()), len(h)


def trained_examples(by_seed: dict[int, Path]) -> float:
    """Mean over seeds of the adversarial examples a run trained on, summed over its epochs (an epoch's
    samples times its kept fraction: early dropping trains on fewer). The same on every machine."""
    return float(np.mean([_examples(p)[0] for p in by_seed.values()]))


def cost_text(ham: dict[int, Path], base: dict[int, Path], names=("HAM", "PGD-AT")) -> tuple[float, str]:
    """(HAM / base in examples trained on, the sentence): both totals with their epochs, the fraction of
    what its epochs offered that HAM trained on, and the ratio in all and per epoch (HAM's paper runs
    120 epochs, PGD-AT 300: the total mixes fewer epochs with early dropping)."""
    h = np.array([_examples(p) for p in ham.values()])
    b = np.array([_examples(p) for p in base.values()])
    (ht, ho, he), (bt, _, be) = h.mean(axis=0), b.mean(axis=0)
    ratio, per_epoch = ht / bt, (ht / he) / (bt / be)
    return ratio, (f"Adversarial examples trained on (counts, mean over seeds, the same on every machine): "
                   f"{names[0]} {ht:,.0f} in {he:.0f} epochs, {100 * ht / ho:.0f}% of what its epochs offered "
                   f"(early dropping); {names[1]} {bt:,.0f} in {be:.0f} epochs; {names[0]} / {names[1]} {ratio:.2f} "
                   f"in all, {per_epoch:.2f} per epoch")


def _seeds(*diffs) -> int:
    return min(len(d.seeds) for d in diffs)


def student_claims(runs: dict[str, dict[int, Path]], attack: str, classes: list[str]) -> list[str]:
    """Claims (b)-(f) for the methods present, each with its computed differences and a verdict."""
    out = []

    def diff(a, b):
        return intervals.paired_difference(runs[a], runs[b], attack, names=(display(a), display(b)), classes=classes)

    verdict = intervals.verdict
    have = lambda *names: all(n in runs for n in names)  # noqa: E731
    if have(ABSLD.name, RSLAD.name):
        d = diff(ABSLD.name, RSLAD.name)
        ok = d["worst"][1] > 0 and d["nsd"][2] < 0
        out.append(f"(b) ABSLD beats RSLAD on the worst class and NSD: {verdict(ok, _seeds(d))}. "
                   f"{intervals.describe(d, 'worst')}. {intervals.describe(d, 'nsd')}.")
    if have(HAM.name, PGDAT.name):
        d = diff(HAM.name, PGDAT.name)
        cost, text = cost_text(runs[HAM.name], runs[PGDAT.name])
        ok = d["worst"][1] > 0 and cost < 1
        out.append(f"(c) HAM improves the worst class at a lower cost than PGD-AT: {verdict(ok, _seeds(d))}. "
                   f"{intervals.describe(d, 'worst')}. {text}.")
    if have(ABSLDHAM.name, ABSLD.name, HAM.name):
        d1, d2 = diff(ABSLDHAM.name, ABSLD.name), diff(ABSLDHAM.name, HAM.name)
        ok = d1["worst"][1] > 0 and d2["worst"][1] > 0
        out.append(f"(d) ABSLD+HAM beats both of its parts on the worst class: {verdict(ok, _seeds(d1, d2))}. "
                   f"{intervals.describe(d1, 'worst')}. {intervals.describe(d2, 'worst')}.")
    if have(plan.ETA_SCALED, ABSLD.name):
        d = diff(plan.ETA_SCALED, ABSLD.name)
        out.append(f"(e) ABSLD with eta scaled to the paper's temperature travel, against the plain squeeze: "
                   f"{intervals.describe(d, 'worst')}. {intervals.describe(d, 'avg')}. {intervals.describe(d, 'nsd')}.")
    fair = [m for m in FAIR_BASELINES if m in runs]
    if have(ABSLD.name) and fair:
        point = intervals.summarise({m: runs[m] for m in fair}, attack, n_boot=1, classes=classes)["worst"]
        best = str(point.astype(float).idxmax())
        d = diff(ABSLD.name, best)
        ok = d["worst"][1] > 0
        out.append(f"(f) ABSLD beats the best fair-AT baseline on the worst class: {verdict(ok, _seeds(d))}. "
                   f"The fair-AT baseline with the highest worst-class point estimate is {display(best)} (of "
                   f"{', '.join(display(m) for m in fair)}). {intervals.describe(d, 'worst')}. "
                   f"{intervals.describe(d, 'avg')}. {intervals.describe(d, 'nsd')}.")
    return out


def leader(runs: dict[str, dict[int, Path]], attack: str, classes: list[str], metric: str = "worst") -> str:
    """Which run has the highest point estimate of `metric` (lowest for NSD) and, from paired differences
    against each other run, which it is distinguishably ahead of and which it is not: a ranking of point
    estimates alone claims more than overlapping intervals allow."""
    point = intervals.summarise(runs, attack, n_boot=1, classes=classes)[metric].astype(float)
    best = str(point.idxmin() if metric == "nsd" else point.idxmax())
    ahead, tied = [], []
    for other in runs:
        if other == best:
            continue
        d = intervals.paired_difference(runs[best], runs[other], attack, classes=classes)
        diff, lo, hi = d[metric]
        (ahead if ((hi < 0) if metric == "nsd" else (lo > 0)) else tied).append(
            f"{display(other)} ({diff:+.1f}, {lo:+.1f} to {hi:+.1f})" if metric != "nsd" else
            f"{display(other)} ({diff:+.3f}, {lo:+.3f} to {hi:+.3f})")
    what = intervals.METRIC_WORDS.get(metric, metric)
    text = (f"**{display(best)}** has the best {what} {attack_label(attack)} point estimate "
            f"({point[best]:.1f}{'' if metric == 'nsd' else '%'}). Paired differences {display(best)} - other "
            f"[95% CI]: ")
    parts = []
    if ahead:
        parts.append("distinguishably ahead of " + ", ".join(ahead))
    if tied:
        parts.append("not distinguishable from " + ", ".join(tied))
    n = len(next(iter(runs.values())))
    return text + "; ".join(parts) + f" ({intervals.scope(n)})."
