import numpy as np
import pandas as pd

from absld_core import plots


def _summary(ssd, dsd):
    return pd.DataFrame.from_dict({"SSD": dict(zip(("avg", "worst", "worst_class", "nsd"), ssd)),
                                   "DSD": dict(zip(("avg", "worst", "worst_class", "nsd"), dsd))}, orient="index")


def test_statement_is_computed_from_the_numbers():
    agree = plots.describe_smoothness(_summary((74.2, 26.1, "3", 0.282), (74.9, 53.3, "3", 0.149)), "SSD", "DSD", ["3"])
    assert "53.3% vs 26.1% (+27.2 points, higher)" in agree and "fairer" in agree and "agrees with the claim" in agree
    other = plots.describe_smoothness(_summary((58.0, 0.0, "3", 0.546), (55.6, 0.0, "5", 0.576)), "SSD", "DSD", ["3"])
    assert "(+0.0 points, the same)" in other and "less fair" in other and "does not show" in other


def test_figures_render_and_save(tmp_path):
    classes = ["a", "b", "c"]
    table = pd.DataFrame([[90.0, 50.0, 70.0], [85.0, 60.0, 72.0]], index=["m1", "m2"], columns=classes)
    hist = pd.DataFrame({"epoch": [1, 2], "tau_adv": [[1, 0.9, 1.1], [1, 0.8, 1.2]],
                         "tau_nat": [[1, 0.9, 1.1], [1, 0.8, 1.2]], "kept_fraction": [1.0, 0.6]})
    figs = {"bars": plots.class_bars(table), "heat": plots.heatmap(table),
            "temps": plots.temperature_trajectories(hist, classes), "kept": plots.kept_fraction({"ham": hist}),
            "sched": plots.schedule_plot(np.ones((3, 3)), np.ones((3, 3)), classes),
            "soft": plots.soft_label_plot(np.random.rand(2, 1, 8, 8), np.full((2, 3), 1 / 3), [0, 2], classes),
            "pair": plots.smoothness_comparison(table, _summary((80, 50, "b", 0.2), (81, 60, "b", 0.1)).rename(
                index={"SSD": "m1", "DSD": "m2"}), ["b"], "t")}
    for name, fig in figs.items():
        path = plots.save(fig, tmp_path / f"{name}.png")
        assert path.stat().st_size > 2000, name
