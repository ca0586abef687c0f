"""What the study's figures show, as sentences computed from the runs (none typed in): where ABSLD's
temperatures end and why, how much of each batch early dropping keeps. Notebook 04 prints them under
the figures they describe.

    print(temperature_text({seed: load_run(p) for seed, p in runs[ABSLD.name].items()}, hard=["3", "8"]))
    F = Findings.of(runs, hard)          # every run's record loaded once; what report.compare keeps
    F.temperatures[ABSLD.name], F.kept, F.sentences
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Findings:
    """What the temperature and early-dropping figures show, from the study's records (loaded once):
    notebook 04 draws its figures from `records` and prints these sentences under them, and summary.md
    lists `sentences`."""
    records: dict                                      # {label: {seed: load_run(...)}}
    hard: tuple = ()
    temperatures: dict = field(default_factory=dict)   # {label: temperature_text} of each run with class temperatures
    kept: str | None = None                            # kept_text of the runs with early dropping
    zeros: str | None = None                           # zeros_text: the teacher's classes at 0% and who inherits them

    @classmethod
    def of(cls, runs: dict, hard=()) -> "Findings":
        """runs: {label: {seed: run directory}} (plan.finished_runs)."""
        from .runs import load_run

        F = cls({m: {s: load_run(p) for s, p in by_seed.items()} for m, by_seed in runs.items()}, tuple(hard))
        F.temperatures = {m: temperature_text(F.records[m], F.hard) for m in F.tempered}
        if F.dropping:
            F.kept = kept_text(F.dropping, F.starts)
        return F

    def _first(self, label: str) -> dict:
        return next(iter(self.records[label].values()))

    @property
    def tempered(self) -> list[str]:
        """The runs whose history has class-wise temperatures (ABSLD and its variants)."""
        return [m for m in self.records if "tau_adv" in self._first(m)["history"]]

    @property
    def dropping(self) -> dict:
        """{label: {seed: history}} of the runs with early dropping (HAM and ABSLD+HAM)."""
        return {m: {s: r["history"] for s, r in by.items()} for m, by in self.records.items()
                if "kept_fraction" in self._first(m)["history"]}

    @property
    def starts(self) -> dict:
        """{label: the first epoch with early dropping} of those runs."""
        return {m: int(self._first(m)["config"]["method"].get("ham_start_epoch", 1)) for m in self.dropping}

    @property
    def sentences(self) -> list[str]:
        from .labels import display

        return (([self.zeros] if self.zeros else []) + [f"{display(m)}: {t}" for m, t in self.temperatures.items()]
                + ([self.kept] if self.kept else []))


def _final(records: dict, key: str) -> np.ndarray:
    """seeds x classes: each seed's temperatures after its last epoch."""
    return np.stack([np.asarray(r["history"][key].iloc[-1], float) for r in records.values()])


def _settled(tau: np.ndarray, lo: float, hi: float) -> int | None:
    """The first epoch (1-based) from which every class that ends at a bound stays there; None when none does."""
    at = np.isclose(tau, lo) | np.isclose(tau, hi)
    ends = at[-1]
    if not ends.any():
        return None
    moving = ~at[:, ends].all(axis=1)
    last = np.flatnonzero(moving)
    return int(last[-1]) + 2 if len(last) else 1


# why classes end at tau_min / tau_max: said once, here and in the explorer (widgets._schedule_text)
WHY_BOUNDS = ("Why the bounds: the rule moves each class by eta * g / max|g|, g its risk minus the mean risk, so the "
              "class with the largest gap moves by the full eta every epoch however small the risks and their "
              "differences are")


def at_bounds(final: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row (a seed, or one replay) of final temperatures (rows x classes): how many classes sit at
    tau_max and how many at tau_min."""
    final = np.atleast_2d(np.asarray(final, float))
    return np.isclose(final, hi).sum(axis=1), np.isclose(final, lo).sum(axis=1)


def bounds_phrase(name: str, final: np.ndarray, lo: float, hi: float) -> str:
    """'adversarial: 6 of 10 classes sit at tau_max 5 and 4 at tau_min 0.5' (per-row counts joined by /)."""
    at_hi, at_lo = at_bounds(final, lo, hi)
    return (f"{name}: {_count(at_hi)} of {np.atleast_2d(final).shape[1]} classes sit at tau_max {hi:g} and "
            f"{_count(at_lo)} at tau_min {lo:g}")


NEAR_BOUND = 0.01  # a hard class this close to tau_max (a fraction of tau_max - tau_min) is flagged as the smoothest


def temperature_text(records: dict, hard=()) -> str:
    """ABSLD's temperatures at the end of training over the seeds (`records`: {seed: load_run(...)}):
    how many classes sit at each bound, where the hard classes end, when the bounds were reached, and,
    when classes did reach a bound, why: the rule steps a class by eta * g / max|g| (g: its risk minus
    the mean risk), so the class with the largest gap moves by the full eta every epoch however small
    the risks and their differences are."""
    rec = next(iter(records.values()))
    m = rec["config"]["method"]
    lo, hi = float(m["tau_min"]), float(m["tau_max"])
    classes = [str(c) for c in rec["config"]["resolved"]["classes"]]
    n = len(records)
    parts, bounded, moved = [], False, 0.0
    for key, name, init in (("tau_adv", "adversarial", "tau_init_adv"), ("tau_nat", "clean", "tau_init_nat")):
        if key not in rec["history"]:
            continue
        final = _final(records, key)
        start = np.broadcast_to(np.asarray(m.get(init, 1.0), float), final.shape)
        moved = max(moved, float(np.abs(final - start).max()))
        bounded = bounded or bool(sum(at_bounds(final, lo, hi)).any())
        settle = [_settled(np.stack(r["history"][key].tolist()).astype(float), lo, hi) for r in records.values()]
        settle = [s for s in settle if s is not None]
        text = bounds_phrase(name, final, lo, hi) + (f" (per seed, over {n} seeds)" if n > 1 else "")
        if settle:
            text += f", there from epoch {int(np.median(settle))}" + (" (median over seeds)" if n > 1 else "")
        if hard:
            idx = [classes.index(str(c)) for c in hard if str(c) in classes]
            text += "; the hard classes end at " + ", ".join(f"{classes[i]} {final[:, i].mean():.2f}" for i in idx)
            near = final >= hi - NEAR_BOUND * (hi - lo)  # at tau_max, or short of it by under 1% of the range
            smooth = [i for i in idx if near[:, i].mean() > 0.5]
            if smooth:
                where = ("at tau_max" if all(np.isclose(final[near[:, i], i], hi).all() for i in smooth)
                         else f"at or within {100 * NEAR_BOUND:g}% of the range below tau_max")
                who = (", ".join(classes[i] for i in smooth) if n == 1 else
                       ", ".join(f"{classes[i]} in {int(near[:, i].sum())} of {n} seeds" for i in smooth))
                text += (f" (**{where}: {who}; the smoothest label, the opposite of the method's intent of sharper "
                         f"labels for hard classes**)")
        parts.append(text)
    out = "Temperatures after the last epoch" + (f", mean over {n} seeds" if n > 1 else "") + ". " + "; ".join(parts) + "."
    if not bounded:
        return out + f" No class reached a bound: the largest move from the initial temperature is {moved:.2f}."
    why = " " + WHY_BOUNDS
    if "class_risk_nat" in rec["history"]:
        risk = np.stack([np.asarray(r["history"]["class_risk_nat"].iloc[-1], float) for r in records.values()])
        why += f" (the clean training risks at the last epoch span {risk.min():.3g} to {risk.max():.3g})"
    return out + why + "."


def _count(v: np.ndarray) -> str:
    v = [int(x) for x in v]
    return str(v[0]) if len(set(v)) == 1 else "/".join(map(str, v))


def kept_text(histories: dict, starts: dict) -> str:
    """How much of each batch early dropping keeps from its start on (`histories`: {method: {seed:
    history}}, `starts`: {method: first epoch with dropping}), mean over epochs, range over seeds."""
    from .labels import display

    out, small = [], []
    for name, by_seed in histories.items():
        start = int(starts.get(name, 1))
        means = [_kept_mean(h, start) for h in by_seed.values()]  # per seed
        E = len(next(iter(by_seed.values())))
        span = f" (seeds {100 * min(means):.0f}-{100 * max(means):.0f}%)" if len(means) > 1 else ""
        out.append(f"{display(name)} keeps {100 * np.mean(means):.0f}% of each batch on average from epoch {start} "
                   f"of {E} on{span}")
        if np.mean(means) < 0.25:
            small.append(display(name))
    verb = "trains" if len(small) == 1 else "train"
    tail = (f" {' and '.join(small)} then {verb} on a small part of each batch, so claim (c) counts" if small else
            " Claim (c) counts") + " the examples trained on, not the epochs."
    return "Early dropping: " + "; ".join(out) + "." + tail


def _kept_mean(history, start: int) -> float:
    """One run's kept fraction, mean over its epochs from `start` on (an epoch without dropping keeps all)."""
    return float(history.loc[history["epoch"] >= int(start), "kept_fraction"].fillna(1.0).mean())


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _all_zero(frame, columns) -> bool:
    """Every row of `frame` at 0 in each of `columns` (an empty frame: True)."""
    return all((frame[c].astype(float) == 0).all() for c in columns)


def zeros_text(per_seed, attack: str, classes) -> str | None:
    """The classes on which the teacher is at 0% under `attack` in every seed, and which students are at 0%
    on all of them too (they inherit the zeros, so a worst-class difference between two of them carries no
    information); None when the teacher has no such class. per_seed: intervals.per_seed_table's tidy rows."""
    from .labels import display
    from .vocab import attack_label

    rows = per_seed[per_seed["attack"] == attack]
    teacher = rows[rows["method"] == "teacher"]
    zero = [c for c in classes if _all_zero(teacher, [c])] if not teacher.empty else []
    if not zero:
        return None
    clean = per_seed[(per_seed["attack"] == "clean") & (per_seed["method"] == "teacher")]
    also_clean = attack != "clean" and not clean.empty and _all_zero(clean, zero)
    n = teacher["seed"].nunique()
    seeds = "its one seed" if n == 1 else f"every one of its {n} seeds"
    text = (f"Teacher: at 0% on {_and(zero)} under {attack_label(attack)} in {seeds}"
            + (", clean test images included" if also_clean else "") + ".")
    students = [m for m in dict.fromkeys(rows["method"]) if m != "teacher"]
    heirs = [m for m in students if _all_zero(rows[rows["method"] == m], zero)]
    them = "it" if len(zero) == 1 else "all of them"
    if len(heirs) == 1:
        text += f" {display(heirs[0])} is at 0% on {them} too."
    elif heirs:
        text += (f" {_and([display(m) for m in heirs])} are at 0% on {them} too, so a worst-class difference"
                 " between two of these carries no information.")
    else:
        text += f" No student is at 0% on {them}."
    return text
