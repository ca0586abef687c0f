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
    assert holds.endswith("**Holds**: DSD lifts the worst class and the average is not distinguishably different.")
    noise = plots.describe_smoothness(_diff((3.0, -4.0, 9.0), (0.1, -1, 1), (0.0, -0.1, 0.1)), "SSD", "DSD", ["3"])
    assert "**Not shown**: the worst-class difference is not distinguishable from 0" in noise
    costly = plots.describe_smoothness(_diff((5.0, 1.0, 9.0), (-4.0, -6.0, -2.0), (0.0, -0.1, 0.1)), "SSD", "DSD", ["3"])
    assert "DSD lifts the worst class but the average is distinguishably lower" in costly


def test_the_verdict_says_what_one_seeds_interval_covers_and_what_the_average_does():
    """With one seed the interval resamples test images only: 'holds on this one training run'; the
    sentence about the average says what its interval says (here: distinguishably higher, which the
    old wording called 'not distinguishably lower')."""
    one = plots.describe_smoothness(_diff((6.0, 2.0, 9.6), (1.6, 0.4, 2.9), (-0.1, -0.2, -0.01), seeds=1), "SSD", "DSD", ["3"])
    assert ("**Holds on this one training run** (the interval covers test images, not retraining): DSD lifts the "
            "worst class and the average is distinguishably higher.") in one
    assert "**Holds**:" not in one
    two = plots.describe_smoothness(_diff((6.0, 2.0, 9.6), (1.6, -0.4, 2.9), (-0.1, -0.2, -0.01), seeds=2), "SSD", "DSD", ["3"])
    assert "**Holds on these 2 training runs** (2 seeds: too few retrainings for a plain verdict)" in two


def test_a_pair_with_both_worst_classes_at_zero_carries_no_information():
    t = pd.DataFrame.from_dict({"worst": (0.0, 0.0, 0.0, 0.0, 0.0), "avg": (1.0, -2.0, 4.0, 11.0, 10.0),
                                "nsd": (0.1, -0.1, 0.3, 3.0, 2.9)}, orient="index", columns=["diff", "lo", "hi", "a", "b"])
    text = plots.describe_smoothness(Difference("DSD", "SSD", "pgd20", [0], t), "SSD", "DSD", ["3"])
    assert "DSD - SSD, worst-class PGD-20: both at 0% (1 seed): no information" in text
    assert "+0.0 (95% CI +0.0 to +0.0)" not in text
    assert text.endswith("**Not shown**: the worst classes of both are at 0%: no information.")


def _ci(table):
    out = table.copy()
    for c in table.columns:
        out[f"{c}_lo"], out[f"{c}_hi"] = table[c] - 3, table[c] + 3
    return out


def _pair_diff(classes, seeds=2):
    rows = {c: (1.0, -2.0, 4.0, 71.0, 70.0) for c in classes}
    rows.update(avg=(1.0, 0.5, 2.0, 71.0, 70.0), worst=(-3.0, -6.0, -1.0, 50.0, 53.0), nsd=(0.01, -0.01, 0.02, 0.2, 0.19))
    t = pd.DataFrame.from_dict(rows, orient="index", columns=["diff", "lo", "hi", "a", "b"])
    return Difference("m1", "m2", "pgd20", list(range(seeds)), t)


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
            "pair": plots.smoothness_comparison(summary, _pair_diff(classes), classes, ["b"], "t")}
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


def _summary(index=("pgd_at", "absld_ham")):
    classes = ["a", "b", "c"]
    table = pd.DataFrame([[90.0, 50.0, 70.0], [85.0, 60.0, 72.0]], index=list(index), columns=classes)
    return classes, _ci(table.assign(avg=[70.0, 72.0], worst=[50.0, 60.0])).assign(nsd=[0.2, 0.1])


def test_the_heatmap_has_a_colour_bar_on_a_fixed_0_100_scale_and_outlines_each_rows_worst_class():
    from matplotlib.patches import Rectangle

    classes, summary = _summary()
    fig = plots.heatmap(summary, classes, label="PGD-20 accuracy (%)")
    cbar = [ax for ax in fig.axes if ax.get_ylabel() == "PGD-20 accuracy (%)"]
    assert len(cbar) == 1, [ax.get_ylabel() for ax in fig.axes]
    mesh = fig.axes[0].collections[0]
    assert mesh.norm.vmin == 0 and mesh.norm.vmax == 100  # the same colour means the same accuracy in any study
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert sorted((int(b.get_x()), int(b.get_y())) for b in boxes) == [(1, 0), (1, 1)]  # class b is each row's worst
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["PGD-AT", "ABSLD+HAM"]
    assert any(ax.get_title() == "NSD\n(lower = fairer)" for ax in fig.axes)


def test_figures_name_methods_as_people_write_them():
    classes, summary = _summary()
    fig = plots.class_dots(summary, classes, hard=["b"], hard_words="hard: the study's")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[:2] == ["PGD-AT", "ABSLD+HAM"] and "shaded: hard classes (b)" in labels and "hard: the study's" in fig.axes[0].get_xlabel()
    assert "hardest" not in fig.axes[0].get_xlabel()  # an ordering by the mean, not a second definition of hard
    fig = plots.class_bars(summary, classes)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:2] == ["PGD-AT", "ABSLD+HAM"]


def test_the_smoothness_figure_shows_the_difference_with_a_zero_line_on_a_0_100_accuracy_axis():
    classes, summary = _summary(("SSD", "DSD"))
    per_seed = pd.DataFrame({"method": ["SSD", "SSD", "DSD", "DSD"], "seed": [0, 1, 0, 1], "attack": ["pgd20"] * 4,
                             "worst": [48.0, 52.0, 57.0, 63.0]})
    fig = plots.smoothness_comparison(summary, _pair_diff(classes), classes, ["b"], "SSD vs DSD", per_seed=per_seed)
    top, bot = fig.axes[:2]
    assert top.get_ylim() == (0, 100) and "2 seeds" in top.get_title()
    assert any(list(line.get_ydata()) == [0, 0] for line in bot.get_lines())  # the zero line
    from matplotlib.collections import PathCollection

    dots = np.concatenate([c.get_offsets()[:, 1] for c in top.collections if isinstance(c, PathCollection)])
    assert sorted(dots) == [48.0, 52.0, 57.0, 63.0]  # each seed's lowest class, beside the Worst bar
    assert [t.get_text() for t in bot.get_xticklabels()][-2:] == ["Avg", "Worst"]
    errs = [c for c in bot.containers]
    assert len(errs) == len(classes) + 2


def test_a_class_where_both_sides_sit_at_0_percent_is_drawn_hollow_as_no_information():
    """Both runs at 0% on a class on every image and seed: the difference panel shows no whisker and a
    hollow marker keyed 'both at 0%: no information', not a grey 'interval covers 0'."""
    classes, summary = _summary(("SSD", "DSD"))
    diff = _pair_diff(classes)
    diff.table.loc["b"] = (0.0, 0.0, 0.0, 0.0, 0.0)
    fig = plots.smoothness_comparison(summary, diff, classes, ["b"], "SSD vs DSD")
    bot = fig.axes[1]
    faces = [c.lines[0].get_markerfacecolor() for c in bot.containers]
    assert [f == "white" for f in faces] == [c == "b" for c in classes] + [False, False]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "both at 0%: no information" in labels
    plain = plots.smoothness_comparison(summary, _pair_diff(classes), classes, ["b"], "SSD vs DSD")
    assert not any("no information" in t.get_text() for t in plain.legends[0].get_texts())


def test_bar_values_never_sit_under_a_whisker():
    table = pd.DataFrame([[90.0, 8.0]], index=["m"], columns=["a", "b"])
    table = table.assign(a_lo=[85.0], a_hi=[95.0], b_lo=[2.0], b_hi=[15.0])
    fig = plots.class_bars(table, ["a", "b"])
    texts = {t.get_text(): t.get_position()[1] for t in fig.axes[0].texts}
    assert texts["90"] < 85.0  # inside the bar's foot, below the whisker's lower end
    assert texts["8"] > 15.0   # above the whisker's top


def test_kept_fraction_gives_each_method_its_own_epoch_axis_and_marks_the_start_of_dropping():
    ham = {s: pd.DataFrame({"epoch": np.arange(1, 121), "kept_fraction": np.r_[np.ones(49), np.full(71, 0.05 + s / 100)]})
           for s in range(2)}
    both = pd.DataFrame({"epoch": np.arange(1, 301), "kept_fraction": np.r_[np.ones(125), np.full(175, 0.3)]})
    fig = plots.kept_fraction({"ham": ham, "absld_ham": both}, starts={"ham": 50, "absld_ham": 126})
    a, b = fig.axes[:2]
    assert a.get_xlabel() == "epoch (of 120)" and b.get_xlabel() == "epoch (of 300)"
    assert a.get_title().startswith("HAM (120 epochs, 2 seeds") and b.get_title().startswith("ABSLD+HAM")
    assert any("dropping from epoch 50" in t.get_text() for t in a.texts)


def test_temperatures_over_seeds_draw_the_mean_and_the_bounds():
    h = {s: pd.DataFrame({"epoch": [1, 2], "tau_adv": [[1.0, 0.5 + s], [1.0, 0.5 + s]], "tau_nat": [[1, 1], [1, 1]]})
         for s in range(2)}
    fig = plots.temperature_trajectories(h, ["x", "y"], bounds=(0.5, 5.0), hard=["y"])
    ys = [list(line.get_ydata()) for line in fig.axes[0].get_lines()]
    assert [1.0, 1.0] in ys  # class y: the mean of 0.5 and 1.5
    assert [0.5, 0.5] in ys and [5.0, 5.0] in ys  # tau_min and tau_max
    assert "mean over 2 seeds" in fig._suptitle.get_text()


def test_the_smoothness_text_names_each_seeds_hard_classes_where_they_differ():
    """Each seed's DSD sharpens its own reference run's hardest classes: the text names them per seed
    when the seeds rank differently, and once when they agree (or for one seed)."""
    diff = _diff((3.0, -4.0, 9.0), (0.1, -1, 1), (0.0, -0.1, 0.1), seeds=2)
    differ = plots.describe_smoothness(diff, "SSD", "DSD", {0: ["3", "9"], 1: ["3", "0"]})
    assert differ.startswith("Hard classes (each seed's reference run, highest validation error; each seed's DSD "
                             "sharpens its own): seed 0: 3, 9; seed 1: 3, 0. The figures shade seed 0's.\n\n")
    same = plots.describe_smoothness(diff, "SSD", "DSD", {0: ["3", "9"], 1: ["3", "9"]})
    assert same.startswith("Hard classes (the reference run's highest validation error): 3, 9 (every seed's "
                           "reference run ranks the same).\n\n")
    one = plots.describe_smoothness(diff, "SSD", "DSD", {4: ["7"]})
    assert one.startswith("Hard classes (the reference run's highest validation error): 7.\n\n")


def test_the_pair_figures_caption_says_when_each_seed_sharpens_its_own_classes():
    from absld_core.smoothness import pair_hard_words

    words = "hard: the 3 classes with the highest validation robust error of the reference PGD-AT run (seed 0)"
    assert pair_hard_words(words, {0: ["3"], 1: ["5"]}) == words + ";\neach seed's DSD follows its own reference run's ranking"
    assert pair_hard_words(words, {0: ["3"], 1: ["3"]}) == words


def test_the_explorer_schedule_keys_its_bounds_and_the_soft_labels_epoch():
    t = np.ones((4, 3))
    fig = plots.schedule_plot(t, t, ["a", "b", "c"], recorded=(t, t), bounds=(0.5, 5.0), marked_epoch=2)
    labels = [x.get_text() for x in fig.legends[0].get_texts()]
    assert labels == ["a", "b", "c", "the run's own schedule", "bounds 0.5, 5", "soft labels drawn at epoch 2"]
    assert all(any(line.get_xdata()[0] == 2 for line in ax.lines if line.get_linestyle() == "-.") for ax in fig.axes)


@pytest.mark.parametrize("kind", ["class_bars", "class_dots"])
def test_a_legend_under_rotated_class_names_sits_below_the_names_and_the_caption_and_is_saved(kind, tmp_path):
    """CIFAR's names are drawn at 45 degrees; the legend under the axes is placed from their measured
    extent (the fixed offset for horizontal digits put it over the x label and caption), and the saved
    figure, cropped tight, still holds it."""
    classes = ["airplane", "automobile", "bird"]
    table = pd.DataFrame([[90.0, 50.0, 70.0], [85.0, 60.0, 72.0]], index=["pgd_at", "absld_ham"], columns=classes)
    summary = _ci(table.assign(avg=[70.0, 72.0], worst=[50.0, 60.0])).assign(nsd=[0.2, 0.1])
    words = "hard: the 3 classes with the highest validation robust error of the reference PGD-AT run (seed 0)"
    fig = getattr(plots, kind)(summary, classes, hard=["bird"], hard_words=words)
    ax = fig.axes[0]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    legend = ax.get_legend().get_window_extent(r)
    above = [t.get_window_extent(r) for t in ax.get_xticklabels()] + [ax.xaxis.label.get_window_extent(r)]
    assert legend.y1 <= min(b.y0 for b in above), (legend, min(b.y0 for b in above))
    assert fig.get_tightbbox(r).y0 * fig.dpi <= legend.y0 + 1   # inches against pixels: the crop keeps it
    plots.save(fig, tmp_path / "f.png")
