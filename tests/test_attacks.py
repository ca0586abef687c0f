import pytest
import torch
import torch.nn.functional as F

from absld_core import attacks as A
from absld_core.models import build_model

EPS = 8 / 255
TOL = 1e-6


def _data(digits, n=64):
    return digits.test_x[:n].float() / 255, digits.test_y[:n]


def _all_attacks(model, x, y):
    p = F.softmax(model(x), 1).detach()
    yield "fgsm", A.fgsm(model, x, y, EPS)
    yield "pgd", A.pgd(model, x, y, EPS, 2 / 255, 5)
    yield "pgd_nostart", A.pgd(model, x, y, EPS, 2 / 255, 3, random_start=False)
    yield "pgd_kl", A.pgd_kl(model, x, p, EPS, 2 / 255, 5)
    yield "trades_kl", A.trades_kl(model, x, EPS, 2 / 255, 5)
    yield "cw_inf", A.cw_inf(model, x, y, EPS, 2 / 255, 5)
    yield "boundary", A.pgd_boundary_steps(model, x, y, EPS, 2 / 255, 5)[0]
    yield "autoattack", A.autoattack(model, x, y, EPS, ["apgd-ce", "apgd-t"], n_iter=5)


def test_every_attack_stays_in_ball_and_image_range(trained_digits_model, digits):
    x, y = _data(digits, 32)
    for name, xa in _all_attacks(trained_digits_model, x, y):
        assert xa.shape == x.shape, name
        assert (xa - x).abs().max() <= EPS + TOL, name
        assert xa.min() >= 0 and xa.max() <= 1, name


def test_attacks_restore_mode_and_parameter_grads(digits):
    torch.manual_seed(0)
    m = build_model("small_cnn", 10, in_channels=1, width=8)
    x, y = _data(digits, 8)
    F.cross_entropy(m(x), y).backward()
    grads = [p.grad.clone() for p in m.parameters()]
    bn = m.features[1]
    bn.eval()  # a mixed mode: model in train, one BatchNorm in eval
    stats = bn.running_mean.clone()
    for name, _ in _all_attacks(m, x, y):
        assert m.training and not bn.training, name
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, m.parameters())), name
    assert torch.equal(stats, bn.running_mean)


def test_attacks_lower_accuracy(trained_digits_model, digits):
    x, y = _data(digits, 128)
    m = trained_digits_model
    clean = (m(x).argmax(1) == y).float().mean()
    eps = 0.1
    for xa in (A.fgsm(m, x, y, eps), A.pgd(m, x, y, eps, 0.02, 10), A.cw_inf(m, x, y, eps, 0.02, 10)):
        assert (m(xa).argmax(1) == y).float().mean() < clean


def _agreement_with_torchattacks(model, x, y, ours, eps=0.08, alpha=0.01, steps=10):
    """Our PGD and torchattacks' from the same start point (no random start, and the same seeded uniform
    start, which both draw with one uniform_ call): (fraction of pixels within 1e-6, number of images
    whose robust outcome differs). Deterministic given the model, so the same on every CPU."""
    torchattacks = pytest.importorskip("torchattacks")
    pixels, outcomes = [], []
    for random_start in (False, True):
        torch.manual_seed(5)
        a = ours(model, x, y, eps, alpha, steps, random_start=random_start)
        torch.manual_seed(5)
        b = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)(x, y)
        pixels.append(torch.isclose(a, b, atol=1e-6, rtol=0).float().mean().item())
        with torch.no_grad():
            outcomes.append(int(((model(a).argmax(1) == y) != (model(b).argmax(1) == y)).sum()))
    return min(pixels), max(outcomes)


def test_pgd_agrees_with_torchattacks(trained_digits_model, digits):
    m = trained_digits_model
    x, y = digits.test_x.float() / 255, digits.test_y
    x_adv = A.pgd(m, x, y, 0.08, 0.01, 10, random_start=False)
    with torch.no_grad():
        clean = (m(x).argmax(1) == y).float().mean().item() * 100
        robust = (m(x_adv).argmax(1) == y).float().mean().item() * 100
    assert 10 < robust < clean - 10, f"the check needs a mid-range robust accuracy, got {robust} (clean {clean})"
    pixels, images = _agreement_with_torchattacks(m, x, y, A.pgd)
    print(f"ours vs torchattacks: {pixels:.5f} of pixels agree, {images} image(s) differ")
    # float rounding of the projection (x + clamp(d) against clamp(x_adv)) may move a pixel by an ulp, and
    # a gradient component near zero may then take the other sign: a handful of pixels, at most 2 images
    assert pixels > 0.995 and images <= 2, (pixels, images)


def test_a_broken_pgd_fails_the_torchattacks_comparison(trained_digits_model, digits, monkeypatch):
    """The comparison above is a real check: a PGD with a wrong step size, or without the projection onto
    the eps-ball, fails it."""
    m = trained_digits_model
    x, y = digits.test_x.float() / 255, digits.test_y

    def double_step(model, x, y, eps, alpha, steps, random_start=True):
        return A.pgd(model, x, y, eps, 2 * alpha, steps, random_start)

    pixels, images = _agreement_with_torchattacks(m, x, y, double_step)
    print(f"step size doubled: {pixels:.4f} of pixels agree, {images} image(s) differ")
    assert not (pixels > 0.995 and images <= 2), (pixels, images)
    monkeypatch.setattr(A, "project", lambda x_adv, x, eps: x_adv.clamp(0.0, 1.0))  # no eps-ball
    pixels, images = _agreement_with_torchattacks(m, x, y, A.pgd)
    print(f"no projection: {pixels:.4f} of pixels agree, {images} image(s) differ")
    assert not (pixels > 0.995 and images <= 2), (pixels, images)


def test_boundary_steps_match_prediction_trajectory(trained_digits_model, digits):
    m = trained_digits_model
    x, y = _data(digits, 64)
    eps, alpha, steps = 0.1, 0.02, 6
    torch.manual_seed(3)
    xa, k, _ = A.pgd_boundary_steps(m, x, y, eps, alpha, steps)
    # replay the same random start and steps one at a time with plain PGD
    torch.manual_seed(3)
    xi = A.pgd(m, x, y, eps, alpha, 0)  # only the uniform start
    wrong_at = [(m(xi).argmax(1) != y)]
    for _ in range(steps):
        xi = A.pgd(m, x, y, eps, alpha, 1, x_init=xi)
        wrong_at.append(m(xi).argmax(1) != y)
    W = torch.stack(wrong_at, 1)  # N x (steps+1)
    expected = torch.where(W.any(1), W.float().argmax(1), torch.full_like(k, steps + 1))
    assert torch.equal(k, expected)
    assert torch.allclose(xa, xi)
    assert (k == steps + 1).any() and (k <= steps).any()


def test_kl_attack_increases_kl(trained_digits_model, digits):
    m = trained_digits_model
    x, _ = _data(digits, 64)
    p = F.softmax(m(x), 1).detach()
    xa = A.pgd_kl(m, x, p, 0.1, 0.02, 10)
    assert A.kl_to_targets(m(xa), p) > A.kl_to_targets(m(x), p) + 1.0


def test_attack_argument_errors(trained_digits_model, digits):
    x, y = _data(digits, 4)
    m = trained_digits_model
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\]"):
        A.pgd(m, x, y, 8, 2 / 255, 3)
    with pytest.raises(ValueError, match="steps"):
        A.pgd(m, x, y, EPS, 2 / 255, -1)
    with pytest.raises(TypeError, match="float images"):
        A.fgsm(m, (x * 255).to(torch.uint8), y, EPS)
    with pytest.raises(ValueError, match="unknown AutoAttack"):
        A.autoattack(m, x, y, EPS, ["pgd"])
    with pytest.raises(ValueError, match="unknown PGD loss"):
        A.pgd(m, x, y, EPS, 2 / 255, 1, loss="hinge")
