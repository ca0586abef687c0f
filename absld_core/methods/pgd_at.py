"""PGD-AT (Madry et al.): PGD-CE from a uniform start, then (optionally smoothed) CE on x_adv."""
from __future__ import annotations

from .. import attacks as A
from .base import StepContext, StepOutput, soft_ce
from .natural import Natural, SmoothingOptions
from .registry import register


@register("pgd_at", display="PGD-AT", options=SmoothingOptions, default=True, order=10)
class PGDAT(Natural):
    def step(self, x, y, ctx: StepContext) -> StepOutput:
        x_adv = A.pgd(ctx.raw, x, y, ctx.eps, ctx.alpha, ctx.steps, amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            (z,) = ctx.forward(x_adv)
        return StepOutput(soft_ce(z, self.targets(y)).mean(), y, adv_logits=z)
