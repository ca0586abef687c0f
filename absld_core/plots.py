"""Figures of the study. Every function takes tables/histories (no training) and returns a Figure;
`save` writes PNG (and closes the figure) so notebooks under papermill never block."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd

from .atomic import atomic_write
from .labels import display  # plots.display and plots.attack_label, as the notebooks call them
from .vocab import attack_label

PALETTE = "colorblind"
FONT = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
        "legend.fontsize": 10, "legend.title_fontsize": 10, "figure.titlesize": 13}
WIDTH = 10.0  # inches: JupyterLab shows a figure at about 700-900 px, so 10-11 pt type stays legible


def _style():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE, rc=FONT)
    return sns


def save(fig, path: str | Path, dpi: int = 150) -> Path:
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path


def colours(n: int) -> list:
    """n distinct colours (tab10, then tab20): no two series share a hue family."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _names(index) -> list[str]:
    """Run labels as people write them (labels.display: PGD-AT, ABSLD+HAM, ...)."""
    return [display(i) for i in index]


def _ci_columns(table: pd.DataFrame, cols: Sequence[str]):
    """(values, lower errors, upper errors) for columns `cols` of a summary with <col>_lo/<col>_hi
    columns (intervals.summarise); errors are None where the table has no intervals."""
    vals = table[list(cols)].astype(float).to_numpy()
    if all(f"{c}_lo" in table and f"{c}_hi" in table for c in cols):
        lo = table[[f"{c}_lo" for c in cols]].astype(float).to_numpy()
        hi = table[[f"{c}_hi" for c in cols]].astype(float).to_numpy()
        return vals, np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)
    return vals, None, None


def _rotation(labels: Sequence[str]) -> int:
    return 0 if max((len(str(x)) for x in labels), default=0) <= 3 else 45 if max(len(str(x)) for x in labels) <= 10 else 90


def _legend_under(ax, legend, unrotated: float) -> bool:
    """Put `legend` (anchored upper center) under the axes: at the fixed offset `unrotated` (axes fraction)
    that fits horizontal tick labels, or, with rotated ones (CIFAR's class names), just under everything
    the axes draw below them (tick labels, x label and its caption), measured after a layout that leaves
    the legend out. True when it did that layout: the caller must not lay the figure out again (that
    would shrink the axes and move the labels onto the legend)."""
    if not any(t.get_rotation() for t in ax.get_xticklabels()):
        legend.set_bbox_to_anchor((0.5, unrotated), transform=ax.transAxes)
        return False
    fig = ax.figure
    legend.set_in_layout(False)
    fig.tight_layout()
    y0 = ax.get_tightbbox(fig.canvas.get_renderer()).y0
    legend.set_bbox_to_anchor((0.5, float(ax.transAxes.inverted().transform((0, y0))[1]) - 0.02), transform=ax.transAxes)
    legend.set_in_layout(True)   # saved and shown figures crop to include it
    return True


def _shade_hard(ax, classes, hard):
    for i, c in enumerate(classes):
        if c in hard:
            ax.axvspan(i - 0.48, i + 0.48, color="0.88", zorder=0)


def _hard_patch(hard, hard_words=None):
    """The legend key of the shading (short); the definition (`hard_words`) goes under the axis, _hard_note."""
    from matplotlib.patches import Patch

    return Patch(color="0.88", label=f"shaded: hard classes ({', '.join(map(str, hard))})")


def _hard_note(xlabel: str, hard, hard_words) -> str:
    return xlabel + (f"\n{hard_words}" if hard and hard_words else "")


def _label_bars(ax, bars, vals, lo_err, hi_err):
    """Each bar's value where no whisker crosses it: inside the bar's foot when the interval's lower end
    clears the text, else above the whisker's top."""
    for i, (b, v) in enumerate(zip(bars, vals)):
        if not np.isfinite(v):
            continue
        bottom = v - (lo_err[i] if lo_err is not None else 0)
        top = v + (hi_err[i] if hi_err is not None else 0)
        inside = bottom > 16
        ax.text(b.get_x() + b.get_width() / 2, 1.5 if inside else top + 1.5, f"{v:.0f}", ha="center", va="bottom",
                fontsize=8, color="white" if inside else "0.2", rotation=90, zorder=3)


def class_bars(table: pd.DataFrame, classes: Sequence[str] | None = None, title: str = "",
               ylabel: str = "PGD-20 accuracy (%)", ax=None, hard: Sequence[str] = (), values: bool = True,
               hard_words: str | None = None, legend: bool = True):
    """Grouped bars: one group per class, one bar per row (method, run or attack) with its 95% interval
    when the table has one (<class>_lo/_hi columns), the value on each bar where no whisker crosses it,
    the row's mean as a dashed line (keyed), and the hard classes shaded (keyed with their definition)."""
    _style()
    from matplotlib.lines import Line2D

    classes = list(classes if classes is not None else table.columns)
    vals, elo, ehi = _ci_columns(table, classes)
    n_rows, n_cls = vals.shape
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(WIDTH, 4.4))
    fig = ax.figure
    width = 0.8 / n_rows
    x = np.arange(n_cls)
    cols = colours(n_rows)
    _shade_hard(ax, classes, hard)
    handles = []
    for r, (name, colour) in enumerate(zip(_names(table.index), cols)):
        pos = x - 0.4 + width * (r + 0.5)
        err = None if elo is None else np.vstack([elo[r], ehi[r]])
        bars = ax.bar(pos, vals[r], width * 0.92, color=colour, yerr=err, capsize=2, ecolor="0.25",
                      error_kw={"lw": 0.8}, label=name, zorder=2)
        if values and n_rows * n_cls <= 40:
            _label_bars(ax, bars, vals[r], None if elo is None else elo[r], None if ehi is None else ehi[r])
        ax.axhline(np.nanmean(vals[r]), ls="--", lw=1, color=colour, alpha=0.8, zorder=1)
        handles.append(bars)
    ax.set_xticks(x, classes, rotation=_rotation(classes))
    ax.set(xlabel=_hard_note("class", hard, hard_words), ylabel=ylabel, title=title, ylim=(0, 100),
           xlim=(-0.6, n_cls - 0.4))
    extra = [Line2D([], [], ls="--", color="0.3", lw=1, label="dashed: mean over classes, in its bars' colour")]
    if hard:
        extra.append(_hard_patch(hard, hard_words))
    if elo is not None:
        extra.append(Line2D([], [], color="0.25", lw=0.8, marker="|", label="95% interval"))
    laid_out = legend and _legend_under(
        ax, ax.legend(handles=handles + extra, loc="upper center", ncols=min(4, len(handles + extra)), frameon=False),
        -0.12 - (0.12 if hard and hard_words else 0))
    if own and not laid_out:
        fig.tight_layout()
    return fig


def smoothness_comparison(summary: pd.DataFrame, diff, classes: Sequence[str], hard: Sequence[str], title: str,
                          per_seed: pd.DataFrame | None = None, hard_words: str | None = None):
    """SSD vs DSD, the claim being a difference. Top: class-wise accuracy of both (0-100, 95% intervals,
    hard classes shaded), then Avg and Worst, where Worst is the mean over seeds of each seed's lowest
    class (each seed's minimum drawn as a dot). Bottom: DSD - SSD per class, Avg and Worst with the
    paired 95% interval and a zero line. `diff`: intervals.paired_difference(DSD, SSD); `per_seed`:
    intervals.per_seed_table of the two runs (for the dots)."""
    _style()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(summary.index)
    cols = colours(len(names))
    groups = list(classes) + ["Avg", "Worst"]
    x = np.r_[np.arange(len(classes)), len(classes) + 0.6, len(classes) + 1.6]
    fig, (top, bot) = plt.subplots(2, 1, figsize=(WIDTH, 7.6), sharex=True, gridspec_kw={"height_ratios": [1.2, 1]})
    for ax in (top, bot):
        _shade_hard(ax, classes, hard)
        ax.axvline(len(classes) - 0.2, color="0.6", lw=0.8)
    width = 0.8 / len(names)
    vals, elo, ehi = _ci_columns(summary, list(classes) + ["avg", "worst"])
    for r, name in enumerate(names):
        pos = x - 0.4 + width * (r + 0.5)
        err = None if elo is None else np.vstack([elo[r], ehi[r]])
        top.bar(pos, vals[r], width * 0.92, color=cols[r], yerr=err, capsize=2, ecolor="0.25", error_kw={"lw": 0.8},
                zorder=2)
        if per_seed is not None and len(per_seed):
            mins = per_seed.loc[(per_seed["method"] == name) & (per_seed["attack"] == diff.attack), "worst"].astype(float)
            top.scatter(np.full(len(mins), pos[-1]), mins, s=18, color="black", zorder=4)
    n_seeds = len(diff.seeds)
    top.set(ylabel=f"{attack_label(diff.attack)} accuracy (%)", ylim=(0, 100),
            title=f"{title} ({n_seeds} seed{'s' if n_seeds > 1 else ''}, mean and 95% interval)")
    handles = [Patch(color=c, label=n) for n, c in zip(names, cols)]
    handles.append(Line2D([], [], color="0.25", lw=0.8, marker="|", label="95% interval"))
    if per_seed is not None and len(per_seed):
        handles.append(Line2D([], [], ls="", marker="o", ms=4, color="black", label="each seed's lowest class"))
    if hard:
        handles.append(_hard_patch(hard, hard_words))
    rows = list(classes) + ["avg", "worst"]
    d = diff.table.loc[rows, ["diff", "lo", "hi"]].astype(float).to_numpy()
    colour = np.where(d[:, 1] > 0, "tab:green", np.where(d[:, 2] < 0, "tab:red", "0.35"))
    stuck = [diff.degenerate(r) for r in rows]  # both sides at 0% (or 100%) everywhere: no information
    for i in range(len(rows)):
        if stuck[i] is not None:  # a hollow marker, no whisker: not a measured difference of 0
            bot.errorbar(x[i], d[i, 0], yerr=[[0.0], [0.0]], fmt="o", ms=6, color="0.35", mfc="white", capsize=0,
                         elinewidth=0)
            continue
        bot.errorbar(x[i], d[i, 0], yerr=[[d[i, 0] - d[i, 1]], [d[i, 2] - d[i, 0]]], fmt="o", ms=6, color=colour[i],
                     capsize=3, elinewidth=1.2)
    bot.axhline(0, color="black", lw=1)
    a, b = (str(n).split(" (")[0] for n in (diff.a, diff.b))
    nsd, lo, hi = diff["nsd"]
    nsd_text = "no information" if diff.degenerate("nsd") is not None else f"{nsd:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    bot.set(ylabel=f"{a} - {b} (points)",   # NSD in the title: a box inside the axes would hide a whisker
            title=f"Paired difference {a} - {b}, 95% interval (NSD: {nsd_text})")
    handles += [Line2D([], [], ls="", marker="o", color="tab:green", label=f"{a} - {b}: interval above 0"),
                Line2D([], [], ls="", marker="o", color="tab:red", label="interval below 0"),
                Line2D([], [], ls="", marker="o", color="0.35", label="interval covers 0")]
    edges = sorted({e for e in stuck if e is not None})
    if edges:
        handles.append(Line2D([], [], ls="", marker="o", color="0.35", mfc="white",
                              label=f"both at {' or '.join(edges)}: no information"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=3, frameon=False, fontsize=9)
    bot.set_xticks(x, groups, rotation=_rotation(groups[:-2]))
    bot.set_xlabel(_hard_note("class; Avg (over images) and Worst (mean over seeds of each seed's lowest class)", hard,
                              hard_words))
    fig.tight_layout()
    return fig


def class_dots(summary: pd.DataFrame, classes: Sequence[str], title: str = "", ylabel: str = "PGD-20 accuracy (%)",
               hard: Sequence[str] = (), hard_words: str | None = None):
    """Dot plot: classes ordered by their mean accuracy over the rows (lowest left), one distinct colour
    per row (method), 95% intervals as whiskers, the study's hard classes shaded (keyed)."""
    _style()
    classes = list(classes)
    vals, elo, ehi = _ci_columns(summary, classes)
    order = np.argsort(np.nanmean(vals, axis=0), kind="stable")
    ordered = [classes[i] for i in order]
    n = len(summary)
    fig, ax = plt.subplots(figsize=(WIDTH, 5.0))
    cols = colours(n)
    markers = "osD^vP*Xhp<>"
    span = 0.7
    _shade_hard(ax, ordered, hard)
    for r, name in enumerate(_names(summary.index)):
        pos = np.arange(len(classes)) - span / 2 + span * (r + 0.5) / n
        err = None if elo is None else np.vstack([elo[r][order], ehi[r][order]])
        ax.errorbar(pos, vals[r][order], yerr=err, fmt=markers[r % len(markers)], ms=6, color=cols[r], ecolor=cols[r],
                    elinewidth=1.0, capsize=0, label=name)
    for i in range(1, len(classes)):
        ax.axvline(i - 0.5, color="0.85", lw=0.8)
    ax.set_xticks(np.arange(len(classes)), ordered, rotation=_rotation(classes))
    ax.grid(axis="x", visible=False)
    ax.set(xlabel=_hard_note("class, ordered by the mean accuracy over these methods (lowest left)", hard, hard_words),
           ylabel=ylabel, title=title, xlim=(-0.5, len(classes) - 0.5))
    handles, labels = ax.get_legend_handles_labels()
    if hard:
        p = _hard_patch(hard, hard_words)
        handles, labels = handles + [p], labels + [p.get_label()]
    if not _legend_under(ax, ax.legend(handles, labels, loc="upper center", ncols=min(5, len(handles)), frameon=False,
                                       title="whiskers: 95% interval" if elo is not None else None),
                         -0.13 - (0.06 if hard and hard_words else 0)):
        fig.tight_layout()
    return fig


def heatmap(summary: pd.DataFrame, classes: Sequence[str] | None = None, title: str = "Class-wise PGD-20 accuracy (%)",
            label: str = "PGD-20 accuracy (%)"):
    """Methods x classes, then Avg and Worst, on one fixed 0-100 colour scale with its colour bar (so a
    colour means the same accuracy in every study), each row's worst class outlined, then NSD on its own
    ("lower = fairer"); rows in display names."""
    sns = _style()
    from matplotlib.patches import Rectangle

    classes = list(classes if classes is not None else [c for c in summary.columns if c not in ("avg", "worst", "nsd")])
    rows = _names(summary.index)
    acc = summary[classes].astype(float).set_axis(rows)
    side = summary[[c for c in ("avg", "worst") if c in summary]].astype(float).rename(
        columns={"avg": "Avg", "worst": "Worst"}).set_axis(rows)
    has_nsd = "nsd" in summary
    ratios = [len(classes), max(side.shape[1], 1) * 1.1] + ([1.3] if has_nsd else []) + [0.35]
    fig, axes = plt.subplots(1, len(ratios), figsize=(min(WIDTH + 1, 0.62 * sum(ratios) + 3.6), 0.5 * len(summary) + 2.2),
                             gridspec_kw={"width_ratios": ratios, "wspace": 0.08})
    cbar_ax = axes[-1]
    kw = dict(annot=True, fmt=".0f", cmap="rocket", vmin=0, vmax=100, annot_kws={"fontsize": 9})
    sns.heatmap(acc, ax=axes[0], cbar=False, **kw)
    sns.heatmap(side, ax=axes[1], yticklabels=False, cbar=True, cbar_ax=cbar_ax, cbar_kws={"label": label}, **kw)
    worst = np.nanargmin(acc.to_numpy(), axis=1)
    for r, c in enumerate(worst):
        axes[0].add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="#00d0ff", lw=2.2))
    axes[0].set(title=title, xlabel="class (outlined: each row's worst)", ylabel="")
    axes[0].tick_params(axis="y", rotation=0)
    axes[0].tick_params(axis="x", rotation=_rotation(classes))
    axes[1].set(xlabel="", ylabel="", title="")
    if has_nsd:
        sns.heatmap(summary[["nsd"]].astype(float).rename(columns={"nsd": "NSD"}).set_axis(rows), ax=axes[2], annot=True,
                    fmt=".3f", cmap="mako_r", yticklabels=False, cbar=False, annot_kws={"fontsize": 9})
        axes[2].set(xlabel="", ylabel="", title="NSD\n(lower = fairer)")
    return fig


def _band(ax, epochs, runs: np.ndarray, colour, lw, alpha, label):
    """Mean over seeds as a line, the range over seeds as a band (runs: seeds x epochs)."""
    ax.plot(epochs, runs.mean(axis=0), color=colour, lw=lw, alpha=alpha, label=label)
    if len(runs) > 1:
        ax.fill_between(epochs, runs.min(axis=0), runs.max(axis=0), color=colour, alpha=0.15 * alpha, lw=0)


def temperature_trajectories(history, classes: Sequence[str], title: str = "ABSLD temperatures",
                             initial: dict | None = None, hard: Sequence[str] = (), bounds: tuple | None = None,
                             hard_words: str | None = None):
    """tau_adv and tau_nat per class over epochs, from epoch 0 (the initial temperatures, `initial`:
    {'tau_adv': [...], 'tau_nat': [...]} or scalars). `history`: one run's history or {seed: history}:
    the mean over seeds as a line and their range as a band. The hard classes bold, tau_min/tau_max
    (`bounds`) dashed, one legend."""
    _style()
    from matplotlib.lines import Line2D

    histories = history if isinstance(history, dict) else {0: history}
    first = next(iter(histories.values()))
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 4.2), sharey=True)
    cols = colours(len(classes))
    for ax, key, name in ((axes[0], "tau_adv", "adversarial target (tau_adv)"), (axes[1], "tau_nat", "clean target (tau_nat)")):
        if key not in first:
            ax.set_visible(False)
            continue
        stack, epochs = [], first["epoch"].to_numpy()
        for h in histories.values():
            tau = np.array(h[key].tolist(), dtype=float)[: len(epochs)]
            if initial is not None and initial.get(key) is not None:
                tau = np.vstack([np.broadcast_to(np.asarray(initial[key], float), (1, tau.shape[1])), tau])
            stack.append(tau)
        n = min(len(t) for t in stack)
        stack = np.stack([t[:n] for t in stack])          # seeds x epochs x classes
        ep = np.concatenate([[0], epochs])[:n] if initial is not None and initial.get(key) is not None else epochs[:n]
        for c, cls in enumerate(classes):
            bold = cls in hard
            _band(ax, ep, stack[:, :, c], cols[c], 2.6 if bold else 1.1, 1 if bold or not hard else 0.75,
                  f"{cls} (hard)" if bold else str(cls))
        if bounds is not None:
            for b in bounds:
                ax.axhline(b, color="0.3", ls="--", lw=1)
        ax.set(title=name, xlabel="epoch (0: initial)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("temperature")
    h, lab = axes[0].get_legend_handles_labels()
    extra = []
    if bounds is not None:
        extra.append(Line2D([], [], color="0.3", ls="--", lw=1, label=f"bounds tau_min {bounds[0]:g}, tau_max {bounds[1]:g}"))
    if len(histories) > 1:
        extra.append(Line2D([], [], color="0.5", lw=6, alpha=0.3, label=f"range over {len(histories)} seeds"))
    fig.suptitle(f"{title}: class temperatures" + (f" (mean over {len(histories)} seeds)" if len(histories) > 1 else ""))
    fig.legend(h + extra, lab + [e.get_label() for e in extra], loc="upper center", bbox_to_anchor=(0.5, 0.02),
               ncols=6, frameon=False, title=("class; " + hard_words) if hard_words else "class")
    fig.tight_layout()
    return fig


def kept_fraction(histories: dict, title: str = "Early dropping: fraction of each batch kept",
                  starts: dict | None = None):
    """One panel per method, on its own epoch axis (HAM's 120 epochs and ABSLD+HAM's 300 are not one
    axis): the kept fraction |H|/B, mean over seeds with their range (`histories`: {method: history or
    {seed: history}}), the start of early dropping marked (`starts`: {method: epoch})."""
    _style()
    n = len(histories)
    fig, axes = plt.subplots(1, n, figsize=(min(WIDTH, 4.6 * n + 0.6), 3.8), squeeze=False, sharey=True)
    for ax, ((name, h), colour) in zip(axes[0], zip(histories.items(), colours(n))):
        by_seed = h if isinstance(h, dict) else {0: h}
        hs = [x for x in by_seed.values() if "kept_fraction" in x]
        if not hs:
            ax.set_visible(False)
            continue
        E = min(len(x) for x in hs)
        runs = np.stack([x["kept_fraction"].fillna(1.0).to_numpy(float)[:E] for x in hs])
        epochs = hs[0]["epoch"].to_numpy()[:E]
        _band(ax, epochs, runs, colour, 1.8, 1, None)
        start = (starts or {}).get(name)
        if start is not None:
            ax.axvline(start, color="0.3", ls=":", lw=1.2)
            ax.text(start, 1.02, f" dropping from epoch {start}", fontsize=9, va="bottom", ha="left", color="0.3")
        ax.set(title=f"{_names([name])[0]} ({E} epochs" + (f", {len(hs)} seeds)" if len(hs) > 1 else ")"),
               xlabel=f"epoch (of {E})", ylim=(0, 1.12), xlim=(epochs[0] - 0.5, epochs[-1] + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("kept fraction |H| / B\n(H: examples kept, B: batch)")
    fig.suptitle(title + ("; band: range over seeds" if any(isinstance(h, dict) and len(h) > 1 for h in histories.values()) else ""))
    fig.tight_layout()
    return fig


def schedule_plot(tau_adv: np.ndarray, tau_nat: np.ndarray, classes: Sequence[str], title: str = "Replayed schedule",
                  note: str | None = None, recorded: tuple | None = None, ylim: tuple | None = None,
                  bounds: tuple | None = None, marked_epoch: int | None = None):
    """Temperature schedules (epochs x classes arrays, row 0 = initial) as two line panels; `recorded`
    (tau_adv, tau_nat) of the run itself drawn thin and grey beneath them, `bounds` dotted, a fixed
    `ylim`, `marked_epoch` (the soft labels' epoch) a vertical line, each keyed; `note` (the temperature
    budget, say) goes above them."""
    _style()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.9), sharey=True)
    cols = colours(len(classes))
    for k, (ax, tau, name) in enumerate(((axes[0], tau_adv, "adversarial target"), (axes[1], tau_nat, "clean target"))):
        if recorded is not None:
            rec = np.asarray(recorded[k])
            for c in range(rec.shape[1]):
                ax.plot(np.arange(len(rec)), rec[:, c], color="0.6", lw=0.8, ls="--", zorder=1)
        for c, cls in enumerate(classes):
            ax.plot(np.arange(len(tau)), tau[:, c], color=cols[c], label=str(cls), lw=1.5, zorder=2)
        if bounds is not None:
            for b in bounds:
                ax.axhline(b, color="0.3", ls=":", lw=1)
        if marked_epoch is not None:
            ax.axvline(marked_epoch, color="k", lw=1, ls="-.")
        ax.set(title=f"{title}: {name}", xlabel="epoch (0: initial)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[0].set_ylabel("temperature")
    h, lab = axes[0].get_legend_handles_labels()
    if recorded is not None:
        h, lab = h + [Line2D([], [], color="0.6", ls="--", lw=0.8)], lab + ["the run's own schedule"]
    if bounds is not None:
        h, lab = h + [Line2D([], [], color="0.3", ls=":", lw=1)], lab + [f"bounds {bounds[0]:g}, {bounds[1]:g}"]
    if marked_epoch is not None:
        h, lab = h + [Line2D([], [], color="k", ls="-.", lw=1)], lab + [f"soft labels drawn at epoch {marked_epoch}"]
    fig.legend(h, lab, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncols=7, frameon=False, title="class")
    fig.tight_layout()
    if note:
        fig.text(0.5, 1.0, note, ha="center", va="bottom", fontsize=9, color="0.25")
    return fig


def soft_label_plot(images: np.ndarray, probs: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                    title: str = "Teacher soft labels", temperatures: Sequence[float] | None = None,
                    roles: Sequence[str] | None = None):
    """Chosen images (N x C x H x W in [0,1]) over the bar chart of their tempered soft labels: the
    true class's bar in red (keyed), each panel's temperature and role (hardest/easiest class) printed."""
    _style()
    from matplotlib.patches import Patch

    n = len(images)
    long = max(len(str(c)) for c in classes) > 2
    fig, axes = plt.subplots(2, n, figsize=(min(WIDTH, 2.5 * n + 0.4), 5.6 if long else 5.0),
                             gridspec_kw={"height_ratios": [1, 1.2]}, squeeze=False)
    for i in range(n):
        img = np.transpose(images[i], (1, 2, 0))
        axes[0, i].imshow(img.squeeze(), cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
        axes[0, i].set_axis_off()
        head = f"true: {classes[labels[i]]}" + (f"\n({roles[i]})" if roles is not None else "")
        axes[0, i].set_title(head, fontsize=10)
        col = ["crimson" if c == labels[i] else "steelblue" for c in range(len(classes))]
        axes[1, i].bar(range(len(classes)), probs[i], color=col)
        axes[1, i].set_ylim(0, 1)
        axes[1, i].set_xticks(range(len(classes)), classes, rotation=90 if long else 0, fontsize=8 if long else 9)
        if temperatures is not None:  # above the bars, where no bar can hide it
            axes[1, i].set_title(f"tau = {temperatures[i]:.2f}", fontsize=10)
        if i == 0:
            axes[1, i].set_ylabel("teacher probability")
        else:
            axes[1, i].set_yticklabels([])
    fig.legend(handles=[Patch(color="crimson", label="true class"), Patch(color="steelblue", label="other classes")],
               loc="lower center", ncols=2, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def describe_smoothness(diff, ssd: str, dsd: str, hard: Sequence[str] | dict) -> str:
    """What an SSD-vs-DSD comparison shows, computed from the paired difference DSD - SSD (intervals.Difference):
    the claim holds when the worst class is distinguishably higher and the average not distinguishably
    lower; the sentence says what the average's interval says, and the verdict what the interval covers.
    hard: the hard classes, or {seed: that seed's} (smoothness.hard_by_seed), named per seed where they differ."""
    from .intervals import describe, verdict

    lines = [describe(diff, m, dsd, ssd) for m in ("worst", "avg", "nsd")]
    w, a = diff["worst"], diff["avg"]
    n = len(diff.seeds)
    average = ("the average is distinguishably higher" if a[1] > 0 else
               "the average is distinguishably lower" if a[2] < 0 else "the average is not distinguishably different")
    holds = w[1] > 0 and a[2] >= 0
    if diff.degenerate("worst"):
        why = f"the worst classes of both are at {diff.degenerate('worst')}: no information."
    elif holds:
        why = f"DSD lifts the worst class and {average}."
    elif w[1] <= 0 <= w[2]:
        why = f"the worst-class difference is not distinguishable from 0 ({average})."
    elif w[2] < 0:
        why = f"DSD's worst class is lower ({average})."
    else:
        why = f"DSD lifts the worst class but {average}."
    head = verdict(holds, n)
    head = head[:2] + head[2].upper() + head[3:]
    return f"{_hard_sentence(hard)}\n\n" + "\n".join(f"- {t}" for t in lines) + f"\n\n{head}: {why}"


def _hard_sentence(hard: Sequence[str] | dict) -> str:
    """The hard classes of an SSD/DSD comparison; per seed when the seeds' reference runs rank them differently."""
    words = "Hard classes (the reference run's highest validation error)"
    from .smoothness import ranked_differently

    if not isinstance(hard, dict):
        return f"{words}: {', '.join(hard)}."
    if ranked_differently(hard):
        return ("Hard classes (each seed's reference run, highest validation error; each seed's DSD sharpens its "
                "own): " + "; ".join(f"seed {s}: {', '.join(hard[s])}" for s in sorted(hard))
                + f". The figures shade seed {min(hard)}'s.")
    same = " (every seed's reference run ranks the same)" if len(hard) > 1 else ""
    return f"{words}: {', '.join(next(iter(hard.values()), ()))}{same}."
