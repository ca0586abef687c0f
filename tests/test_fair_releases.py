"""FRL, CFA and FAT against their authors' released code, rule by rule, on the same tensors.

Each `release_*` function below is the release's rule written again from reading its code
(hannxu123/fair_robust: utils_frl.py, utils_frl2.py, frlrw.py, frlrmrw.py; PKU-ML/CFA: attack.py,
train.py; zjfheart/Friendly-Adversarial-Training: earlystop.py), in the release's own form: a delta
rather than an iterate, per-sample Python loops, samples removed from the batch as they stop, separate
forward passes in the release's order. The project's step runs through the engine's train_step with
the same model, optimiser, batch and random tensors; both must agree to float rounding, BatchNorm's
running statistics included (the releases' extra train-mode passes move them)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from absld_core import attacks as A
from absld_core.engine import EpochTotals, MultiView, train_step, validates
from absld_core.methods import EpochStart, EpochStats, StepContext
from absld_core.methods import cfa, fat, frl

C, EPS, ALPHA, STEPS = 4, 8 / 255, 2 / 255, 5
CPU = torch.device("cpu")


class Net(nn.Module):
    """Small enough to be quick, with BatchNorm so that train-mode passes matter."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, C))

    def forward(self, x):
        return self.body(x)


def _batch(seed=0, n=24):
    torch.manual_seed(seed)
    model = Net()
    x, y = torch.rand(n, 3, 8, 8), torch.randint(0, C, (n,))
    with torch.no_grad():            # running statistics away from their initial values
        model.train()(torch.rand(n, 3, 8, 8))
    return model, x, y


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)


def _project_step(method, model, x, y, epoch=2, seed=None):
    opt = _sgd(model)
    model.train()
    ctx = StepContext(raw=model, forward=MultiView(model), eps=EPS, alpha=ALPHA, steps=STEPS, epoch=epoch,
                      num_classes=C)
    if seed is not None:
        torch.manual_seed(seed)
    out, _ = train_step(method, x, y, ctx, opt, EpochTotals(C, CPU))
    return out


def _agree(a: nn.Module, b: nn.Module, atol=2e-6):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), atol=atol, rtol=0), \
            f"{k}: {float((sa[k].double() - sb[k].double()).abs().max()):.3g}"


def _uniform(x, eps_b, seed=11):
    """A start point in the (per-sample) eps-ball, given to both sides."""
    g = torch.Generator().manual_seed(seed)
    return (x + (2 * torch.rand(x.shape, generator=g) - 1) * eps_b).clamp(0, 1)


def _with_t(m: cfa.CFA, t: torch.Tensor) -> cfa.CFA:
    """CFA after an epoch whose class accuracies were t (balanced classes of 10)."""
    count = torch.full((C,), 10.0)
    m.after_epoch(EpochStats(1, torch.zeros(C), torch.zeros(C), acc_adv=t.double(), class_count=count))
    return m


T = torch.tensor([0.2, 0.5, 0.3, 0.8])


# ------------------------------------------------------------------------------------------- releases
def release_cfa_pgd_step(model, opt, x, y, class_eps, alpha, steps, start):
    """attack.py cw_pgd_loss in train.py's train_epoch: the attack in train mode, then the loss pass,
    the step, the logging pass on the clean batch."""
    model.train()
    e = class_eps[y].view(-1, 1, 1, 1)
    delta = (start - x).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, delta)
        d = torch.clamp(delta + alpha * g.sign(), min=-e, max=e)
        delta = torch.clamp(d, -x, 1 - x).detach().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model(x)
    return (x + delta).detach(), loss.detach()


def release_trades_attack(model, x, radius, step, steps, noise):
    """The TRADES KL attack both releases use (CFA's cw_trades_loss, FRL's trades_adv): eval mode, start
    x + 0.001 noise, signed steps on the summed KL to the clean prediction, per-sample radius; the model
    is left in train mode, as both leave it."""
    model.eval()
    x_adv = x + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum")
        (g,) = torch.autograd.grad(kl, x_adv)
        x_adv = x_adv.detach() + step * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - radius), x + radius).clamp(0, 1)
    model.train()
    return x_adv


def release_cfa_trades_step(model, opt, x, y, class_eps, class_beta, alpha, steps, noise):
    """attack.py cw_trades_loss: the KL attack in eval mode; in train mode the clean pass, the
    adversarial pass and a third clean pass for the KL target; then the logging pass."""
    e = class_eps[y].view(-1, 1, 1, 1)
    x_adv = release_trades_attack(model, x, e, alpha, steps, noise)
    n = len(x)
    loss_nat = F.cross_entropy(model(x), y, reduction="none") / n
    robust = model(x_adv)
    loss_rob = (1.0 / n) * F.kl_div(F.log_softmax(robust, 1), F.softmax(model(x), 1), reduction="none").sum(1)
    b = class_beta[y]
    loss = ((1 - b) * loss_nat + b * loss_rob).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    model(x)
    return x_adv.detach(), loss.detach()


def release_cfa_fat_step(model, opt, x, y, class_eps, tau, alpha, steps, start):
    """attack.py cw_fat_loss: train mode throughout; a sample moves while its control is positive and a
    misclassified one spends a unit; the loop ends when none moves."""
    model.train()
    e = class_eps[y].view(-1, 1, 1, 1)
    delta = (start - x).requires_grad_(True)
    control = torch.full((len(x),), float(tau))
    out = model(x + delta)
    pred = out.argmax(1)
    k = steps
    while k > 0:
        idx = []
        for i in range(len(y)):
            if pred[i] != y[i] and control[i] > 0:
                control[i] -= 1
                idx.append(i)
            elif pred[i] == y[i] and control[i] > 0:
                idx.append(i)
        if not idx:
            break
        (g,) = torch.autograd.grad(F.cross_entropy(out, y), delta)
        d = torch.clamp(delta[idx] + alpha * g[idx].sign(), min=-e[idx], max=e[idx])
        d = torch.clamp(d, -x[idx], 1 - x[idx])
        delta = delta.detach().clone()
        delta[idx] = d.detach()
        delta.requires_grad_(True)
        out = model(x + delta)
        pred = out.argmax(1)
        k -= 1
    loss = F.cross_entropy(model(x + delta), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model(x)
    return (x + delta).detach(), loss.detach()


def release_frl_step(model, opt, x, y, w0, w1, w2, eps, alpha, steps, beta, noise, remargin):
    """utils_frl.py / utils_frl2.py: trades_adv (eval mode, radius eps * w2[y]; remargin: step
    max(radius) / 4), then in train mode CE(model(x)), KL(model(x_adv) || softmax(model(x)))."""
    new_eps = (eps * w2[y]).view(-1, 1, 1, 1)
    step = new_eps.max() / 4 if remargin else alpha
    x_adv = release_trades_attack(model, x, new_eps, step, steps, noise)
    opt.zero_grad()
    loss_nat = F.cross_entropy(model(x), y, reduction="none")
    loss_bndy = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="none").sum(1)
    a, b = w0[y], w1[y]
    loss = (loss_nat * a).sum() / a.sum() + beta * (loss_bndy * b).sum() / b.sum()
    loss.backward()
    opt.step()
    return x_adv.detach(), loss.detach()


def release_earlystop(model, x, y, start, eps, alpha, steps, tau, omega, noises):
    """earlystop.py (loss 'cent'), eval mode: samples leave the batch when they stop; the others take a
    signed step plus omega * N(0, 1) noise (here the given noise tensors, indexed by the original sample)."""
    model.eval()
    idx, control = torch.arange(len(y)), torch.full((len(y),), float(tau))
    it_adv, it_x, it_y = start.clone(), x.clone(), y.clone()
    result = torch.empty_like(x)
    for k in range(steps):
        it_adv.requires_grad_(True)
        output = model(it_adv)
        pred = output.argmax(1)
        keep, done = [], []
        for j in range(len(pred)):
            if pred[j] != it_y[j]:
                if control[j] == 0:
                    done.append(j)
                else:
                    control[j] -= 1
                    keep.append(j)
            else:
                keep.append(j)
        result[idx[done]] = it_adv[done].detach()
        (grad,) = torch.autograd.grad(F.cross_entropy(output, it_y), it_adv)
        if not keep:
            return result
        control, it_x, it_y, idx = control[keep], it_x[keep], it_y[keep], idx[keep]
        it_adv = it_adv[keep].detach() + alpha * grad[keep].sign() + omega * noises[k][idx]
        it_adv = torch.min(torch.max(it_adv, it_x - eps), it_x + eps).clamp(0, 1)
    result[idx] = it_adv.detach()
    return result


# ---------------------------------------------------------------------------------- CFA (items 1, 4)
@pytest.mark.parametrize("base", ["pgd_at", "fat"])
def test_cfa_on_pgd_at_and_fat_attacks_in_train_mode_as_released(base, monkeypatch):
    model, x, y = _batch()
    ref = copy.deepcopy(model)
    m = _with_t(cfa.CFA(cfa.CFAOptions(base=base, ccm_start_epoch=2), C, CPU), T)
    lam = m.settings["lambda1"]
    class_eps = (lam + T) * EPS
    start = _uniform(x, class_eps[y].view(-1, 1, 1, 1))
    monkeypatch.setattr(A, "uniform_start", lambda x_, eps_: start.clone())
    taken = {}
    real_forward = MultiView.forward

    def spy(self, *xs):
        taken["x_adv"] = xs[0].detach().clone()
        return real_forward(self, *xs)
    monkeypatch.setattr(MultiView, "forward", spy)
    out = _project_step(m, model, x, y)
    if base == "pgd_at":
        ref_x, ref_loss = release_cfa_pgd_step(ref, _sgd(ref), x, y, class_eps, ALPHA, STEPS, start)
    else:
        ref_x, ref_loss = release_cfa_fat_step(ref, _sgd(ref), x, y, class_eps, 3, ALPHA, STEPS, start)
    assert torch.allclose(taken["x_adv"], ref_x, atol=1e-6)
    assert float(out.loss.detach()) == pytest.approx(float(ref_loss), abs=1e-6)
    _agree(model, ref)       # parameters and BatchNorm buffers (running statistics, batch counter)
    assert int(model.body[1].num_batches_tracked) == int(ref.body[1].num_batches_tracked)


def test_cfa_eval_mode_attack_is_an_option_and_differs():
    model, x, y = _batch(1)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    m_train = _with_t(cfa.CFA(cfa.CFAOptions(base="pgd_at", ccm_start_epoch=2), C, CPU), T)
    m_eval = _with_t(cfa.CFA(cfa.CFAOptions(base="pgd_at", ccm_start_epoch=2, attack_train_mode=False), C, CPU), T)
    _project_step(m_train, a, x, y, seed=3)
    _project_step(m_eval, b, x, y, seed=3)
    # the eval-mode attack does not move the running statistics: 1 loss pass + 1 logging pass
    assert int(b.body[1].num_batches_tracked) - int(model.body[1].num_batches_tracked) == 2
    assert int(a.body[1].num_batches_tracked) - int(model.body[1].num_batches_tracked) == STEPS + 2
    assert not torch.allclose(a.body[1].running_mean, b.body[1].running_mean)


def test_cfa_on_trades_matches_the_release_with_its_extra_passes():
    model, x, y = _batch(2)
    ref = copy.deepcopy(model)
    m = _with_t(cfa.CFA(cfa.CFAOptions(ccm_start_epoch=2), C, CPU), T)
    class_eps = (m.settings["lambda1"] + T) * EPS
    class_beta = (0.5 + T) * 6 / (1 + (0.5 + T) * 6)
    out = _project_step(m, model, x, y, seed=5)
    torch.manual_seed(5)
    noise = torch.empty(x.shape).normal_()
    _, ref_loss = release_cfa_trades_step(ref, _sgd(ref), x, y, class_eps, class_beta, ALPHA, STEPS, noise)
    assert float(out.loss.detach()) == pytest.approx(float(ref_loss), abs=1e-6)
    _agree(model, ref)
    # and with two passes, the parameters still agree but the running statistics do not
    two, ref2 = copy.deepcopy(ref), copy.deepcopy(ref)
    m2 = _with_t(cfa.CFA(cfa.CFAOptions(ccm_start_epoch=2, release_bn_passes=False), C, CPU), T)
    _project_step(m2, two, x, y, seed=6)
    torch.manual_seed(6)
    release_cfa_trades_step(ref2, _sgd(ref2), x, y, class_eps, class_beta, ALPHA, STEPS, torch.empty(x.shape).normal_())
    assert torch.allclose(two.body[0].weight, ref2.body[0].weight, atol=2e-6)
    assert not torch.allclose(two.body[1].running_var, ref2.body[1].running_var, atol=1e-4)


def test_cfa_fat_base_runs_the_releases_stopping_rule(monkeypatch):
    """The release's cw_fat_loss stops a sample for good once its budget is spent, even if it is
    classified correctly again; tau 0 moves nothing (the start is the example)."""
    model, x, y = _batch(3)
    start = _uniform(x, EPS)
    monkeypatch.setattr(A, "uniform_start", lambda x_, eps_: start.clone())
    for tau in (0, 1, 3):
        a, ref = copy.deepcopy(model), copy.deepcopy(model)
        got = cfa.early_stopped_pgd(a, x, y, EPS, ALPHA, STEPS, tau)
        ref_x, _ = release_cfa_fat_step(ref, _sgd(ref), x, y, torch.full((C,), EPS), tau, ALPHA, STEPS, start)
        assert torch.allclose(got, ref_x, atol=1e-6)
        if tau == 0:
            assert torch.allclose(got, start)
        else:
            assert not torch.allclose(got, start)


# ----------------------------------------------------------------------------- CFA (items 3, 6, 7)
def test_cfa_class_accuracy_is_normalised_as_released_on_unbalanced_labels():
    y = torch.tensor([0] * 30 + [1] * 10 + [2] * 5 + [3] * 5)
    correct_mask = torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.6
    # the release's CW_log: m * cw_robust / N
    cw = torch.zeros(C)
    for i, c in enumerate(y):
        if correct_mask[i]:
            cw[c] += 1
    release = C * cw / len(y)
    correct = torch.bincount(y[correct_mask], minlength=C).double()
    count = torch.bincount(y, minlength=C).double()
    assert torch.allclose(cfa.class_accuracy(correct, count), release.double())
    per_class = cfa.class_accuracy(correct, count, "class_count")
    assert torch.allclose(per_class, correct / count)
    assert float((per_class - release.double()).abs().max()) > 0.1   # the two differ on unbalanced data
    m = cfa.CFA(cfa.CFAOptions(), C, CPU)
    m.after_epoch(EpochStats(1, torch.zeros(C), torch.zeros(C), acc_adv=correct / count, class_count=count))
    assert torch.allclose(m.t.double(), release.double(), atol=1e-6)
    balanced = torch.full((C,), 10.0)
    acc = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert torch.allclose(cfa.class_accuracy(acc * balanced, balanced), acc)   # equal when balanced


def test_cfa_calibrates_from_epoch_11_of_200_as_the_releases_begin_10():
    # the release: for epoch in range(200) (0-based): calibrated when epoch >= begin (10)
    release = [e + 1 for e in range(200) if e >= 10]
    m = cfa.CFA(cfa.CFAOptions(), C, CPU, train_config=None)
    m.settings = cfa.CFAOptions().resolved(200)
    m.t_known = True
    assert [e for e in range(1, 201) if m.calibrating(e)] == release
    assert m.settings["ccm_start_epoch"] == 11


def release_gate_worst(model, x, y, eps, start):
    """train.py's FAWA gate: eval_epoch(model, valid_loader, pgd_loss, 8/255, beta, 2/255, 10) in eval
    mode (attack_pgd from a uniform start), then valid_result[3].min() = min_k m * cw_robust_k / N."""
    model.eval()
    delta = (start - x).requires_grad_(True)
    for _ in range(10):
        (g,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        d = torch.clamp(delta + eps / 4 * g.sign(), -eps, eps)
        delta = torch.clamp(d, -x, 1 - x).detach().requires_grad_(True)
    pred = model(x + delta).argmax(1)
    cw = torch.zeros(C)
    for i, c in enumerate(y):
        if pred[i] == c:
            cw[c] += 1
    return float((C * cw / len(y)).min())


def test_fawa_gate_is_the_releases_pgd10_at_step_eps_over_4(monkeypatch):
    model, _, _ = _batch(4)
    model.eval()
    torch.manual_seed(9)
    x_u8 = (torch.rand(40, 3, 8, 8) * 255).round().to(torch.uint8)
    y = torch.arange(40) % C
    x = x_u8.float() / 255
    start = _uniform(x, EPS, seed=12)
    monkeypatch.setattr(A, "uniform_start", lambda x_, eps_: start.clone())
    got = float(cfa.gate_accuracy(model, x_u8, y, EPS, C, CPU, "mean_class_count").min())
    assert got == pytest.approx(release_gate_worst(copy.deepcopy(model), x, y, EPS, start), abs=1e-9)
    # the method gates on it, not on the run's validation table (whose attack may differ)
    m = cfa.CFA(cfa.CFAOptions(fawa_threshold=0.0), C, CPU)
    m.before_epoch(EpochStart(1, model, x_u8, y, CPU, EPS, ALPHA))
    no_table = EpochStats(1, torch.zeros(C), torch.zeros(C), val=None, model=model)
    assert m.after_validation(no_table)["fawa_updated"] is True
    m2 = cfa.CFA(cfa.CFAOptions(fawa_threshold=0.0, fawa_gate="validation"), C, CPU)
    assert m2.after_validation(no_table) == {}            # no table: nothing to gate on


# ------------------------------------------------------------------------------- FRL (items 2, 4)
@pytest.mark.parametrize("variant", ["reweight", "reweight_remargin"])
def test_frl_step_matches_the_release_with_its_third_pass(variant):
    model, x, y = _batch(5)
    ref = copy.deepcopy(model)
    m = frl.FRL(frl.FRLOptions(variant=variant), C, CPU)
    m.load_state_dict({"lam0": torch.tensor([0.1, 0.0, 0.2, 0.0]), "lam1": torch.tensor([0.0, 0.3, 0.0, 0.1]),
                       "lam2": torch.tensor([0.2, -0.1, 0.4, 0.0])})
    out = _project_step(m, model, x, y, seed=7)
    torch.manual_seed(7)
    noise = torch.empty(x.shape).normal_()
    _, ref_loss = release_frl_step(ref, _sgd(ref), x, y, m.w0.float(), m.w1.float(), m.w2.float(), EPS, ALPHA,
                                   STEPS, 1.5, noise, variant == "reweight_remargin")
    assert float(out.loss.detach()) == pytest.approx(float(ref_loss), abs=1e-6)
    _agree(model, ref)


def test_frl_halves_its_multiplier_step_every_40_epochs_as_released(monkeypatch):
    # frlrw.py / frlrmrw.py: for now_epoch in 1..: if now_epoch % 40 == 0: rate1 /= 2; then that epoch's update
    rate, release = 0.05, {}
    for e in range(1, 301):
        if e % 40 == 0:
            rate /= 2
        release[e] = rate
    opts = frl.FRLOptions()
    assert all(opts.rate1_at(e) == pytest.approx(release[e], rel=1e-12) for e in release)
    assert frl.FRLOptions(rate1_halving_every=0).rate1_at(300) == 0.05
    e_nat = torch.tensor([0.5, 0.1, 0.1, 0.1], dtype=torch.float64)
    e_bndy = torch.tensor([0.1, 0.1, 0.1, 0.6], dtype=torch.float64)
    monkeypatch.setattr(frl, "class_errors", lambda *a, **k: (e_nat, e_bndy))
    m = frl.FRL(opts, C, CPU)
    m.before_epoch(EpochStart(40, None, None, None, CPU, EPS, ALPHA))
    assert float(m.lam0[0]) == pytest.approx(0.025 * (0.5 - 0.2 - 0.1))   # r1 / 2 at epoch 40
    assert m.after_epoch(None)["frl_rate1"] == 0.025


# ------------------------------------------------------------------------------------- FAT (item 5)
@pytest.mark.parametrize("tau", [0, 1, 2])
def test_fat_matches_the_releases_earlystop_with_its_noise(tau, monkeypatch):
    model, x, _ = _batch(6, n=48)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)          # clean images classified correctly: some stay correct, some cross
    eps, alpha, steps, omega = 0.1, 0.02, 6, 0.001
    start = _uniform(x, eps, seed=13)
    g = torch.Generator().manual_seed(14)
    noises = [torch.randn(x.shape, generator=g) for _ in range(steps)]
    feed = iter(noises)
    monkeypatch.setattr(A, "uniform_start", lambda x_, eps_: start.clone())
    got, taken = fat.early_stopped_pgd(model, x, y, eps, alpha, steps, tau, omega=omega, noise=lambda _: next(feed))
    ref = release_earlystop(model, x, y, start, eps, alpha, steps, tau, omega, noises)
    assert torch.allclose(got, ref, atol=1e-6)
    assert (taken < steps).any() and (taken == steps).any()
    without, _ = fat.early_stopped_pgd(model, x, y, eps, alpha, steps, tau)
    moved = taken > 0
    assert float((without - got)[moved].abs().max()) > 1e-4     # the noise is there, on the samples that move


def test_fat_has_the_releases_omega_by_default():
    assert fat.FATOptions().omega == 0.001
    with pytest.raises(ValueError, match="method.omega"):
        fat.FATOptions(omega=-1)


# ------------------------------------------------------------------------------------ the schedule
def test_validation_from_epoch_215_as_the_absld_and_rslad_releases():
    from absld_core.config import TrainConfig
    cfg = TrainConfig.from_dict({"eval_every": 10, "optim": {"epochs": 300}})
    assert validates(cfg, 215) and not validates(cfg, 214)
