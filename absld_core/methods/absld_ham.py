"""ABSLD + HAM: ABSLD's tempered teacher targets on HAM's hard set.

M PGD-CE steps pick H, then K - M steps of the ABSLD KL attack from x_M, and the ABSLD loss over H.
Class risks are sums over H divided by all samples of the class (a dropped example counts as zero risk).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import attacks as A
from .absld import ABSLD, ABSLDOptions
from .base import StepContext, StepOutput
from .ham import EarlyDropping, hard_index, hard_set_size, keep_all, mine_hard, nothing_hard_here
from .registry import register


@dataclass(frozen=True)
class ABSLDHAMOptions(EarlyDropping, ABSLDOptions):
    def __post_init__(self):
        self.check_distill()
        self.check_temperatures()
        self.check_ham()


@register("absld_ham", display="ABSLD+HAM", options=ABSLDHAMOptions, needs_teacher=True, order=60)
class ABSLDHAM(ABSLD):
    def step(self, x, y, ctx: StepContext) -> StepOutput:
        c = self.options
        if ctx.epoch < c.ham_start_epoch:
            return keep_all(super().step(x, y, ctx), y)
        p_adv, p_nat = self.teacher_targets(x, y, ctx)
        x_m, first, hard = mine_hard(ctx, x, y, c.ham_early_steps)
        if c.fair_reweight:
            self.record_steps(y, first)
        h = hard_index(hard)
        n_all, count = hard_set_size(ctx, h)
        if n_all == 0:
            return StepOutput(None, kept=hard)
        if h.numel() == 0:
            return nothing_hard_here(ctx, x, y, hard, count, both=True)
        xh, yh = x[h], y[h]
        x_adv = A.pgd_kl(ctx.raw, xh, p_adv[h], ctx.eps, ctx.alpha, ctx.steps - c.ham_early_steps,
                         x_init=x_m[h], amp_dtype=ctx.attack_dtype, validate=False)
        loss, z_adv, z_nat = self.distill_loss(x_adv, xh, yh, p_adv[h], p_nat[h], ctx, count)
        return StepOutput(loss, yh, adv_logits=z_adv, nat_logits=z_nat, kept=hard, loss_scale=count)
