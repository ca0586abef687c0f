"""The engine's ABSLD step computes the loss of the release-style step (tests/reference_absld.py):
same weights, same random state, class-wise temperatures on one fixed batch. bench/train_throughput.py
times the two; this test is what keeps the comparison one of equals."""
import copy

import torch

from absld_core.config import TrainConfig
from absld_core.engine import MultiView
from absld_core.methods import StepContext, build_method
from absld_core.models import build_model
from reference_absld import ALPHA, EPS, K, reference_step


def _losses(tau_adv, tau_nat, ours_adv=None, ours_nat=None, batch=32):
    torch.manual_seed(0)
    student0 = build_model("small_cnn", 10, width=8)
    teacher = build_model("small_cnn", 10, width=8).eval().requires_grad_(False)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.arange(batch) % 10
    s1, s2 = copy.deepcopy(student0), copy.deepcopy(student0)
    torch.manual_seed(123)
    ref = reference_step(s1, teacher, torch.optim.SGD(s1.parameters(), lr=0.1), x, y, tau_adv, tau_nat,
                         [0.0] * 10, [0.0] * 10).item()
    cfg = TrainConfig.from_dict({"precision": "fp32", "attack": {"eps": EPS, "alpha": ALPHA, "steps": K},
                                 "method": {"name": "absld", "teacher": {"checkpoint": "unused"}}})
    method = build_method(cfg.method, 10, torch.device("cpu"), cfg)
    method.temps.adv = (tau_adv if ours_adv is None else ours_adv).clone()
    method.temps.nat = (tau_nat if ours_nat is None else ours_nat).clone()
    s2.train()
    ctx = StepContext(raw=s2, forward=MultiView(s2), eps=EPS, alpha=ALPHA, steps=K, epoch=1, num_classes=10,
                      teacher=teacher)
    torch.manual_seed(123)
    return ref, method.step(x, y, ctx).loss.item()


def test_engine_absld_step_equals_the_release_style_step():
    tau = torch.linspace(0.6, 1.8, 10)
    ref, ours = _losses(tau, tau.flip(0))
    assert abs(ours - ref) <= 1e-5 * abs(ref) + 1e-8, (ref, ours)


def test_the_check_sees_a_wrong_temperature():
    """The same comparison fails when our step uses other temperatures (the check can fail)."""
    tau = torch.linspace(0.6, 1.8, 10)
    ref, ours = _losses(tau, tau.flip(0), ours_adv=tau.flip(0))
    assert abs(ours - ref) > 1e-4 * abs(ref), (ref, ours)
