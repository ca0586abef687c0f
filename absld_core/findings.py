"""What the study's figures show, as sentences computed from the runs (none typed in): where ABSLD's
temperatures end and why, how much of each batch early dropping keeps. Notebook 04 prints them under
the figures they describe.

    print(temperature_text({seed: load_run(p) for seed, p in runs[ABSLD.name].items()}, hard=["3", "8"]))
"""
from __future__ import annotations

import numpy as np


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
        at_hi, at_lo = np.isclose(final, hi).sum(axis=1), np.isclose(final, lo).sum(axis=1)
        bounded = bounded or bool((at_hi + at_lo).any())
        settle = [_settled(np.stack(r["history"][key].tolist()).astype(float), lo, hi) for r in records.values()]
        settle = [s for s in settle if s is not None]
        text = (f"{name}: {_count(at_hi)} of {len(classes)} classes sit at tau_max {hi:g} and "
                f"{_count(at_lo)} at tau_min {lo:g}" + (f" (per seed, over {n} seeds)" if n > 1 else ""))
        if settle:
            text += f", there from epoch {int(np.median(settle))}" + (" (median over seeds)" if n > 1 else "")
        if hard:
            idx = [classes.index(str(c)) for c in hard if str(c) in classes]
            text += "; the hard classes end at " + ", ".join(f"{classes[i]} {final[:, i].mean():.2f}" for i in idx)
            smooth = [classes[i] for i in idx if np.isclose(final[:, i], hi).mean() > 0.5]
            if smooth:
                text += (f" (**{', '.join(smooth)} at tau_max: the smoothest label, the opposite of the method's intent "
                         f"of sharper labels for hard classes**)")
        parts.append(text)
    out = "Temperatures after the last epoch" + (f", mean over {n} seeds" if n > 1 else "") + ". " + "; ".join(parts) + "."
    if not bounded:
        return out + f" No class reached a bound: the largest move from the initial temperature is {moved:.2f}."
    why = (" Why the bounds: the rule moves each class by eta * g / max|g|, g its risk minus the mean risk, so the "
           "class with the largest gap moves by the full eta every epoch however small the risks and their "
           "differences are")
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

    out = []
    for name, by_seed in histories.items():
        start = int(starts.get(name, 1))
        means = [_kept_mean({0: h}, start) for h in by_seed.values()]
        E = len(next(iter(by_seed.values())))
        span = f" (seeds {100 * min(means):.0f}-{100 * max(means):.0f}%)" if len(means) > 1 else ""
        out.append(f"{display(name)} keeps {100 * np.mean(means):.0f}% of each batch on average from epoch {start} "
                   f"of {E} on{span}")
    small = [display(n) for n, by in histories.items() if _kept_mean(by, starts.get(n, 1)) < 0.25]
    tail = (f" {' and '.join(small)} then trains on a small part of each batch, so claim (c) counts" if small else
            " Claim (c) counts") + " the examples trained on, not the epochs."
    return "Early dropping: " + "; ".join(out) + "." + tail


def _kept_mean(by_seed: dict, start: int) -> float:
    return float(np.mean([h.loc[h["epoch"] >= int(start), "kept_fraction"].fillna(1.0).mean() for h in by_seed.values()]))
