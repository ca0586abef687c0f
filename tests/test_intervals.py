"""Intervals and paired differences on synthetic per-image results, where the truth is known."""
import json
import pickle

import numpy as np
import pytest

from absld_core import intervals
from absld_core.evaluate import load_per_image, save_per_image


def fake_run(path, labels, correct: dict, classes=None):
    """A run directory with just what the interval code reads: per_image.npz and metrics.json."""
    path.mkdir(parents=True, exist_ok=True)
    save_per_image(path / "per_image.npz", labels, correct)
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    rows = {}
    for a, ok in correct.items():
        acc = [100.0 * ok[labels == c].mean() for c in range(len(classes))]
        rows[a] = {"avg": 100.0 * ok.mean(), "worst": min(acc), "worst_class": classes[int(np.argmin(acc))],
                   "nsd": float(np.std(acc) / np.mean(acc)), "n": len(labels), **dict(zip(classes, acc))}
    (path / "metrics.json").write_text(json.dumps({"attrs": {"classes": classes}, "rows": rows}))
    return path


def bernoulli_run(path, rng, p_per_class, n_per_class=60):
    labels = np.repeat(np.arange(len(p_per_class)), n_per_class)
    ok = rng.random(len(labels)) < np.asarray(p_per_class)[labels]
    return fake_run(path, labels, {"pgd20": ok, "clean": np.ones_like(ok)})


def test_identical_runs_differ_by_exactly_zero(tmp_path):
    rng = np.random.default_rng(0)
    a = {s: bernoulli_run(tmp_path / f"a{s}", rng, [0.9, 0.7, 0.5]) for s in range(3)}
    d = intervals.paired_difference(a, a, "pgd20", n_boot=300)
    assert (d.table[["diff", "lo", "hi"]].abs().to_numpy() == 0).all()
    assert (d.table["a"] == d.table["b"]).all()  # each side's observed value, the same here
    assert not d.distinguishable("worst")
    assert "not distinguishable at this budget" in intervals.describe(d, "worst", "A", "A")


def test_a_known_class_effect_is_found_and_nothing_else(tmp_path):
    """a and b share every image's outcome except class 0, where a is right on all and b on none of
    a random half: the class-0 difference is +50 with an interval excluding 0; classes 1 and 2 are 0."""
    rng = np.random.default_rng(1)
    a, b = {}, {}
    for s in range(3):
        labels = np.repeat(np.arange(3), 80)
        ok = rng.random(len(labels)) < 0.8
        ok_a, ok_b = ok.copy(), ok.copy()
        idx0 = np.flatnonzero(labels == 0)
        ok_a[idx0] = True
        ok_b[idx0] = False
        ok_b[rng.choice(idx0, 40, replace=False)] = True
        a[s] = fake_run(tmp_path / f"a{s}", labels, {"pgd20": ok_a})
        b[s] = fake_run(tmp_path / f"b{s}", labels, {"pgd20": ok_b})
    d = intervals.paired_difference(a, b, "pgd20", n_boot=500, names=("A", "B"))
    diff, lo, hi = d["0"]
    assert diff == pytest.approx(50.0) and lo > 30 and hi < 70
    for c in ("1", "2"):
        assert d[c] == (0.0, 0.0, 0.0)  # paired: the shared outcomes cancel in every resample
    assert d.distinguishable("0") and d["avg"][1] > 0
    assert "A is better" in intervals.describe(d, "avg")


def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent(tmp_path):
    """Coverage of the one-seed interval of a class accuracy over 120 synthetic test sets (p = 0.7,
    60 images): a correct 95% interval covers the truth in about 114 of them; the bounds are loose
    enough (0.87-0.995) for any resampling seed, tight enough to fail a 70% or a 100% interval."""
    rng = np.random.default_rng(2)
    covered = 0
    trials = 120
    for t in range(trials):
        run = bernoulli_run(tmp_path / f"r{t}", rng, [0.7, 0.9], n_per_class=60)
        s = intervals.summarise({"m": {0: run}}, "pgd20", n_boot=400, seed=t)
        covered += s.loc["m", "0_lo"] <= 70.0 <= s.loc["m", "0_hi"]
    assert 0.87 <= covered / trials <= 0.995, covered


def test_seed_means_and_intervals_widen_with_seed_spread(tmp_path):
    """Two methods with the same image-level noise: the one whose seeds disagree gets the wider interval."""
    rng = np.random.default_rng(3)
    steady = {s: bernoulli_run(tmp_path / f"s{s}", rng, [0.8, 0.8]) for s in range(5)}
    shaky = {s: bernoulli_run(tmp_path / f"k{s}", rng, [0.8 + 0.15 * (-1) ** s, 0.8]) for s in range(5)}
    t = intervals.summarise({"steady": steady, "shaky": shaky}, "pgd20", n_boot=800)
    width = (t["0_hi"] - t["0_lo"])
    assert width["shaky"] > width["steady"]
    assert (t["n_seeds"] == 5).all()
    means = intervals.per_seed_table({"steady": steady}).query("attack == 'pgd20'")["avg"].mean()
    assert t.loc["steady", "avg"] == pytest.approx(means)


def test_per_seed_table_columns(tmp_path):
    rng = np.random.default_rng(4)
    runs = {"m": {s: bernoulli_run(tmp_path / f"m{s}", rng, [0.6, 0.9]) for s in (0, 1)}}
    runs["m"][2] = tmp_path / "unfinished"  # no metrics.json: left out
    df = intervals.per_seed_table(runs)
    assert list(df.columns) == ["method", "seed", "attack", "avg", "worst", "worst_class", "nsd", "0", "1"]
    assert sorted(df["seed"].unique()) == [0, 1] and set(df["attack"]) == {"pgd20", "clean"}


def test_a_paired_comparison_refuses_different_test_sets(tmp_path):
    rng = np.random.default_rng(5)
    a = {0: bernoulli_run(tmp_path / "a", rng, [0.8, 0.8], n_per_class=30)}
    b = {0: bernoulli_run(tmp_path / "b", rng, [0.8, 0.8], n_per_class=31)}
    with pytest.raises(ValueError, match="different test images"):
        intervals.paired_difference(a, b, "pgd20")
    with pytest.raises(ValueError, match="not evaluated with cw30"):
        intervals.paired_difference(a, a, "cw30")
    with pytest.raises(ValueError, match="no seed is shared"):
        intervals.paired_difference(a, {1: b[0]}, "pgd20")


def test_per_image_files_load_no_pickles(tmp_path):
    path = tmp_path / "per_image.npz"
    with open(path, "wb") as f:
        np.savez(f, labels=np.array([pickle.dumps(object())], dtype=object))
    with pytest.raises(ValueError, match="not a per-image results file"):
        load_per_image(path)
    save_per_image(path, np.array([0, 1]), {"pgd20": np.array([True, False])})
    y, c = load_per_image(path)
    assert y.tolist() == [0, 1] and c["pgd20"].tolist() == [True, False]
    with pytest.raises(FileNotFoundError, match="record_per_image"):
        load_per_image(tmp_path / "missing.npz")


def test_a_zero_difference_gives_an_interval_containing_zero_about_95_percent_of_the_time(tmp_path):
    """Two methods with the same true class accuracies, independent errors on the same images: over
    100 draws the paired interval of the worst-class and average differences contains 0 in about 95."""
    rng = np.random.default_rng(6)
    hits = {"avg": 0, "0": 0}
    trials = 100
    for t in range(trials):
        a = {0: bernoulli_run(tmp_path / f"a{t}", rng, [0.7, 0.9], n_per_class=80)}
        b = {0: bernoulli_run(tmp_path / f"b{t}", rng, [0.7, 0.9], n_per_class=80)}
        d = intervals.paired_difference(a, b, "pgd20", n_boot=400, seed=t)
        for m in hits:
            hits[m] += not d.distinguishable(m)
    for m, h in hits.items():
        assert 0.87 <= h / trials <= 1.0, (m, h)


def test_a_large_true_difference_excludes_zero(tmp_path):
    rng = np.random.default_rng(7)
    a = {s: bernoulli_run(tmp_path / f"a{s}", rng, [0.9, 0.9]) for s in range(3)}
    b = {s: bernoulli_run(tmp_path / f"b{s}", rng, [0.5, 0.9]) for s in range(3)}
    d = intervals.paired_difference(a, b, "pgd20", n_boot=500)
    assert d.distinguishable("worst") and d["worst"][1] >= 20 and d.distinguishable("0")  # 20 exactly here


def test_the_eta_scaling_claim_is_stated_from_its_paired_difference(tmp_path):
    """Claim (e): the scaled-eta ABSLD is right on all of class 0 where the plain one is right on a
    random half (class 0 its worst); the statement computes the +diff and names the better run."""
    from absld_core.claims import student_claims
    from absld_core.plan import ETA_SCALED

    rng = np.random.default_rng(3)
    runs = {"absld": {}, ETA_SCALED: {}}
    for s in range(3):
        labels = np.repeat(np.arange(3), 80)
        ok = np.ones(len(labels), bool)
        ok[rng.choice(np.flatnonzero(labels != 0), 30, replace=False)] = False
        plain = ok.copy()
        idx0 = np.flatnonzero(labels == 0)
        plain[rng.choice(idx0, 40, replace=False)] = False
        runs["absld"][s] = fake_run(tmp_path / f"p{s}", labels, {"pgd20": plain})
        runs[ETA_SCALED][s] = fake_run(tmp_path / f"e{s}", labels, {"pgd20": ok})
    lines = student_claims(runs, "pgd20", ["0", "1", "2"])
    assert len(lines) == 1 and lines[0].startswith("(e) ABSLD with eta scaled")
    assert "ABSLD (eta scaled) - ABSLD, worst-class PGD-20: +" in lines[0]
    assert "ABSLD (eta scaled) is better" in lines[0]


def test_a_run_evaluated_before_per_image_records_gets_them_recorded_again(tmp_path):
    """record_per_image evaluates a finished run's checkpoint again: the same per-image results as the
    run's own final evaluation, and nothing written when metrics.json disagrees or the run is unfinished."""
    from absld_core.engine import train
    from absld_core.experiments import record_per_image
    from train_helpers import tiny

    run = train(tiny("old", "pgd_at", tmp_path))
    y0, c0 = load_per_image(run / "per_image.npz")
    (run / "per_image.npz").unlink()
    assert record_per_image(run) == run / "per_image.npz"
    y1, c1 = load_per_image(run / "per_image.npz")
    assert (y0 == y1).all() and c0.keys() == c1.keys()
    assert all((c0[a] == c1[a]).all() for a in c0)

    (run / "per_image.npz").unlink()
    m = json.loads((run / "metrics.json").read_text())
    m["rows"]["pgd5"]["avg"] += 1.0
    (run / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="away from metrics.json"):
        record_per_image(run)
    assert not (run / "per_image.npz").exists()

    (run / "status.json").write_text(json.dumps({"state": "running", "epoch": 1}))
    with pytest.raises(ValueError, match="not a finished run"):
        record_per_image(run)


def test_the_cost_in_claim_c_is_a_count_of_trained_examples_not_a_machine_timing(tmp_path):
    """Claim (c) compares the adversarial examples HAM and PGD-AT trained on (an epoch's samples times
    its kept fraction, summed): the seconds in the histories do not enter, so a summary written on
    another machine (or the same one, busier) says the same."""
    from absld_core.claims import student_claims, trained_examples

    rng = np.random.default_rng(5)
    runs = {"ham": {}, "pgd_at": {}}
    labels = np.repeat(np.arange(2), 60)
    for s in range(2):
        for name, kept in (("ham", [1.0, 0.5, 0.25]), ("pgd_at", [None, None, None])):
            p = fake_run(tmp_path / f"{name}{s}", labels, {"pgd20": rng.random(len(labels)) < 0.7})
            (p / "config.json").write_text("{}")
            hist = [{"epoch": e + 1, "samples": 100.0, "seconds": float(rng.uniform(1, 1000)),
                     **({"kept_fraction": k} if k is not None else {})} for e, k in enumerate(kept)]
            (p / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
            runs[name][s] = p
    assert trained_examples(runs["ham"]) == pytest.approx(175.0) and trained_examples(runs["pgd_at"]) == 300.0
    (line,) = student_claims(runs, "pgd20", ["0", "1"])
    assert "HAM 175 in 3 epochs, 58% of what its epochs offered (early dropping); PGD-AT 300 in 3 epochs" in line
    assert "HAM / PGD-AT 0.58 in all, 0.58 per epoch" in line and "seconds" not in line


def test_verdicts_are_worded_by_what_the_interval_covers():
    assert intervals.verdict(True, 1) == ("**holds on this one training run** (the interval covers test images, "
                                          "not retraining)")
    assert intervals.verdict(True, 2).startswith("**holds on these 2 training runs**")
    assert intervals.verdict(True, 3) == intervals.verdict(True, 5) == "**holds**"
    assert intervals.verdict(False, 1) == intervals.verdict(False, 5) == "**not shown**"


def _claim_runs(tmp_path, seeds, worst_gain=True):
    """ABSLD right on every image of its worst class 0 where RSLAD is right on 40%: claim (b) holds."""
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(3), 50)
    runs = {"absld": {}, "rslad": {}}
    for s in range(seeds):
        good = rng.random(len(labels)) < 0.95
        weak = good.copy()
        weak[labels == 0] = rng.random(50) < 0.4
        runs["absld"][s] = fake_run(tmp_path / f"a{s}", labels, {"pgd20": good if worst_gain else weak})
        runs["rslad"][s] = fake_run(tmp_path / f"r{s}", labels, {"pgd20": weak})
    return runs


@pytest.mark.parametrize("seeds, word", [(1, "**holds on this one training run** (the interval covers test images, "
                                             "not retraining)"), (3, "**holds**.")])
def test_a_claim_over_one_seed_says_it_holds_on_this_one_training_run(tmp_path, seeds, word):
    from absld_core.claims import student_claims

    (line,) = student_claims(_claim_runs(tmp_path, seeds), "pgd20", ["0", "1", "2"])
    assert line.startswith(f"(b) ABSLD beats RSLAD on the worst class and NSD: {word}")


def test_a_difference_of_two_runs_both_at_zero_reads_no_information(tmp_path):
    labels = np.repeat(np.arange(2), 30)
    zero = np.zeros(len(labels), bool)
    a = {0: fake_run(tmp_path / "a", labels, {"pgd20": zero})}
    b = {0: fake_run(tmp_path / "b", labels, {"pgd20": zero})}
    d = intervals.paired_difference(a, b, "pgd20", n_boot=200, names=("A", "B"))
    for m in ("worst", "avg"):
        text = intervals.describe(d, m)
        assert text.endswith("both at 0% (1 seed): no information"), text
        assert "+0.0 (95% CI +0.0 to +0.0)" not in text
    assert "NSD undefined" in intervals.describe(d, "nsd")


def test_claim_f_compares_absld_with_the_best_fair_baseline_and_the_leader_respects_overlap(tmp_path):
    """FAT has the best worst class of the fair baselines (so claim f compares ABSLD with it); FRL and
    FAT are within noise of each other, so the leader sentence does not rank them."""
    from absld_core.claims import leader, student_claims

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(2), 80)
    right = {"absld": 72, "frl": 42, "cfa": 16, "fat": 46}  # of class 1's 80 images; class 0: 72 each
    runs = {}
    for m, k in right.items():
        ok = np.zeros(len(labels), bool)
        ok[rng.choice(80, 72, replace=False)] = True
        ok[80 + rng.choice(80, k, replace=False)] = True
        runs[m] = {0: fake_run(tmp_path / m, labels, {"pgd20": ok})}
    (line,) = student_claims(runs, "pgd20", ["0", "1"])
    assert line.startswith("(f) ABSLD beats the best fair-AT baseline on the worst class: **holds on this one training run**")
    assert "highest worst-class point estimate is FAT (of FRL, CFA, FAT)" in line and "ABSLD - FAT, worst-class" in line
    text = leader({m: runs[m] for m in ("frl", "cfa", "fat")}, "pgd20", ["0", "1"])
    assert text.startswith("**FAT** has the best worst-class PGD-20 point estimate")
    assert "distinguishably ahead of CFA" in text and "not distinguishable from FRL" in text
    assert "the interval covers test images, not retraining" in text


def test_a_bound_that_is_zero_up_to_float_rounding_is_zero_and_decides_nothing():
    """Means of the same images' accuracies that agree in exact arithmetic can differ by 1e-14 in floats
    (the smoke study's label-smoothing average had a lower bound of -1.4e-14); the sign of that noise
    must not decide a verdict, so interval ends are rounded far below an accuracy step."""
    noise = (0.1 + 0.2) - 0.3                                   # 5.6e-17, 0 in exact arithmetic
    assert noise > 0
    samples = np.array([3.5] + [noise] * 20 + [7.0] * 380)     # observed 3.5; 2.5% of the bootstrap at "0"
    obs, lo, hi = intervals._interval(samples)
    assert (obs, lo, hi) == (3.5, 0.0, 7.0) and str(lo) == "0.0"  # not -0.0 either
    import pandas as pd
    d = intervals.Difference("A", "B", "pgd20", [0], pd.DataFrame({"diff": [obs], "lo": [lo], "hi": [hi]}, index=["avg"]))
    assert not d.distinguishable("avg")
    assert intervals.describe(d, "avg").endswith("(95% CI +0.0 to +7.0; 1 seed): not distinguishable at this budget")
    assert intervals._interval(np.array([1.0] + [0.001] * 400))[1] == 0.001  # a real bound is kept
