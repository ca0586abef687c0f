"""Each method trains one short epoch on synthetic data and does what methods.md says it must."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from absld_core import train
from absld_core.config import MethodConfig
from absld_core.methods import StepContext, build_method, registry
from absld_core.methods.base import kd_per_sample, smoothed_targets
from absld_core.methods.distill import fair_ard_weights
from absld_core.methods.ham import hardness_weights
from absld_core.methods.temperature import absld_update
from absld_core.models import build_model
from absld_core.runs import RunDir
from absld_core import attacks as A
from train_helpers import tiny


def make(name, num_classes, **options):
    """A method object from its registered name and options (a teacher path where it needs one)."""
    teacher = {"teacher": {"checkpoint": "x"}} if registry.get(name).needs_teacher else {}
    return build_method(MethodConfig.from_dict({"name": name, **teacher, **options}), num_classes, torch.device("cpu"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    return train(tiny("teacher", "natural", out, optim__epochs=3))


def _teacher(teacher_dir, **m):
    name = m.pop("name", "absld")
    return {"name": name, "teacher": {"checkpoint": str(teacher_dir)}, **tiny("x", name, ".")["method"], **m}


@pytest.mark.parametrize("method", registry.names())
def test_every_method_trains_and_records(method, teacher_dir, tmp_path):
    m = tiny(method, method, tmp_path)["method"]
    if registry.get(method).needs_teacher:
        m["teacher"] = {"checkpoint": str(teacher_dir)}
    run = train(tiny(method, method, tmp_path, method=m, optim__epochs=1))
    hist = RunDir(run).history()
    assert len(hist) == 1 and hist[0]["epoch"] == 1
    for key in ("lr", "loss", "seconds", "images_per_second"):
        assert np.isfinite(hist[0][key]), key
    for key in ("class_risk_adv", "class_risk_nat", "tau_adv", "tau_nat"):
        assert key not in hist[0] or len(hist[0][key]) == 4, key
    assert "class_risk_adv" in hist[0] or "class_risk_nat" in hist[0]
    assert 0.0 <= hist[0].get("kept_fraction", 0.0) <= 1.0
    assert set(hist[0]["val"]) == {"clean", "pgd3"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["rows"]) == {"clean", "pgd5"}
    assert (run / "fair_best.pt").is_file() and (run / "best.pt").is_file() and (run / "last.pt").is_file()


def test_absld_temperatures_follow_the_rule(teacher_dir, tmp_path):
    run = train(tiny("absld", "absld", tmp_path, method=_teacher(teacher_dir, eta=0.3), optim__epochs=2,
                     optim__schedule="milestones", optim__milestones=[1]))
    hist = RunDir(run).history()
    tau_adv, tau_nat = np.ones(4), np.ones(4)
    for rec, eta in zip(hist, (0.3 * 0.1, 0.3 * 0.1)):  # lr (and eta) drop after epoch 1, before its update
        for tau, key in ((tau_adv, "class_risk_adv"), (tau_nat, "class_risk_nat")):
            r = np.asarray(rec[key], dtype=float)
            g = r - r.mean()
            tau[:] = np.clip(tau - eta * g / np.abs(g).max(), 0.5, 5.0)
        assert np.allclose(rec["tau_adv"], tau_adv, atol=1e-6) and np.allclose(rec["tau_nat"], tau_nat, atol=1e-6)
        assert rec["eta"] == pytest.approx(eta)
    assert not np.allclose(tau_adv, 1.0)


def test_hard_class_gets_lower_temperature(tmp_path):
    noise = [110.0, 15.0, 15.0, 15.0]  # class 0 is much noisier, hence harder
    opts = {"num_classes": 4, "train_per_class": 40, "test_per_class": 8, "image_size": 8, "class_noise": noise}
    t = train(tiny("t", "natural", tmp_path, data__options=opts, optim__epochs=3))
    run = train(tiny("a", "absld", tmp_path, data__options=opts, optim__epochs=2,
                     method=_teacher(t, eta=0.5)))
    last = RunDir(run).history()[-1]
    assert np.argmax(last["class_risk_adv"]) == 0
    assert last["tau_adv"][0] < min(last["tau_adv"][1:])
    assert last["tau_nat"][0] < min(last["tau_nat"][1:])


def _ctx(model, teacher=None, epoch=2, steps=4):
    from absld_core.engine import MultiView
    return StepContext(raw=model, forward=MultiView(model), eps=0.1, alpha=0.03, steps=steps, epoch=epoch,
                       num_classes=4, teacher=teacher)


def test_coupled_temperatures_use_the_product():
    torch.manual_seed(0)
    teacher = build_model("small_cnn", 4, width=4).eval()
    m = make("absld", 4, coupled_temperatures=True, tau_init_adv=[0.5, 1.0, 2.0, 4.0],
             tau_init_nat=[3.0, 2.0, 1.0, 0.5])
    x, y = torch.rand(8, 3, 8, 8), torch.tensor([0, 1, 2, 3] * 2)
    p_adv, p_nat = m.teacher_targets(x, y, _ctx(teacher, teacher))
    z = teacher(x)
    t = torch.tensor([0.5 * 3.0, 1.0 * 2.0, 2.0 * 1.0, 4.0 * 0.5])[y]
    assert torch.allclose(p_adv, F.softmax(z / t[:, None], 1), atol=1e-6) and torch.allclose(p_nat, p_adv)
    sep = make("absld", 4, tau_init_adv=[0.5, 1.0, 2.0, 4.0], tau_init_nat=[3.0, 2.0, 1.0, 0.5])
    pa, pn = sep.teacher_targets(x, y, _ctx(teacher, teacher))
    assert torch.allclose(pa, F.softmax(z / torch.tensor([0.5, 1.0, 2.0, 4.0])[y][:, None], 1), atol=1e-6)
    assert not torch.allclose(pa, pn)


def test_ham_drops_exactly_the_examples_still_correct_after_m_steps():
    torch.manual_seed(0)
    model = build_model("small_cnn", 4, width=4)
    ham = make("ham", 4, ham_early_steps=2, ham_start_epoch=2)
    x, y = torch.rand(32, 3, 8, 8), torch.randint(0, 4, (32,))
    torch.manual_seed(7)
    out = ham.step(x, y, _ctx(model, epoch=2))
    torch.manual_seed(7)
    x_m = A.pgd(model, x, y, 0.1, 0.03, 2)  # the same random start and first M steps
    still_correct = model.eval()(x_m).argmax(1) == y
    model.train()
    assert torch.equal(out.kept, ~still_correct)
    assert 0 < out.kept.sum() < 32
    assert torch.equal(out.labels, y[out.kept]) and out.adv_logits.shape == (int(out.kept.sum()), 4)
    warm = ham.step(x, y, _ctx(model, epoch=1))  # before ham_start_epoch: plain PGD-AT on the whole batch
    assert warm.kept.all() and warm.adv_logits.shape == (32, 4)


def test_ham_records_kept_fraction_per_epoch(tmp_path):
    run = train(tiny("ham", "ham", tmp_path, method={"name": "ham", "ham_start_epoch": 2, "ham_early_steps": 1},
                     optim__epochs=2))
    hist = RunDir(run).history()
    assert hist[0]["kept_fraction"] == 1.0
    assert 0.0 <= hist[1]["kept_fraction"] < 1.0


def test_hardness_weights_favour_early_crossers():
    w = hardness_weights(torch.tensor([0, 1, 3, 3]), 3)
    assert w.mean().item() == pytest.approx(1.0) and w[0] > w[1] > w[2] == w[3]


def test_class_wise_label_smoothing_targets():
    y = torch.tensor([0, 1, 2])
    s = torch.tensor([0.0, 0.3, 0.9])
    t = smoothed_targets(y, s, 3)
    expect = torch.tensor([[1, 0, 0], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    assert torch.allclose(t, expect, atol=1e-6) and torch.allclose(t.sum(1), torch.ones(3))
    nat = make("pgd_at", 3, label_smoothing=[0.0, 0.3, 0.9])
    assert torch.allclose(nat.targets(y), expect, atol=1e-6)
    with pytest.raises(ValueError, match="one per class"):
        make("natural", 3, label_smoothing=[0.1, 0.2])


def test_kd_term_matches_release_formula():
    torch.manual_seed(0)
    b = F.softmax(torch.randn(5, 10), 1)
    z = torch.randn(5, 10)
    a = F.softmax(z, 1)
    release = (b * (torch.log(b + 1e-5) - torch.log(a))).mean()  # averaged over all B*C elements
    assert torch.allclose(kd_per_sample(b, z).mean(), release, atol=1e-6)


def test_absld_update_rule_and_fair_ard_weights():
    tau = torch.ones(4)
    risk = torch.tensor([4.0, 1.0, 1.0, 2.0])
    new = absld_update(tau, risk, 0.1, 0.5, 5.0)
    assert torch.allclose(new, torch.tensor([0.9, 1.0 + 0.1 * 1 / 2, 1.05, 1.0]), atol=1e-6)
    assert torch.equal(absld_update(tau, torch.ones(4), 0.1, 0.5, 5.0), tau)  # no gap, no change
    assert absld_update(torch.full((2,), 0.55), torch.tensor([2.0, 0.0]), 1.0, 0.5, 5.0)[0] == 0.5  # clamped
    w = fair_ard_weights(torch.tensor([1.0, 2.0, 4.0, 4.0]), 4)
    assert (w >= 5 / 6 - 1e-6).all() and (w <= 5 / 2 + 1e-6).all() and w[0] > w[1] >= w[2]


def test_fixed_table_and_function_schedules(teacher_dir, tmp_path):
    fixed = train(tiny("f", "absld", tmp_path, method=_teacher(teacher_dir, temperature_schedule="fixed",
                                                               tau_init_adv=[0.5, 1, 2, 3])))
    assert all(r["tau_adv"] == [0.5, 1, 2, 3] for r in RunDir(fixed).history())
    table = [[1, 1, 1, 1], [0.5, 0.6, 0.7, 0.8], [2, 2, 2, 2]]
    tab = train(tiny("t", "absld", tmp_path, method=_teacher(teacher_dir, temperature_schedule="table", tau_table_adv=table)))
    h = RunDir(tab).history()
    assert np.allclose(h[0]["tau_adv"], table[1]) and np.allclose(h[1]["tau_adv"], table[2])
    seen = []

    def f(epoch, risk_adv, risk_nat, tau_adv, tau_nat):
        seen.append((epoch, risk_adv.clone()))
        return tau_adv * 0.9, tau_nat + (risk_nat > risk_nat.mean()).float()

    fn = train(tiny("fn", "absld", tmp_path, method=_teacher(teacher_dir, temperature_schedule="function", tau_function=f)))
    h = RunDir(fn).history()
    assert [s[0] for s in seen] == [1, 2]
    assert np.allclose(seen[1][1].numpy(), h[1]["class_risk_adv"])
    assert np.allclose(h[1]["tau_adv"], [0.81] * 4)


def test_fair_reweight_records_class_weights(teacher_dir, tmp_path):
    run = train(tiny("fw", "rslad", tmp_path, method=_teacher(teacher_dir, name="rslad", fair_reweight=True)))
    h = RunDir(run).history()
    w = np.asarray(h[0]["class_weights"])
    assert w.shape == (4,) and (w >= 5 / 6 - 1e-6).all() and (w <= 2.5 + 1e-6).all()
    assert all("tau_adv" not in r for r in h)  # RSLAD has no temperatures (the teacher's at 1)
