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
from .vocab import attack_label  # noqa: F401  (plots.attack_label, as the notebooks call it)

PALETTE = "colorblind"


def _style():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    return sns


def save(fig, path: str | Path, dpi: int = 130) -> Path:
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path


def colours(n: int) -> list:
    """n distinct colours (tab10, then tab20): no two series share a hue family."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


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
    return 0 if max((len(str(x)) for x in labels), default=0) <= 5 else 30


def class_bars(table: pd.DataFrame, classes: Sequence[str] | None = None, title: str = "",
               ylabel: str = "PGD-20 accuracy (%)", ax=None, hard: Sequence[str] = (), values: bool = True):
    """Grouped bars: one group per class, one bar per row (method, run or attack) with its 95% interval
    when the table has one (<class>_lo/_hi columns), the value on each bar (a 0% bar shows as '0'),
    the row's mean as a dashed line (keyed), and the hard classes shaded (keyed)."""
    _style()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    classes = list(classes if classes is not None else table.columns)
    vals, elo, ehi = _ci_columns(table, classes)
    n_rows, n_cls = vals.shape
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(min(16.0, max(7.5, 0.45 * n_cls * n_rows + 2.5)), 4.2))
    fig = ax.figure
    width = 0.8 / n_rows
    x = np.arange(n_cls)
    cols = colours(n_rows)
    for i in range(len(classes)):
        if classes[i] in hard:
            ax.axvspan(i - 0.48, i + 0.48, color="0.88", zorder=0)
    handles = []
    for r, (name, colour) in enumerate(zip(table.index, cols)):
        pos = x - 0.4 + width * (r + 0.5)
        err = None if elo is None else np.vstack([elo[r], ehi[r]])
        bars = ax.bar(pos, vals[r], width * 0.92, color=colour, yerr=err, capsize=2, ecolor="0.25",
                      error_kw={"lw": 0.8}, label=str(name), zorder=2)
        if values and n_rows * n_cls <= 40:
            for b, v in zip(bars, vals[r]):
                ax.text(b.get_x() + b.get_width() / 2, 1.5, f"{v:.0f}", ha="center", va="bottom",
                        fontsize=7, color="white" if v > 12 else "0.2", rotation=90, zorder=3)
        mean = np.nanmean(vals[r])
        ax.axhline(mean, ls="--", lw=1, color=colour, alpha=0.8, zorder=1)
        handles.append(bars)
    ax.set_xticks(x, classes, rotation=_rotation(classes))
    ax.set(xlabel="class", ylabel=ylabel, title=title, ylim=(0, 105))
    extra = [Line2D([], [], ls="--", color="0.3", lw=1, label="mean over classes (per row)")]
    if hard:
        extra.append(Patch(color="0.88", label=f"hard classes ({', '.join(hard)})"))
    if elo is not None:
        extra.append(Line2D([], [], color="0.25", lw=0.8, marker="|", label="95% interval"))
    ax.legend(handles=handles + extra, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if own:
        fig.tight_layout()
    return fig


def smoothness_comparison(summary: pd.DataFrame, classes: Sequence[str], hard: Sequence[str], title: str):
    """Left: class-wise accuracy of SSD vs DSD (hard classes shaded and keyed, intervals, values on
    the bars); right: Avg and Worst with intervals, NSD written inside the axes."""
    _style()
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 4.4), gridspec_kw={"width_ratios": [3.2, 1.2]})
    class_bars(summary, classes, title=title, ax=a, hard=hard, ylabel="PGD-20 accuracy (%)")
    vals, elo, ehi = _ci_columns(summary, ["avg", "worst"])
    cols = colours(len(summary))
    width = 0.8 / len(summary)
    for r, name in enumerate(summary.index):
        pos = np.arange(2) - 0.4 + width * (r + 0.5)
        err = None if elo is None else np.vstack([elo[r], ehi[r]])
        bars = b.bar(pos, vals[r], width * 0.92, color=cols[r], yerr=err, capsize=3, ecolor="0.25", label=str(name))
        for bar, v in zip(bars, vals[r]):
            b.text(bar.get_x() + bar.get_width() / 2, 1.5, f"{v:.1f}", ha="center", va="bottom", fontsize=8,
                   color="white" if v > 12 else "0.2", rotation=90)
    nsd = "\n".join(f"NSD {name}: {r['nsd']:.3f}" + (f" [{r['nsd_lo']:.3f}, {r['nsd_hi']:.3f}]" if "nsd_lo" in r else "")
                    for name, r in summary.iterrows())
    b.text(0.5, 0.97, nsd, transform=b.transAxes, ha="center", va="top", fontsize=8,
           bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    b.set_xticks([0, 1], ["Avg", "Worst"])
    b.set(ylabel="PGD-20 accuracy (%)", title="Avg / Worst (95% interval)", ylim=(0, 125))
    items = _legend_items(a)
    a.get_legend().remove()
    fig.legend(*items, loc="lower center", ncols=6, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _legend_items(ax):
    """The handles and labels class_bars put in its legend (rows, then the keys)."""
    leg = ax.get_legend()
    if leg is not None:
        return leg.legend_handles, [t.get_text() for t in leg.get_texts()]
    return ax.get_legend_handles_labels()


def class_dots(summary: pd.DataFrame, classes: Sequence[str], title: str = "", ylabel: str = "PGD-20 accuracy (%)"):
    """Dot plot: classes sorted from hardest to easiest (mean over rows), one distinct colour per row
    (method), 95% intervals as whiskers, the legend outside the data."""
    _style()
    classes = list(classes)
    vals, elo, ehi = _ci_columns(summary, classes)
    order = np.argsort(np.nanmean(vals, axis=0))
    n = len(summary)
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(classes) + 4), 4.6))
    cols = colours(n)
    markers = "osD^vP*Xhp<>"
    span = 0.7
    for r, name in enumerate(summary.index):
        pos = np.arange(len(classes)) - span / 2 + span * (r + 0.5) / n
        err = None if elo is None else np.vstack([elo[r][order], ehi[r][order]])
        ax.errorbar(pos, vals[r][order], yerr=err, fmt=markers[r % len(markers)], ms=5, color=cols[r], ecolor=cols[r],
                    elinewidth=0.9, capsize=0, label=str(name))
    for i in range(1, len(classes)):
        ax.axvline(i - 0.5, color="0.85", lw=0.8)
    ax.set_xticks(np.arange(len(classes)), [classes[i] for i in order], rotation=_rotation(classes))
    ax.grid(axis="x", visible=False)
    ax.set(xlabel="class (hardest on the left: lowest mean over the methods)", ylabel=ylabel, title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="95% interval" if elo is not None else None, title_fontsize=8)
    fig.tight_layout()
    return fig


def heatmap(summary: pd.DataFrame, classes: Sequence[str] | None = None, title: str = "Class-wise PGD-20 accuracy (%)"):
    """Methods x classes, then Avg and Worst on the same colour scale (fitted to the data), then NSD on
    its own; horizontal row labels."""
    sns = _style()
    classes = list(classes if classes is not None else [c for c in summary.columns if c not in ("avg", "worst", "nsd")])
    acc = summary[classes].astype(float)
    side = summary[[c for c in ("avg", "worst") if c in summary]].astype(float).rename(columns={"avg": "Avg", "worst": "Worst"})
    both = pd.concat([acc, side], axis=1)
    lo, hi = np.nanmin(both.to_numpy()), np.nanmax(both.to_numpy())
    lo, hi = max(0.0, np.floor(lo / 5) * 5), min(100.0, np.ceil(hi / 5) * 5)
    has_nsd = "nsd" in summary
    ratios = [len(classes), max(side.shape[1], 1) * 1.1] + ([1.1] if has_nsd else [])
    fig, axes = plt.subplots(1, len(ratios), figsize=(0.62 * sum(ratios) + 3.2, 0.42 * len(summary) + 1.9),
                             gridspec_kw={"width_ratios": ratios, "wspace": 0.08})
    kw = dict(annot=True, fmt=".0f", cmap="rocket", vmin=lo, vmax=hi, annot_kws={"fontsize": 8})
    sns.heatmap(acc, ax=axes[0], cbar=False, **kw)
    sns.heatmap(side, ax=axes[1], yticklabels=False, cbar_ax=None, cbar=not has_nsd,
                cbar_kws={"label": "accuracy (%)"}, **kw)
    axes[0].set(title=title, xlabel="class", ylabel="")
    axes[0].tick_params(axis="y", rotation=0)
    axes[0].tick_params(axis="x", rotation=_rotation(classes))
    axes[1].set(xlabel="", ylabel="", title="summary")
    if has_nsd:
        sns.heatmap(summary[["nsd"]].astype(float).rename(columns={"nsd": "NSD"}), ax=axes[2], annot=True, fmt=".3f",
                    cmap="mako_r", yticklabels=False, cbar=False, annot_kws={"fontsize": 8})
        axes[2].set(xlabel="", ylabel="", title="lower: fairer")
    fig.subplots_adjust(left=0.18)
    return fig


def temperature_trajectories(history: pd.DataFrame, classes: Sequence[str], title: str = "ABSLD temperatures",
                             initial: dict | None = None, hard: Sequence[str] = ()):
    """tau_adv and tau_nat per class over epochs, from epoch 0 (the initial temperatures, `initial`:
    {'tau_adv': [...], 'tau_nat': [...]} or scalars), the hard classes drawn bold, one legend."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.9), sharey=True)
    cols = colours(len(classes))
    for ax, key, name in ((axes[0], "tau_adv", "adversarial"), (axes[1], "tau_nat", "clean")):
        if key not in history:
            ax.set_visible(False)
            continue
        tau = np.array(history[key].tolist(), dtype=float)
        epochs = history["epoch"].to_numpy()
        if initial is not None and initial.get(key) is not None:
            tau = np.vstack([np.broadcast_to(np.asarray(initial[key], float), (1, tau.shape[1])), tau])
            epochs = np.concatenate([[0], epochs])
        for c, cls in enumerate(classes):
            bold = cls in hard
            ax.plot(epochs, tau[:, c], color=cols[c], lw=2.4 if bold else 1.0, alpha=1 if bold or not hard else 0.6,
                    label=f"{cls} (hard)" if bold else cls)
        ax.set(title=f"{title}: {name}", xlabel="epoch (0: initial)", ylabel="temperature")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, title="class")
    fig.tight_layout()
    return fig


def kept_fraction(histories: dict[str, pd.DataFrame], title: str = "Early dropping: fraction of the batch kept"):
    _style()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (name, h), colour in zip(histories.items(), colours(len(histories))):
        if "kept_fraction" in h:
            ax.plot(h["epoch"], h["kept_fraction"], lw=1.5, color=colour, label=name)
    ax.set(title=title, xlabel="epoch", ylabel="kept fraction |H| / B\n(H: examples kept, B: batch)", ylim=(0, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def schedule_plot(tau_adv: np.ndarray, tau_nat: np.ndarray, classes: Sequence[str], title: str = "Replayed schedule",
                  note: str | None = None):
    """Temperature schedules (epochs x classes arrays, row 0 = initial) as two line panels; `note` (the
    temperature budget, say) goes under them."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    colors = plt.get_cmap("tab10")
    for ax, tau, name in ((axes[0], tau_adv, "adversarial"), (axes[1], tau_nat, "clean")):
        for c, cls in enumerate(classes):
            ax.plot(np.arange(len(tau)), tau[:, c], color=colors(c % 10), label=cls)
        ax.set(title=f"{title}: {name}", xlabel="epoch (0: initial)", ylabel="temperature")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, title="class")
    fig.tight_layout()
    if note:
        fig.text(0.5, -0.02, note, ha="center", va="top", fontsize=9, color="0.25")
    return fig


def soft_label_plot(images: np.ndarray, probs: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                    title: str = "Teacher soft labels", temperatures: Sequence[float] | None = None,
                    roles: Sequence[str] | None = None):
    """Chosen images (N x C x H x W in [0,1]) over the bar chart of their tempered soft labels: the
    true class's bar in red (keyed), each panel's temperature and role (hardest/easiest class) printed."""
    _style()
    from matplotlib.patches import Patch

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.7 * n, 4.9), gridspec_kw={"height_ratios": [1, 1.1]}, squeeze=False)
    for i in range(n):
        img = np.transpose(images[i], (1, 2, 0))
        axes[0, i].imshow(img.squeeze(), cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
        axes[0, i].set_axis_off()
        head = f"true: {classes[labels[i]]}" + (f" ({roles[i]})" if roles is not None else "")
        axes[0, i].set_title(head, fontsize=9)
        col = ["crimson" if c == labels[i] else "steelblue" for c in range(len(classes))]
        axes[1, i].bar(range(len(classes)), probs[i], color=col)
        axes[1, i].set_ylim(0, 1)
        axes[1, i].set_xticks(range(len(classes)), classes, rotation=_rotation(classes), fontsize=7)
        if temperatures is not None:
            axes[1, i].text(0.97, 0.95, f"tau = {temperatures[i]:.2f}", transform=axes[1, i].transAxes, ha="right",
                            va="top", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        if i == 0:
            axes[1, i].set_ylabel("teacher probability")
        else:
            axes[1, i].set_yticklabels([])
    fig.legend(handles=[Patch(color="crimson", label="true class"), Patch(color="steelblue", label="other classes")],
               loc="lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def describe_smoothness(diff, ssd: str, dsd: str, hard: Sequence[str]) -> str:
    """What an SSD-vs-DSD comparison shows, computed from the paired difference DSD - SSD (intervals.Difference):
    the claim holds when the worst class is distinguishably higher and the average not distinguishably lower."""
    from .intervals import describe

    lines = [describe(diff, m, dsd, ssd) for m in ("worst", "avg", "nsd")]
    w, a = diff["worst"], diff["avg"]
    holds = w[1] > 0 and a[2] >= 0
    verdict = ("**Holds at this budget**: DSD lifts the worst class and the average is not distinguishably lower."
               if holds else "**Not shown at this budget**: " + (
                   "the worst-class difference is not distinguishable from 0." if w[1] <= 0 <= w[2] else
                   "DSD's worst class is lower." if w[2] < 0 else "the average is distinguishably lower."))
    return (f"Hard classes (reference run): {', '.join(hard)}.\n\n" + "\n".join(f"- {t}" for t in lines)
            + f"\n\n{verdict}")
