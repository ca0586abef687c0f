"""Figures of the study. Every function takes tables/histories (no training) and returns a Figure;
`save` writes PNG (and closes the figure) so notebooks under papermill never block."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd

PALETTE = "colorblind"


def _style():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    return sns


def save(fig, path: str | Path, dpi: int = 130) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    tmp.replace(path)
    plt.close(fig)
    return path


def class_bars(table: pd.DataFrame, title: str = "", ylabel: str = "PGD-20 accuracy (%)", ax=None):
    """Grouped bars: one group per class, one bar per row of `table` (methods x classes)."""
    sns = _style()
    long = table.reset_index(names="method").melt(id_vars="method", var_name="class", value_name="acc")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(7, 0.9 * table.shape[1] + 2), 4))
    sns.barplot(data=long, x="class", y="acc", hue="method", ax=ax)
    for i, (m, row) in enumerate(table.iterrows()):
        ax.axhline(row.mean(), ls="--", lw=1, color=sns.color_palette(PALETTE)[i % 10], alpha=0.7)
    ax.set(xlabel="", ylabel=ylabel, title=title)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title="", fontsize=9, ncols=min(4, len(table)))
    fig.tight_layout()
    return fig


def heatmap(table: pd.DataFrame, title: str = "Class-wise PGD-20 accuracy (%)"):
    """Methods x classes heatmap, annotated."""
    sns = _style()
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * table.shape[1] + 2), 0.55 * len(table) + 1.6))
    sns.heatmap(table.astype(float), annot=True, fmt=".0f", cmap="rocket_r", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "accuracy (%)"})
    ax.set(title=title, xlabel="", ylabel="")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def temperature_trajectories(history: pd.DataFrame, classes: Sequence[str], title: str = "ABSLD temperatures"):
    """tau_adv and tau_nat per class over epochs (epoch 0 = initial value, when given)."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    colors = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, key, name in ((axes[0], "tau_adv", "adversarial"), (axes[1], "tau_nat", "clean")):
        if key not in history:
            ax.set_visible(False)
            continue
        tau = np.array(history[key].tolist(), dtype=float)
        epochs = history["epoch"].to_numpy()
        for c, cls in enumerate(classes):
            ax.plot(epochs, tau[:, c], marker="o", ms=3, color=colors(c % 20), label=cls)
        ax.set(title=f"{title}: {name}", xlabel="epoch", ylabel="temperature")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(fontsize=8, ncols=2, loc="best")
    fig.tight_layout()
    return fig


def kept_fraction(histories: dict[str, pd.DataFrame], title: str = "HAM: fraction of the batch kept"):
    _style()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in histories.items():
        if "kept_fraction" in h:
            ax.plot(h["epoch"], h["kept_fraction"], marker="o", label=name)
    ax.set(title=title, xlabel="epoch", ylabel="kept fraction |H| / B", ylim=(0, 1.05))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    return fig


def smoothness_comparison(class_acc: pd.DataFrame, summary: pd.DataFrame, hard: Sequence[str], title: str):
    """Left: class-wise PGD accuracy of SSD vs DSD (hard classes marked); right: Avg / Worst / NSD."""
    sns = _style()
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 1.3]})
    class_bars(class_acc, title=title, ax=a)
    for lab in a.get_xticklabels():
        if lab.get_text() in hard:
            lab.set_color("crimson")
            lab.set_fontweight("bold")
    long = summary[["avg", "worst"]].reset_index(names="run").melt(id_vars="run", var_name="metric", value_name="value")
    sns.barplot(data=long, x="metric", y="value", hue="run", ax=b)
    for i, (run, row) in enumerate(summary.iterrows()):
        b.text(1.02, 0.95 - 0.08 * i, f"NSD {run}: {row['nsd']:.3f}", transform=b.transAxes, fontsize=9)
    b.set(xlabel="", ylabel="PGD accuracy (%)", title="Avg / Worst")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def schedule_plot(tau_adv: np.ndarray, tau_nat: np.ndarray, classes: Sequence[str], title: str = "Replayed schedule"):
    """Temperature schedules (epochs x classes arrays, row 0 = initial) as two line panels."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    colors = plt.get_cmap("tab10")
    for ax, tau, name in ((axes[0], tau_adv, "adversarial"), (axes[1], tau_nat, "clean")):
        for c, cls in enumerate(classes):
            ax.plot(np.arange(len(tau)), tau[:, c], color=colors(c % 10), label=cls)
        ax.set(title=f"{title}: {name}", xlabel="epoch", ylabel="temperature")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def soft_label_plot(images: np.ndarray, probs: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                    title: str = "Teacher soft labels"):
    """Chosen images (N x C x H x W in [0,1]) with the bar chart of their tempered soft labels."""
    _style()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 4.6), gridspec_kw={"height_ratios": [1, 1.1]}, squeeze=False)
    for i in range(n):
        img = np.transpose(images[i], (1, 2, 0))
        axes[0, i].imshow(img.squeeze(), cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
        axes[0, i].set_axis_off()
        axes[0, i].set_title(f"true: {classes[labels[i]]}", fontsize=9)
        col = ["crimson" if c == labels[i] else "steelblue" for c in range(len(classes))]
        axes[1, i].bar(range(len(classes)), probs[i], color=col)
        axes[1, i].set_ylim(0, 1)
        axes[1, i].set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def describe_smoothness(summary: pd.DataFrame, ssd: str, dsd: str, hard: Sequence[str]) -> str:
    """One paragraph, computed from the numbers, on what an SSD-vs-DSD comparison shows."""
    s, d = summary.loc[ssd], summary.loc[dsd]
    dw, da, dn = d["worst"] - s["worst"], d["avg"] - s["avg"], d["nsd"] - s["nsd"]

    def verb(x, up="higher", down="lower", tol=0.05):
        return "the same" if abs(x) < tol else (up if x > 0 else down)

    claim = dw > 0 and abs(da) <= max(2.0, abs(dw))
    return (f"**{dsd}** vs **{ssd}** (hard classes: {', '.join(hard)}): worst-class PGD accuracy "
            f"{d['worst']:.1f}% vs {s['worst']:.1f}% ({dw:+.1f} points, {verb(dw)}), average {d['avg']:.1f}% vs "
            f"{s['avg']:.1f}% ({da:+.1f}), NSD {d['nsd']:.3f} vs {s['nsd']:.3f} ({verb(dn, 'less fair', 'fairer', tol=0.0005)}). "
            + ("This run agrees with the claim: similar average, better worst class under class-wise smoothness."
               if claim else "This run does not show the claimed effect (better worst class at a similar average); "
                             "at this scale and budget the difference may be noise."))
