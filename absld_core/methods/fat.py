"""FAT (Zhang et al., ICML 2020): PGD-AT on friendly adversarial examples from early-stopped PGD.

Each sample takes PGD-CE steps while the model classifies it correctly and at most tau more steps once
it is misclassified (steps at which it is misclassified count against tau), then stops; CE on those
examples. tau: 0 up to 50/120 of the epochs, 1 up to 90/120, 2 after (the release's 120-epoch schedule,
scaled to the run); CFA's version uses a fixed tau of 3 (tau: 3). The start is uniform in the eps-ball
(the release's AT variant). Every step adds omega * N(0, 1) noise to the samples that move, before the
projection, as the release does (earlystop.py, omega 0.001 by default; omega: 0 turns it off). The
attack runs in eval mode (the release's model.eval()). The TRADES variant of FAT is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import attacks as A
from ..checks import check_int, check_range
from .base import EpochStats, Method, Options, StepContext, StepOutput
from .registry import register


@dataclass(frozen=True)
class FATOptions(Options):
    tau: int | None = None     # extra steps after the first misclassification; None: the release's 0/1/2 schedule
    omega: float = 0.001       # std of the Gaussian noise each moving sample gets per step (the release's)

    def __post_init__(self):
        if self.tau is not None:
            check_int("method.tau", self.tau, 0)
        check_range("method.omega", self.omega, 0, 1)


def tau_at(epoch: int, epochs: int) -> int:
    """The release's schedule: 0 up to epoch 50, 1 up to 90, 2 after (of 120), scaled to `epochs`."""
    return 0 if epoch <= 50 * epochs / 120 else 1 if epoch <= 90 * epochs / 120 else 2


def early_stopped_pgd(model, x, y, eps, alpha, steps: int, tau: int, amp_dtype=None, omega: float = 0.0,
                      noise=None):
    """Friendly adversarial examples: (x_adv, steps each sample took). A sample that is misclassified
    with no extra step left stops where it is; vectorised, no host reads (every sample goes through
    each forward pass; a stopped one just does not move). omega: each moving sample gets
    omega * noise(x) added per step before the projection (noise: default torch.randn_like; a test
    passes its own tensors)."""
    noise = noise or torch.randn_like
    x_adv = A.uniform_start(x, eps)
    budget = torch.full((x.shape[0],), tau, dtype=torch.long, device=x.device)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    taken = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    with A.model_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with A.autocast_for(x, amp_dtype):
                logits = model(x_adv)
            logits = logits.float()
            wrong = logits.argmax(1) != y
            active = active & ~(wrong & (budget <= 0))
            budget = budget - (wrong & active).long()
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
            move = active.to(x.dtype)[:, None, None, None]
            delta = alpha * grad.sign()
            if omega:
                delta = delta + omega * noise(x)
            x_adv = A.project(x_adv.detach() + delta * move, x, eps)
            taken += active.long()
    return x_adv.detach(), taken


@register("fat", display="FAT", options=FATOptions, order=90)
class FAT(Method):
    def __init__(self, options, num_classes, device, train_config=None):
        super().__init__(options, num_classes, device, train_config)
        self.epochs = train_config.optim.epochs if train_config is not None else 120
        self._steps = torch.zeros((), dtype=torch.float64, device=device)
        self._n = torch.zeros((), dtype=torch.float64, device=device)

    def tau(self, epoch: int) -> int:
        return self.options.tau if self.options.tau is not None else tau_at(epoch, self.epochs)

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        x_adv, taken = early_stopped_pgd(ctx.raw, x, y, ctx.eps, ctx.alpha, ctx.steps, self.tau(ctx.epoch),
                                         ctx.attack_dtype, omega=self.options.omega)
        self._steps += taken.sum()
        self._n += len(y)
        with ctx.autocast():
            (z,) = ctx.forward(x_adv)
        return StepOutput(F.cross_entropy(z.float(), y), y, adv_logits=z)

    def after_epoch(self, stats: EpochStats) -> dict:
        mean = float(stats.reduce(self._steps) / stats.reduce(self._n).clamp_min(1))
        self._steps.zero_(); self._n.zero_()
        return {"fat_tau": self.tau(stats.epoch), "fat_mean_steps": mean}
