"""TRADES (Zhang et al.): CE(z(x), y) + beta * KL(s(z(x)) || s(z(x_adv))) (batch mean)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from .. import attacks as A
from ..checks import check_range
from ..declare import N3, Param
from .base import Method, Options, StepContext, StepOutput
from .registry import register


@dataclass(frozen=True)
class TradesOptions(Options):
    beta: float = 6.0              # weight of the KL (robustness) term
    STUDY_PARAMS: ClassVar[tuple] = (Param("trades_beta", 6.0, "TRADES' weight of the KL term", (N3,), option="beta"),)

    def __post_init__(self):
        check_range("method.beta", self.beta, 0, float("inf"))


@register("trades", display="TRADES", options=TradesOptions, order=20)
class TRADES(Method):
    """x_adv from the TRADES KL attack (eval mode, x + 0.001 N(0, I) start)."""

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        x_adv = A.trades_kl(ctx.raw, x, ctx.eps, ctx.alpha, ctx.steps, init_std=ctx.kl_init_std,
                            amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            z_nat, z_adv = ctx.forward(x, x_adv)
        z_nat, z_adv = z_nat.float(), z_adv.float()
        kl = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_nat, 1), reduction="batchmean")
        loss = F.cross_entropy(z_nat, y, reduction="none").mean() + self.options.beta * kl
        return StepOutput(loss, y, adv_logits=z_adv, nat_logits=z_nat)
