import numpy as np
import pandas as pd
import pytest

from absld_core import plots
from absld_core.intervals import Difference


def _diff(worst, avg, nsd, seeds=3):
    t = pd.DataFrame.from_dict({"worst": worst, "avg": avg, "nsd": nsd}, orient="index", columns=["diff", "lo", "hi"])
    return Difference("DSD", "SSD", "pgd20", list(range(seeds)), t)


def test_statement_is_computed_from_the_interval():
    holds = plots.describe_smoothness(_diff((27.2, 12.0, 41.0), (0.7, -1.5, 2.9), (-0.13, -0.2, -0.05)), "SSD", "DSD", ["3"])
    assert "DSD - SSD, worst-class PGD-20: +27.2 points (95% CI +12.0 to +41.0; 3 seeds): DSD is better" in holds
    assert "average PGD-20: +0.7 points (95% CI -1.5 to +2.9; 3 seeds): not distinguishable" in holds
    assert "**Holds at this budget**" in holds
    noise = plots.describe_smoothness(_diff((3.0, -4.0, 9.0), (0.1, -1, 1), (0.0, -0.1, 0.1)), "SSD", "DSD", ["3"])
    assert "**Not shown at this budget**: the worst-class difference is not distinguishable from 0" in noise
    costly = plots.describe_smoothness(_diff((5.0, 1.0, 9.0), (-4.0, -6.0, -2.0), (0.0, -0.1, 0.1)), "SSD", "DSD", ["3"])
    assert "the average is distinguishably lower" in costly


def _ci(table):
    out = table.copy()
    for c in table.columns:
        out[f"{c}_lo"], out[f"{c}_hi"] = table[c] - 3, table[c] + 3
    return out


def test_figures_render_and_save(tmp_path):
    classes = ["a", "b", "c"]
    table = pd.DataFrame([[90.0, 50.0, 70.0], [85.0, 60.0, 72.0]], index=["m1", "m2"], columns=classes)
    summary = _ci(table.assign(avg=[70.0, 72.0], worst=[50.0, 60.0])).assign(nsd=[0.2, 0.1], nsd_lo=[0.1, 0.05],
                                                                              nsd_hi=[0.3, 0.2])
    hist = pd.DataFrame({"epoch": [1, 2], "tau_adv": [[1, 0.9, 1.1], [1, 0.8, 1.2]],
                         "tau_nat": [[1, 0.9, 1.1], [1, 0.8, 1.2]], "kept_fraction": [1.0, 0.6]})
    figs = {"bars": plots.class_bars(table), "bars_ci": plots.class_bars(summary, classes, hard=["b"]),
            "dots": plots.class_dots(summary, classes), "heat": plots.heatmap(summary, classes),
            "temps": plots.temperature_trajectories(hist, classes, initial={"tau_adv": 1.0, "tau_nat": 1.0}, hard=["b"]),
            "kept": plots.kept_fraction({"ham": hist}),
            "sched": plots.schedule_plot(np.ones((3, 3)), np.ones((3, 3)), classes),
            "soft": plots.soft_label_plot(np.random.rand(2, 1, 8, 8), np.full((2, 3), 1 / 3), [0, 2], classes),
            "pair": plots.smoothness_comparison(summary, classes, ["b"], "t")}
    for name, fig in figs.items():
        path = plots.save(fig, tmp_path / f"{name}.png")
        assert path.stat().st_size > 2000, name


def test_class_dots_sort_classes_hardest_first_and_colours_are_distinct():
    classes = ["easy", "hard", "mid"]
    summary = pd.DataFrame([[95.0, 20.0, 60.0]] * 2, index=["m1", "m2"], columns=classes)
    fig = plots.class_dots(summary, classes)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["hard", "mid", "easy"]
    cols = plots.colours(9)
    assert len({tuple(np.round(c, 3)) for c in cols}) == 9


def test_temperature_plot_starts_at_epoch_zero_with_the_initial_temperature():
    hist = pd.DataFrame({"epoch": [1, 2], "tau_adv": [[0.9, 1.1], [0.8, 1.2]], "tau_nat": [[1, 1], [1, 1]]})
    fig = plots.temperature_trajectories(hist, ["x", "y"], initial={"tau_adv": [1.0, 1.0], "tau_nat": 1.0}, hard=["x"])
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0, 1, 2] and list(line.get_ydata()) == pytest.approx([1.0, 0.9, 0.8])
    assert line.get_linewidth() > fig.axes[0].get_lines()[1].get_linewidth()  # the hard class stands out
    assert len(fig.legends) == 1  # one legend for both panels
