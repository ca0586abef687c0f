import numpy as np
import pytest
import torch

from absld_core import train
from absld_core.replay import ReplaySettings, effective, replay, risks_from_history, soft_labels
from absld_core.runs import RunDir
from train_helpers import tiny


def test_replay_with_the_runs_settings_reproduces_its_temperatures(tmp_path):
    t = train(tiny("t", "natural", tmp_path, optim__epochs=2))
    run = train(tiny("a", "absld", tmp_path, optim__epochs=3, optim__schedule="milestones", optim__milestones=[2],
                     method={"name": "absld", "teacher": {"checkpoint": str(t)}, "eta": 0.4, "tau_min": 0.8}))
    hist = RunDir(run).history()
    ra, rn = risks_from_history(hist)
    ta, tn = replay(ra, rn, ReplaySettings(eta=0.4, tau_min=0.8, decay_epochs=(2,)))
    assert np.allclose(ta[1:], [h["tau_adv"] for h in hist], atol=1e-6)
    assert np.allclose(tn[1:], [h["tau_nat"] for h in hist], atol=1e-6)
    assert np.allclose(ta[0], 1.0)
    other, _ = replay(ra, rn, ReplaySettings(eta=0.9, tau_min=0.8, decay_epochs=(2,)))
    assert not np.allclose(other, ta)


def test_effective_and_soft_labels():
    ta, tn = np.array([[1.0, 2.0]]), np.array([[3.0, 0.5]])
    a, n = effective(ta, tn, coupled=True)
    assert np.allclose(a, [[3.0, 1.0]]) and np.allclose(a, n)
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    sharp = soft_labels(z, torch.tensor([0, 1]), [0.5, 0.5])
    smooth = soft_labels(z, torch.tensor([0, 1]), [4.0, 4.0])
    assert sharp[0, 0] > smooth[0, 0] > 0.5 and np.allclose(sharp.sum(1), 1)
    with pytest.raises(ValueError, match="tau_min < tau_max"):
        ReplaySettings(tau_min=2, tau_max=1)


def test_temperature_travel_of_the_paper_schedule_counted_by_hand():
    """300 updates at eta 0.1; the update after epoch e uses the lr factor of epoch e+1 (the release
    decays before updating): 214 at 0.1, 45 at 0.01, 25 at 0.001, 16 at 0.0001."""
    from absld_core.config import OptimConfig
    from absld_core.schedule import eta_factors, paper_travel, temperature_travel

    assert paper_travel() == pytest.approx(214 * 0.1 + 45 * 0.01 + 25 * 0.001 + 16 * 0.0001)
    f = eta_factors(OptimConfig(epochs=300))
    assert f.count(1.0) == 214 and len(f) == 300
    assert temperature_travel(OptimConfig(epochs=10, schedule="constant"), 0.2) == pytest.approx(2.0)
    assert temperature_travel(OptimConfig(epochs=10), 0.2, follows_lr=False) == pytest.approx(2.0)


@pytest.mark.parametrize("epochs, schedule", [(5, "paper300"), (10, "paper300"), (40, "paper300"), (7, "constant"),
                                              (300, "paper300")])
def test_eta_for_paper_travel_gives_the_papers_total_travel_in_the_replay(epochs, schedule):
    """The scaled eta, replayed by the explorer's code with the run's own per-epoch factors, sums to the
    paper's travel; at 300 paper epochs it is the paper's eta."""
    from absld_core.config import OptimConfig
    from absld_core.replay import etas
    from absld_core.schedule import eta_factors, eta_for_paper_travel, paper_travel

    cfg = OptimConfig(epochs=epochs, schedule=schedule)
    eta = eta_for_paper_travel(cfg)
    s = ReplaySettings(eta=eta, eta_factors=tuple(eta_factors(cfg)))
    assert sum(etas(s, epochs)) == pytest.approx(paper_travel())
    if epochs == 300:
        assert eta == pytest.approx(0.1)
    if schedule == "constant":
        assert eta == pytest.approx(paper_travel() / epochs)


def test_the_explorer_budget_line_states_updates_and_travel():
    from absld_core.config import OptimConfig
    from absld_core.replay import travel_text
    from absld_core.schedule import describe_travel

    assert travel_text(ReplaySettings(eta=0.5), 4).startswith("4 temperature updates, total travel (sum of eta) 2:")
    line = describe_travel(OptimConfig(epochs=5), 0.1)
    assert "5 temperature updates, 2 of them at the full eta=0.1" in line and "total travel (sum of eta) 0.21 " in line
    assert "eta=10.4 would give the paper's travel" in line


def test_the_explorers_fine_tune_ends_with_a_before_after_table_with_paired_intervals(tmp_path):
    """The fine-tune's result is shown, not only its folder: per class and for Avg / Worst / NSD the
    run before, after, and after - before with the paired interval on the same test images."""
    from absld_core.evaluate import load_per_image
    from absld_core.widgets import Explorer, settings_notice

    t = train(tiny("t", "natural", tmp_path, optim__epochs=2))
    run = train(tiny("a", "absld", tmp_path, optim__epochs=2,
                     method={"name": "absld", "teacher": {"checkpoint": str(t)}}))
    ex = Explorer(run, class_order=["class2", "class0", "class3", "class1"], hard_words="hard: the study's")
    assert [ex.classes[int(c)] for c in ex.labels] == ["class2", "class0", "class1", "class3"]  # hard #1, #2, easy #1, #2
    assert ex.roles == ["hard #1", "hard #2", "easy #1", "easy #2"] and ex.order_words == "the study's hardest and easiest classes (hard: the study's)"
    ft = ex.finetune(ex.recorded, 1, progress=False)
    table, attack = ex.before_after(ft)
    assert attack == "pgd5"
    assert list(table.index) == ["Avg", "Worst", "NSD", "class class0", "class class1", "class class2", "class class3"]
    y, before = load_per_image(run / "per_image.npz")
    _, after = load_per_image(ft / "per_image.npz")
    for c in range(4):
        b, a = 100 * before["pgd5"][y == c].mean(), 100 * after["pgd5"][y == c].mean()
        row = table.loc[f"class class{c}"]
        assert row["before"] == pytest.approx(b, abs=1e-3) and row["after"] == pytest.approx(a, abs=1e-3)
        assert row["after - before [95% CI]"].startswith(f"{a - b:+.1f} [")
    assert settings_notice(ex.recorded, {"eta": ex.recorded.eta}) is None
    note = settings_notice(ex.recorded, {"eta": 3.0, "tau_max": ex.recorded.tau_max})
    assert "these parameters are not used: eta=3.0" in note and "tau_max" not in note.split("not used")[1]


def test_the_soft_label_sentence_names_a_wrong_teachers_favoured_class():
    from types import SimpleNamespace

    from absld_core.widgets import Explorer

    ex = Explorer.__new__(Explorer)
    ex.classes, ex.roles = ["a", "b"], ["hard #1", "easy #1"]
    ex.labels = torch.tensor([0, 1])
    ex.teacher_logits = torch.tensor([[0.0, 2.0], [0.0, 3.0]])  # wrong on the first image, right on the second
    ex.risk_adv = ex.risk_nat = np.zeros((1, 2))
    ex.schedules = lambda s: (np.full((2, 2), 0.5), np.full((2, 2), 0.5))
    text = ex.soft_label_text(SimpleNamespace())
    assert "hard #1 (true a, tau 0.50): 0.02 on the true class, **0.98 on b**" in text
    assert "easy #1 (true b, tau 0.50): 1.00 on the true class" in text and "sharpens the teacher's mistakes" in text
