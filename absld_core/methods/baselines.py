"""Teachers and baselines: natural training, PGD-AT (Madry) and TRADES."""
from __future__ import annotations

import torch.nn.functional as F

from .. import attacks as A
from .base import Method, StepContext, StepOutput, per_class, smoothed_targets, soft_ce


class Natural(Method):
    """Cross-entropy on clean images, with optional class-wise label smoothing."""

    def __init__(self, cfg, num_classes, device):
        super().__init__(cfg, num_classes, device)
        s = per_class(cfg.label_smoothing, num_classes, "method.label_smoothing")
        if (s < 0).any() or (s > 1).any():
            raise ValueError(f"method.label_smoothing must lie in [0, 1], got {s.tolist()}")
        self.smoothing = s.to(device)

    def targets(self, y):
        return smoothed_targets(y, self.smoothing, self.num_classes)

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        with ctx.autocast():
            (z,) = ctx.forward(x)
        ce = F.cross_entropy(z.float(), y, reduction="none").detach()
        loss = soft_ce(z, self.targets(y)).mean()
        return StepOutput(loss, y, None, ce)


class PGDAT(Natural):
    """Madry PGD-AT: PGD-CE (uniform start) then (optionally smoothed) cross-entropy on x_adv."""

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        x_adv = A.pgd(ctx.raw, x, y, ctx.eps, ctx.alpha, ctx.steps, amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            (z,) = ctx.forward(x_adv)
        ce = F.cross_entropy(z.float(), y, reduction="none").detach()
        return StepOutput(soft_ce(z, self.targets(y)).mean(), y, ce, None)


class TRADES(Method):
    """CE(z(x), y) + beta * KL(s(z(x)) || s(z(x_adv))) (batch mean), x_adv from the TRADES KL attack."""

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        x_adv = A.trades_kl(ctx.raw, x, ctx.eps, ctx.alpha, ctx.steps, init_std=ctx.kl_init_std,
                            amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            z_nat, z_adv = ctx.forward(x, x_adv)
        z_nat, z_adv = z_nat.float(), z_adv.float()
        ce_nat = F.cross_entropy(z_nat, y, reduction="none")
        kl = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_nat, 1), reduction="batchmean")
        loss = ce_nat.mean() + self.cfg.beta * kl
        ce_adv = F.cross_entropy(z_adv, y, reduction="none").detach()
        return StepOutput(loss, y, ce_adv, ce_nat.detach())
