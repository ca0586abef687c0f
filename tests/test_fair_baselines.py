"""FRL, CFA and FAT (methods.md, "Fair adversarial training baselines"): each rule on given inputs, and a
short run of each through the engine."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from absld_core import train
from absld_core.config import ConfigError, TrainConfig
from absld_core.methods import EpochStats, StepContext
from absld_core.methods import cfa, fat, frl
from absld_core.runs import RunDir
from train_helpers import tiny


# ------------------------------------------------------------------------------------------------ FRL
def test_frl_multipliers_are_projected_and_weights_sum_to_one():
    v = frl.project_multipliers(torch.tensor([-0.3, 0.2, 0.9, 0.1], dtype=torch.float64), 0.5)
    assert (v >= 0).all() and float(v.sum()) == pytest.approx(0.5)
    assert v[0] == 0 and v[2] / v[1] == pytest.approx(0.9 / 0.2)        # rescaled, proportions kept
    small = frl.project_multipliers(torch.tensor([0.1, -1.0, 0.05], dtype=torch.float64), 0.5)
    assert torch.allclose(small, torch.tensor([0.1, 0.0, 0.05], dtype=torch.float64))  # under the limit: kept
    for lam in (v, small, torch.zeros(5, dtype=torch.float64)):
        w = frl.class_weights(lam)
        assert float(w.sum()) == pytest.approx(1.0) and (w > 0).all()


def test_frl_update_raises_the_weight_of_the_class_with_the_largest_error():
    opts = frl.FRLOptions(variant="reweight_remargin")
    z = torch.zeros(4, dtype=torch.float64)
    e_nat = torch.tensor([0.5, 0.1, 0.1, 0.1], dtype=torch.float64)
    e_bndy = torch.tensor([0.1, 0.1, 0.1, 0.6], dtype=torch.float64)
    lam0, lam1, lam2 = frl.update(z, z, z, e_nat, e_bndy, opts)
    # gamma0_0 = 0.5 - 0.2 - 0.07 = 0.23: lambda0_0 = 0.05 * 0.23; every other gamma is negative: 0
    assert torch.allclose(lam0, torch.tensor([0.05 * 0.23, 0, 0, 0], dtype=torch.float64))
    assert torch.allclose(lam1, torch.tensor([0, 0, 0, 2 * 0.05 * (0.6 - 0.225 - 0.07)], dtype=torch.float64))
    g1 = e_bndy - e_bndy.mean() - 0.07
    assert torch.allclose(lam2, 0.2 * g1)                               # remargin: not projected
    w0 = frl.class_weights(lam0)
    assert int(w0.argmax()) == 0 and float(w0.sum()) == pytest.approx(1.0)
    assert opts.tolerance == 0.07 and frl.FRLOptions().tolerance == 0.1


@pytest.mark.parametrize("variant", ["reweight", "reweight_remargin"])
def test_frl_trains_and_records_its_weights(variant, tmp_path):
    run = train(tiny("frl", "frl", tmp_path, method={"name": "frl", "variant": variant, "val_steps": 3}))
    hist = RunDir(run).history()
    for rec in hist:
        assert sum(rec["frl_weight_nat"]) == pytest.approx(1.0) and sum(rec["frl_weight_bndy"]) == pytest.approx(1.0)
        assert all(0.98 - 1e-9 <= s <= 3.0 + 1e-9 for s in rec["frl_eps_scale"])
        assert len(rec["frl_val_error_nat"]) == 4
    if variant == "reweight":
        assert all(s == 1.0 for rec in hist for s in rec["frl_eps_scale"])
    assert (run / "metrics.json").is_file()


def test_frl_needs_a_validation_split():
    cfg = tiny("frl", "frl", ".", method={"name": "frl"}, data__val_per_class=0, selection="test")
    with pytest.raises(ConfigError, match="FRL sets its class weights on the validation split"):
        TrainConfig.from_dict(cfg)


# ------------------------------------------------------------------------------------------------ CFA
def test_cfa_calibrated_radius_and_weight_from_given_class_accuracies():
    t = torch.tensor([0.2, 0.5, 0.9])
    assert torch.allclose(cfa.calibrated_eps(t, 0.3, 8 / 255), torch.tensor([0.5, 0.8, 1.2]) * 8 / 255)
    b = cfa.calibrated_weight(t, 0.5, 6.0)
    expect = torch.tensor([0.7 * 6 / (1 + 0.7 * 6), 6 / 7, 1.4 * 6 / (1 + 1.4 * 6)])
    assert torch.allclose(b, expect)
    assert b[0] < b[1] < b[2]   # an accurate (easy) class gets more of the robustness term


def test_cfa_variants_resolve_the_paper_and_the_release_defaults():
    paper_trades = cfa.CFAOptions().resolved(200)
    assert paper_trades == {"lambda1": 0.3, "fawa_decay": 0.85, "fawa_threshold": 0.2, "ccm_start_epoch": 11}
    assert cfa.CFAOptions(base="pgd_at").resolved(200)["lambda1"] == 0.5
    assert cfa.CFAOptions(base="fat").resolved(200)["lambda1"] == 0.7
    release = cfa.CFAOptions(variant="release").resolved(20)
    assert release == {"lambda1": 0.5, "fawa_decay": 0.88, "fawa_threshold": 0.24, "ccm_start_epoch": 2}
    with pytest.raises(ConfigError, match="method.base='natural' is invalid"):
        cfa.CFAOptions(base="natural")


def _val(worst):
    return {"clean": {"worst": 90.0}, "pgd10": {"worst": worst}}


def test_fawa_updates_only_when_the_worst_class_reaches_the_threshold():
    model = nn.Linear(3, 2)
    m = cfa.CFA(cfa.CFAOptions(fawa_threshold=0.3, fawa_decay=0.5, fawa_gate="validation"), 2, torch.device("cpu"))
    first = {k: v.clone() for k, v in model.state_dict().items()}
    assert m.after_validation(EpochStats(1, torch.zeros(2), torch.zeros(2), val=_val(20.0), model=model)) == \
        {"fawa_updated": False, "fawa_worst": 0.2}
    assert m.averaged_weights() is None                                   # below: nothing averaged yet
    m.after_validation(EpochStats(2, torch.zeros(2), torch.zeros(2), val=_val(30.0), model=model))
    assert all(torch.equal(m.avg[k], first[k]) for k in first)          # the first update: theta itself
    with torch.no_grad():
        model.weight.add_(1.0)
    m.after_validation(EpochStats(3, torch.zeros(2), torch.zeros(2), val=_val(10.0), model=model))
    assert torch.equal(m.avg["weight"], first["weight"])                # below the threshold: unchanged
    m.after_validation(EpochStats(4, torch.zeros(2), torch.zeros(2), val=_val(40.0), model=model))
    assert torch.allclose(m.avg["weight"], 0.5 * first["weight"] + 0.5 * (first["weight"] + 1.0))


@pytest.mark.parametrize("base", ["trades", "pgd_at", "fat"])
def test_cfa_trains_calibrates_and_evaluates_the_averaged_weights(base, tmp_path):
    run = train(tiny("cfa", "cfa", tmp_path, optim__epochs=3, eval_every=3, eval_every_epoch_after_decay=False,
                     method={"name": "cfa", "base": base, "ccm_start_epoch": 2, "fawa_threshold": 0.0}))
    hist = RunDir(run).history()
    assert all("val" in h for h in hist)                                # FAWA validates every epoch
    assert all(h["fawa_updated"] for h in hist)                         # threshold 0: always
    assert [h["cfa_calibrating"] for h in hist] == [True, True, True]   # from epoch 2 (after epoch 1's t_k)
    assert all(0 <= a <= 1 for h in hist for a in h["cfa_class_acc_adv"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["attrs"]["checkpoint"] == "averaged.pt" and (run / "averaged.pt").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["method"]["ccm_start_epoch"] == 2


def test_cfa_step_uses_the_class_radius(monkeypatch):
    """With t_k known, the TRADES attack of a class-k sample gets radius (lambda1 + t_k) * eps."""
    seen = {}

    def fake_trades_kl(model, x, eps, alpha, steps, **kw):
        seen["eps"] = eps
        return x
    monkeypatch.setattr(cfa.A, "trades_kl", fake_trades_kl)
    m = cfa.CFA(cfa.CFAOptions(ccm_start_epoch=2), 3, torch.device("cpu"))
    m.after_epoch(EpochStats(1, torch.zeros(3), torch.zeros(3), acc_adv=torch.tensor([0.1, 0.4, 0.7])))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    from absld_core.engine import MultiView
    y = torch.tensor([0, 2, 1])
    ctx = StepContext(raw=model, forward=MultiView(model), eps=0.1, alpha=0.01, steps=2, epoch=2, num_classes=3)
    m.step(torch.rand(3, 3, 2, 2), y, ctx)
    assert torch.allclose(seen["eps"].flatten(), (0.3 + torch.tensor([0.1, 0.7, 0.4])) * 0.1)


# ------------------------------------------------------------------------------------------------ FAT
def _loop_reference(model, x, y, x0, eps, alpha, steps, tau):
    """Early-stopped PGD written per sample with Python control flow (an independent reference)."""
    outs, taken = [], []
    for i in range(len(y)):
        xi, x0i, budget, k = x[i:i + 1], x0[i:i + 1].clone(), tau, 0
        for _ in range(steps):
            xa = x0i.clone().requires_grad_(True)
            logits = model(xa)
            if int(logits.argmax(1)) != int(y[i]):
                if budget == 0:
                    break
                budget -= 1
            loss = nn.functional.cross_entropy(logits, y[i:i + 1], reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            x0i = torch.min(torch.max(x0i + alpha * g.sign(), xi - eps), xi + eps).clamp(0, 1).detach()
            k += 1
        outs.append(x0i)
        taken.append(k)
    return torch.cat(outs), torch.tensor(taken)


@pytest.mark.parametrize("tau", [0, 1, 2])
def test_fat_stops_tau_steps_after_the_first_misclassification(tau):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y = torch.rand(40, 3, 2, 2), torch.randint(0, 3, (40,))
    torch.manual_seed(1)
    x_adv, taken = fat.early_stopped_pgd(model, x, y, 0.3, 0.05, 8, tau)
    torch.manual_seed(1)
    x0 = fat.A.uniform_start(x, 0.3)
    ref_x, ref_taken = _loop_reference(model, x, y, x0, 0.3, 0.05, 8, tau)
    assert torch.equal(taken, ref_taken)
    assert torch.allclose(x_adv, ref_x, atol=1e-6)
    assert (taken < 8).any() and (taken == 8).any()      # both kinds of sample occur
    wrong_at_start = model(x0).argmax(1) != y
    if tau == 0:
        assert (taken[wrong_at_start] == 0).all()         # misclassified at once: no step at all


def test_fat_tau_schedule_is_the_releases_scaled():
    assert [fat.tau_at(e, 120) for e in (1, 50, 51, 90, 91, 120)] == [0, 0, 1, 1, 2, 2]
    assert [fat.tau_at(e, 12) for e in (5, 6, 9, 10)] == [0, 1, 1, 2]


def test_fat_trains_and_records_its_steps(tmp_path):
    run = train(tiny("fat", "fat", tmp_path, optim__epochs=2, method={"name": "fat", "tau": 1}))
    hist = RunDir(run).history()
    assert all(h["fat_tau"] == 1 and 0 <= h["fat_mean_steps"] <= 4 for h in hist)
    assert np.isfinite(hist[-1]["loss"])
