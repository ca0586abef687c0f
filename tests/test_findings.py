"""The findings' sentences (findings.py) on constructed records: what they say follows from the data."""
import numpy as np
import pandas as pd

from absld_core import findings
from absld_core.findings import Findings, at_bounds, bounds_phrase, kept_text, temperature_text


def record(tau_adv, tau_nat=None, risk=None, lo=0.5, hi=5.0, classes=("0", "1", "2", "3")):
    """A load_run-shaped record: config (method bounds, classes) and a per-epoch history."""
    h = {"epoch": range(1, len(tau_adv) + 1), "tau_adv": [list(map(float, t)) for t in tau_adv]}
    if tau_nat is not None:
        h["tau_nat"] = [list(map(float, t)) for t in tau_nat]
    if risk is not None:
        h["class_risk_nat"] = [list(map(float, r)) for r in risk]
    cfg = {"method": {"name": "absld", "tau_min": lo, "tau_max": hi}, "resolved": {"classes": list(classes)}}
    return {"config": cfg, "history": pd.DataFrame(h)}


def test_bounds_are_counted_per_seed_and_explained_only_when_reached():
    # seed 0 ends with classes 0 and 3 at the bounds (from epoch 2 on), seed 1 with class 0 only
    s0 = record([[1, 1, 1, 1], [5, 1.2, 0.9, 0.5], [5, 1.3, 0.8, 0.5]], risk=[[0.01, 0.0, 0.02, 0.0]] * 3)
    s1 = record([[1, 1, 1, 1], [4, 1.2, 0.9, 0.7], [5, 1.3, 0.8, 0.6]], risk=[[0.03, 0.0, 0.01, 0.0]] * 3)
    text = temperature_text({0: s0, 1: s1}, hard=["0", "2"])
    assert "adversarial: 1 of 4 classes sit at tau_max 5 and 1/0 at tau_min 0.5 (per seed, over 2 seeds)" in text
    assert "the hard classes end at 0 5.00, 2 0.80" in text
    assert "(**at tau_max: 0 in 2 of 2 seeds; the smoothest label, the opposite of the method's intent" in text
    assert findings.WHY_BOUNDS in text and "the clean training risks at the last epoch span 0 to 0.03" in text
    # nowhere near a bound: no explanation of the bounds, the largest move instead
    calm = record([[1, 1, 1, 1], [1.1, 0.9, 1, 1.05]])
    text = temperature_text({0: calm}, hard=["1"])
    assert "No class reached a bound: the largest move from the initial temperature is 0.10" in text
    assert "Why the bounds" not in text and "opposite" not in text


def test_a_hard_class_just_short_of_tau_max_is_flagged_as_the_smoothest_too():
    """A hard class ending at 4.9996 reads "5.00" among the ends; it is flagged, and said to be near, not at,
    the bound (the bounds' counts stay exact). One at 4.9 (2% of the range below) is not."""
    near = record([[1, 1, 1, 1], [4.9996, 1, 1, 4.9]])
    text = temperature_text({0: near}, hard=["0", "3"])
    assert "adversarial: 0 of 4 classes sit at tau_max 5" in text and "the hard classes end at 0 5.00, 3 4.90" in text
    assert "(**at or within 1% of the range below tau_max: 0; the smoothest label" in text


def test_the_explorer_and_the_findings_count_bounds_the_same_way():
    final = np.array([[5.0, 0.5, 0.5, 2.0]])
    assert [v.tolist() for v in at_bounds(final, 0.5, 5.0)] == [[1], [2]]
    assert at_bounds(final[0], 0.5, 5.0)[1].tolist() == [2]  # one replay: a single row
    assert bounds_phrase("clean", final, 0.5, 5.0) == "clean: 1 of 4 classes sit at tau_max 5 and 2 at tau_min 0.5"


def history(kept, start=3):
    return pd.DataFrame({"epoch": range(1, len(kept) + 1), "kept_fraction": [np.nan] * (start - 1) + kept[start - 1:]})


def test_kept_text_averages_from_the_start_of_dropping_and_flags_a_method_that_barely_trains():
    ham = {0: history([1, 1, 0.1, 0.1]), 1: history([1, 1, 0.2, 0.2])}      # 10% and 20%: mean 15%
    mixed = {0: history([1, 1, 0.8, 0.6])}                                     # 70%
    text = kept_text({"ham": ham, "absld_ham": mixed}, {"ham": 3, "absld_ham": 3})
    assert "HAM keeps 15% of each batch on average from epoch 3 of 4 on (seeds 10-20%)" in text
    assert "ABSLD+HAM keeps 70% of each batch on average from epoch 3 of 4 on" in text
    assert "HAM then trains on a small part of each batch" in text and "ABSLD+HAM then" not in text
    both = kept_text({"ham": ham, "absld_ham": ham}, {"ham": 3, "absld_ham": 3})
    assert "HAM and ABSLD+HAM then train on a small part of each batch" in both  # the verb agrees with two


def test_findings_of_a_study_load_each_record_once_and_say_what_summary_md_lists(tmp_path, monkeypatch):
    tempered = record([[1, 1, 1, 1], [5, 1, 1, 0.5]])
    dropping = {"config": {"method": {"name": "ham", "ham_start_epoch": 3}}, "history": history([1, 1, 0.5, 0.5])}
    plain = {"config": {"method": {"name": "pgd_at"}}, "history": pd.DataFrame({"epoch": [1, 2]})}
    by_path = {"a": tempered, "h": dropping, "p": plain}
    loads = []
    monkeypatch.setattr("absld_core.runs.load_run", lambda p: loads.append(p) or by_path[p])
    F = Findings.of({"absld": {0: "a"}, "ham": {0: "h"}, "pgd_at": {0: "p"}}, hard=["0"])
    assert sorted(loads) == ["a", "h", "p"]
    assert F.tempered == ["absld"] and list(F.dropping) == ["ham"] and F.starts == {"ham": 3}
    assert F.sentences == [f"ABSLD: {F.temperatures['absld']}", F.kept]
    assert F.kept.startswith("Early dropping: HAM keeps 50% of each batch on average from epoch 3 of 4 on")


def per_seed(rows):
    """A per_seed_table-shaped frame: (method, seed, attack, accuracy of classes a, b, c)."""
    return pd.DataFrame([{"method": m, "seed": s, "attack": k, "a": x, "b": y, "c": z} for m, s, k, x, y, z in rows])


def test_the_teachers_zero_classes_and_the_students_that_inherit_them_are_named():
    rows = [("teacher", 0, "pgd20", 0, 0, 40), ("teacher", 1, "pgd20", 0, 5, 30),     # b is not 0 in seed 1
            ("teacher", 0, "clean", 0, 10, 60), ("teacher", 1, "clean", 0, 20, 50),
            ("rslad", 0, "pgd20", 0, 1, 20), ("rslad", 1, "pgd20", 0, 0, 20),
            ("absld", 0, "pgd20", 0, 0, 25), ("absld", 1, "pgd20", 0, 0, 22),
            ("ham", 0, "pgd20", 3, 0, 20), ("ham", 1, "pgd20", 0, 0, 20)]             # ham: a is 3% in seed 0
    text = findings.zeros_text(per_seed(rows), "pgd20", ["a", "b", "c"])
    assert text == ("Teacher: at 0% on a under PGD-20 in every one of its 2 seeds, clean test images included. "
                    "RSLAD and ABSLD are at 0% on it too, so a worst-class difference between two of these "
                    "carries no information.")
    one = findings.zeros_text(per_seed(rows[:4] + rows[8:]), "pgd20", ["a", "b", "c"])
    assert one.endswith("clean test images included. No student is at 0% on it.")
    two = per_seed([("teacher", 0, "pgd20", 0, 0, 9), ("absld", 0, "pgd20", 0, 0, 1), ("rslad", 0, "pgd20", 0, 0, 1)])
    assert findings.zeros_text(two, "pgd20", ["a", "b", "c"]).endswith(
        "on a and b under PGD-20 in its one seed. ABSLD and RSLAD are at 0% on all of them too, so a worst-class "
        "difference between two of these carries no information.")
    lone = per_seed([("teacher", 0, "pgd20", 0, 9, 9), ("teacher", 0, "clean", 5, 9, 9), ("absld", 0, "pgd20", 0, 1, 1)])
    assert findings.zeros_text(lone, "pgd20", ["a", "b", "c"]) == ("Teacher: at 0% on a under PGD-20 in its one seed. "
                                                                  "ABSLD is at 0% on it too.")
    assert findings.zeros_text(per_seed([("teacher", 0, "pgd20", 1, 9, 9)]), "pgd20", ["a", "b", "c"]) is None
    assert findings.zeros_text(per_seed([("absld", 0, "pgd20", 0, 0, 0)]), "pgd20", ["a", "b", "c"]) is None  # no teacher


def test_the_findings_list_the_teachers_zeros_before_the_temperatures():
    F = Findings({}, zeros="Teacher: at 0% on a.", kept="Early dropping: x.")
    F.temperatures = {"absld": "t"}
    assert F.sentences == ["Teacher: at 0% on a.", "ABSLD: t", "Early dropping: x."]
