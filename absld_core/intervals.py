"""Means over seeds with 95% intervals, and paired differences between methods, class by class.

    runs = {"new": {0: run_dir_0, 1: run_dir_1}, "old": {0: ..., 1: ...}}    # label -> seed -> run directory
    per_seed = per_seed_table(runs)                     # one row per run and attack
    table = summarise(runs, "pgd20")                    # mean and 95% CI of Avg, Worst, NSD, each class
    d = paired_difference(runs["new"], runs["old"], "pgd20")   # new - old, same seeds and images
    print(describe(d, "worst", "New", "Old"))

The interval is a bootstrap over what varies between repetitions of the study: the seeds (resampled
with replacement when there are two or more) and, within each seed, the test images (resampled within
each class, so every class keeps its size). A statistic (Avg, Worst, NSD, a class's accuracy) is
computed per seed and averaged over the seeds, as the point estimate is. With one seed only the
images are resampled: the interval then says how much the number would move on another test set of
the same size, not on another training run. For a paired difference both methods see the same
resampled seeds and images, which removes the variation they share (which images are hard).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .evaluate import SUMMARY_COLUMNS, load_per_image, load_table
from .vocab import attack_label

METRICS = ("avg", "worst", "nsd")
N_BOOT = 2000


def per_seed_table(runs: Mapping[str, Mapping[int, str | Path]]) -> pd.DataFrame:
    """The tidy per-seed table: columns method, seed, attack, avg, worst, worst_class, nsd and one
    column per class (accuracy %), one row per finished run and attack (unfinished runs are left out)."""
    rows = []
    classes: list[str] = []
    for method, by_seed in runs.items():
        for seed, path in sorted(by_seed.items()):
            metrics = Path(path) / "metrics.json"
            if not metrics.is_file():
                continue
            df = load_table(metrics)
            cls = list(df.attrs.get("classes") or [c for c in df.columns if c not in SUMMARY_COLUMNS])
            classes = classes or cls
            for attack, r in df.iterrows():
                rows.append({"method": method, "seed": int(seed), "attack": attack,
                             **{k: r[k] for k in ("avg", "worst", "worst_class", "nsd")},
                             **{c: float(r[c]) for c in cls}})
    cols = ["method", "seed", "attack", "avg", "worst", "worst_class", "nsd"] + classes
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------ resampling
@dataclass
class _Seed:
    labels: np.ndarray
    correct: dict[str, np.ndarray]   # run label -> correct vector (the attack's) for this seed


def _load(runs: Mapping[str, Mapping[int, str | Path]], attack: str) -> tuple[list[int], list[_Seed], int]:
    """Per seed that every run has: the labels and each run's per-image correctness under `attack`."""
    common = sorted(set.intersection(*[set(by_seed) for by_seed in runs.values()]))
    if not common:
        raise ValueError(f"no seed is shared by every run: {({k: sorted(v) for k, v in runs.items()})}")
    seeds, data, num_classes = [], [], 0
    for s in common:
        labels, correct = None, {}
        for name, by_seed in runs.items():
            y, c = load_per_image(Path(by_seed[s]) / "per_image.npz")
            if attack not in c:
                raise ValueError(f"{by_seed[s]} was not evaluated with {attack}; it has {sorted(c)}")
            if labels is not None and (len(y) != len(labels) or (y != labels).any()):
                raise ValueError(f"seed {s}: the runs were evaluated on different test images ({name} differs); "
                                 f"a paired comparison needs the same test set")
            labels, correct[name] = y, c[attack]
        seeds.append(s)
        data.append(_Seed(labels, correct))
        num_classes = max(num_classes, int(labels.max()) + 1)
    return seeds, data, num_classes


def _class_acc_boot(seed: _Seed, names, num_classes: int, rng, n_boot: int) -> dict[str, np.ndarray]:
    """Per run: class accuracies (%) of n_boot resamples of the seed's images within each class, and
    row 0 the observed ones: shape (n_boot + 1, C). Both runs use the same resampled images."""
    out = {n: np.full((n_boot + 1, num_classes), np.nan) for n in names}
    for c in range(num_classes):
        idx = np.flatnonzero(seed.labels == c)
        if not len(idx):
            continue
        draw = np.vstack([np.arange(len(idx))[None], rng.integers(0, len(idx), size=(n_boot, len(idx)))])
        for n in names:
            out[n][:, c] = 100.0 * seed.correct[n][idx][draw].mean(axis=1)
    return out


def _metrics(acc: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Avg (over images: the class accuracies weighted by class size), Worst, NSD and the class
    accuracies, for each row of acc (..., C)."""
    w = counts / counts.sum()
    avg = np.nansum(acc * w, axis=-1)
    mean = np.nanmean(acc, axis=-1)
    nsd = np.where(mean > 0, np.nanstd(acc, axis=-1) / np.where(mean > 0, mean, 1), np.nan)
    return {"avg": avg, "worst": np.nanmin(acc, axis=-1), "nsd": nsd, "classes": acc}


def _bootstrap(runs, attack: str, n_boot: int, seed: int):
    seeds, data, C = _load(runs, attack)
    rng = np.random.default_rng(seed)
    names = list(runs)
    per_seed = []  # per seed: {name: {metric: (n_boot+1, ...)}}
    for d in data:
        acc = _class_acc_boot(d, names, C, rng, n_boot)
        counts = np.bincount(d.labels, minlength=C).astype(float)
        per_seed.append({n: _metrics(acc[n], counts) for n in names})
    S = len(seeds)
    # seeds resampled with replacement (row 0: the observed seeds); with one seed only the images vary
    pick = np.vstack([np.arange(S)[None], rng.integers(0, S, size=(n_boot, S))]) if S > 1 else np.zeros((n_boot + 1, 1), int)
    out = {}
    for n in names:
        out[n] = {}
        for m in ("avg", "worst", "nsd", "classes"):
            stacked = np.stack([ps[n][m] for ps in per_seed])          # (S, n_boot+1, ...)
            rows = np.arange(n_boot + 1)
            chosen = stacked[pick, rows[:, None]]                      # (n_boot+1, S, ...)
            out[n][m] = chosen.mean(axis=1)                            # mean over the (resampled) seeds
    return seeds, C, out


EXACT_DECIMALS = 9  # statistics rounded to this many decimals: far below any accuracy step (100 / images)


def _interval(samples: np.ndarray) -> tuple[float, float, float]:
    """(observed, lower, upper): row 0 is the observed statistic, the rest the bootstrap (percentile CI).
    Rounded to EXACT_DECIMALS, so that a bound which is 0 in exact arithmetic (two means of the same
    images' accuracies) is 0, not +-1e-14 of float rounding whose sign would decide the verdict."""
    obs, boot = samples[0], samples[1:]
    lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    return tuple(np.round(v, EXACT_DECIMALS) + 0.0 for v in (obs, lo, hi))


def summarise(runs: Mapping[str, Mapping[int, str | Path]], attack: str = "pgd20", n_boot: int = N_BOOT,
              seed: int = 0, classes: list[str] | None = None) -> pd.DataFrame:
    """Per run label: mean over seeds and 95% interval of Avg, Worst, NSD and every class accuracy under
    `attack` (columns metric, metric_lo, metric_hi; n_seeds). Each label is bootstrapped on its own seeds."""
    rows = {}
    for name, by_seed in runs.items():
        finished = {s: p for s, p in by_seed.items() if (Path(p) / "per_image.npz").is_file()}
        if not finished:
            continue
        seeds, C, out = _bootstrap({name: finished}, attack, n_boot, seed)
        cls = classes or [str(c) for c in range(C)]
        row = {"n_seeds": len(seeds)}
        for m in METRICS:
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = _interval(out[name][m])
        obs, lo, hi = _interval(out[name]["classes"])
        for i, c in enumerate(cls):
            row[c], row[f"{c}_lo"], row[f"{c}_hi"] = obs[i], lo[i], hi[i]
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


@dataclass
class Difference:
    """a - b under one attack: per metric (avg, worst, nsd, and each class) the observed difference of
    the seed means and its 95% interval."""
    a: str
    b: str
    attack: str
    seeds: list[int]
    table: pd.DataFrame          # rows: avg, worst, nsd, class names; columns: diff, lo, hi (and a, b: each side)

    def __getitem__(self, metric: str) -> tuple[float, float, float]:
        r = self.table.loc[metric]
        return float(r["diff"]), float(r["lo"]), float(r["hi"])

    def distinguishable(self, metric: str) -> bool:
        _, lo, hi = self[metric]
        return lo > 0 or hi < 0

    def degenerate(self, metric: str) -> str | None:
        """'0%' or '100%' when both sides sit there on every test image of every seed (an accuracy that
        cannot move, so the difference carries no information), 'undefined' for an NSD of two runs at 0%
        everywhere, '<v> on every resample' for two NSDs that never differ; else None."""
        if "a" not in self.table or "b" not in self.table:
            return None
        r = self.table.loc[metric]
        a, b = float(r["a"]), float(r["b"])
        if metric == "nsd":
            if np.isnan(a) and np.isnan(b):
                return "undefined"
            if a == b and float(r["lo"]) == float(r["hi"]) == 0.0:
                return f"{a:.3f} on every resample"
            return None
        if float(r["lo"]) == float(r["hi"]) == 0.0:
            for edge in (0.0, 100.0):
                if a == b == edge:
                    return f"{edge:.0f}%"
        return None


def paired_difference(a: Mapping[int, str | Path], b: Mapping[int, str | Path], attack: str = "pgd20",
                      n_boot: int = N_BOOT, seed: int = 0, names: tuple[str, str] = ("a", "b"),
                      classes: list[str] | None = None) -> Difference:
    """a - b on the seeds both have and the same test images (paired bootstrap over seeds and images)."""
    na, nb = names
    if na == nb:
        na, nb = f"{na} (a)", f"{nb} (b)"
    seeds, C, out = _bootstrap({na: a, nb: b}, attack, n_boot, seed)
    cls = classes or [str(c) for c in range(C)]
    rows = {}
    for m in METRICS:
        rows[m] = (*_interval(out[na][m] - out[nb][m]), out[na][m][0], out[nb][m][0])
    obs, lo, hi = _interval(out[na]["classes"] - out[nb]["classes"])
    for i, c in enumerate(cls):
        rows[c] = (obs[i], lo[i], hi[i], out[na]["classes"][0][i], out[nb]["classes"][0][i])
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["diff", "lo", "hi", "a", "b"])
    return Difference(names[0], names[1], attack, seeds, table)


METRIC_WORDS = {"avg": "average", "worst": "worst-class", "nsd": "NSD"}


def describe(d: Difference, metric: str, a: str | None = None, b: str | None = None) -> str:
    """'ABSLD - RSLAD, worst-class PGD-20: +3.1 points (95% CI -2.0 to +8.2; 5 seeds): not
    distinguishable at this budget', computed from the interval; a pair whose two sides cannot move
    ('both at 0%') is said to carry no information instead of a difference of 0."""
    diff, lo, hi = d[metric]
    what = METRIC_WORDS.get(metric, f"class {metric}")
    unit = "" if metric == "nsd" else " points"
    fmt = "{:+.3f}" if metric == "nsd" else "{:+.1f}"
    a, b = a or d.a, b or d.b
    attack = attack_label(d.attack)
    seeds = f"{len(d.seeds)} seed{'s' if len(d.seeds) > 1 else ''}"
    edge = d.degenerate(metric)
    if edge == "undefined":
        return f"{a} - {b}, {what} {attack}: both at 0% on every class, NSD undefined ({seeds}): no information"
    if edge is not None:
        return f"{a} - {b}, {what} {attack}: both at {edge} ({seeds}): no information"
    digits = 3 if metric == "nsd" else 1
    sign = lambda v: fmt.format(round(v, digits) + 0.0)  # noqa: E731  (no "-0.0")
    text = f"{a} - {b}, {what} {attack}: {sign(diff)}{unit} (95% CI {sign(lo)} to {sign(hi)}; {seeds})"
    if lo <= 0 <= hi:
        return text + ": not distinguishable at this budget"
    better = (diff < 0) if metric == "nsd" else (diff > 0)
    return text + (f": {a} is better" if better else f": {b} is better")


PLAIN_VERDICT_SEEDS = 3  # a claim reads a plain "holds" only over at least this many training runs


def scope(n_seeds: int) -> str:
    """What an interval over n seeds covers, in words."""
    if n_seeds <= 1:
        return "the interval covers test images, not retraining"
    if n_seeds < PLAIN_VERDICT_SEEDS:
        return f"{n_seeds} seeds: too few retrainings for a plain verdict"
    return f"{n_seeds} seeds: the interval covers retraining and test images"


def verdict(ok: bool, n_seeds: int) -> str:
    """A claim's verdict worded by what its interval covers: '**holds**' needs at least three seeds; with
    one, '**holds on this one training run** (the interval covers test images, not retraining)'."""
    if not ok:
        return "**not shown**"
    if n_seeds >= PLAIN_VERDICT_SEEDS:
        return "**holds**"
    runs = "this one training run" if n_seeds <= 1 else f"these {n_seeds} training runs"
    return f"**holds on {runs}** ({scope(n_seeds)})"


def format_ci(table: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """A summary of `summarise` for display: 'mean [lo, hi]' per metric, the rows in display names."""
    from .labels import display

    out = {}
    for m in metrics:
        f = "{:.3f} [{:.3f}, {:.3f}]" if m == "nsd" else "{:.1f} [{:.1f}, {:.1f}]"
        out[m] = [f.format(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for _, r in table.iterrows()]
    df = pd.DataFrame(out, index=[display(i) for i in table.index])
    df.insert(0, "seeds", table["n_seeds"].astype(int).to_numpy())
    return df
