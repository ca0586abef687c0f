"""HAM (hard adversarial example mining with early dropping), and the helpers ABSLD+HAM shares.

Per batch (after the warm-up epochs of plain PGD-AT): M PGD-CE steps on the whole batch; the examples
still classified correctly are dropped; K - M more steps and the training pass run on the hard set H
only; the loss is the mean over H (an empty H contributes nothing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import attacks as A
from ..checks import ConfigError, check_int
from ..declare import N3, Param
from .base import Options, StepContext, StepOutput, soft_ce, weighted_mean
from .natural import SmoothingOptions, check_smoothing
from .pgd_at import PGDAT
from .registry import register

WEIGHTINGS = ("uniform", "hardness")


@dataclass(frozen=True)
class EarlyDropping(Options):
    """HAM's own settings (also part of ABSLD+HAM's options)."""
    ham_start_epoch: int = 1         # first epoch (1-based) with early dropping; before it, the base method
    ham_early_steps: int = 3         # M: PGD steps before the easy examples are dropped (M < attack.steps)
    ham_weighting: str = "uniform"   # or 'hardness': weight M + 1 - (step of the first crossing)
    STUDY_PARAMS: ClassVar[tuple] = (
        Param("ham_start_fraction", 0.42, "early dropping from this fraction of the epochs on (50/120 in HAM's "
                                          "release)", (N3,), option="ham_start_epoch",
              to_option=lambda v, P: max(1, round(float(v) * int(P["epochs"])))),
        Param("ham_early_steps", 2, "M: PGD steps before the easy examples are dropped (3 of 10 in the release)",
              (N3,), option="ham_early_steps", to_option=lambda v, P: int(v)))

    def check_ham(self):
        check_int("method.ham_start_epoch", self.ham_start_epoch, 1)
        check_int("method.ham_early_steps", self.ham_early_steps, 0)
        if self.ham_weighting not in WEIGHTINGS:
            raise ConfigError(f"method.ham_weighting={self.ham_weighting!r} is invalid: 'uniform' or 'hardness'")

    def check_config(self, cfg) -> None:
        if self.ham_early_steps >= cfg.attack.steps:
            raise ConfigError(f"method.ham_early_steps={self.ham_early_steps} must be smaller than "
                              f"attack.steps={cfg.attack.steps} (M < K)")


@dataclass(frozen=True)
class HAMOptions(EarlyDropping, SmoothingOptions):
    def __post_init__(self):
        check_smoothing(self.label_smoothing)
        self.check_ham()


def mine_hard(ctx: StepContext, x, y, early_steps: int):
    """The first M PGD-CE steps: returns (x_M, first crossing step, hard mask = wrong at x_M)."""
    return A.pgd_boundary_steps(ctx.raw, x, y, ctx.eps, ctx.alpha, early_steps, amp_dtype=ctx.attack_dtype,
                                validate=False)


def hardness_weights(first_cross: torch.Tensor, early_steps: int, ctx: StepContext | None = None,
                     n_all: int | None = None) -> torch.Tensor:
    """Weight of a hard example: M + 1 - (step at which it first crossed), normalised to mean 1 over the
    hard set (under DDP, of every process: n_all is its size, already summed by hard_set_size).
    An example that crossed at once weighs most."""
    w = (early_steps + 1 - first_cross.clamp(max=early_steps)).float()
    if ctx is None or ctx.world_size == 1:
        return w / w.mean()
    return w / (ctx.sum_all(float(w.sum())) / n_all)


def hard_index(hard: torch.Tensor) -> torch.Tensor:
    """Positions of the hard examples. Reading the hard set's size is the one point where a HAM step
    waits for the device (early dropping makes the training batch's shape depend on the data)."""
    return hard.nonzero().squeeze(1)


def hard_set_size(ctx: StepContext, h: torch.Tensor) -> tuple[int, float | None]:
    """(size of the hard set over every process, the divisor of this process's loss sum).

    One process: the divisor is None (a plain mean over H). Under DDP every process divides its sum by
    |H_all| / world_size, so that DDP's average of the gradients is the gradient of the mean over the
    hard set of the whole global batch, as one process would compute it."""
    n_all = int(ctx.sum_all(h.numel()))
    return n_all, (None if ctx.world_size == 1 else n_all / ctx.world_size)


def nothing_hard_here(ctx: StepContext, x, y, hard, count, both: bool = False) -> StepOutput:
    """Under DDP, a process whose share of the batch has no hard example while another's has: it joins
    the gradient all-reduce with zero gradients from an eval-mode pass (no BatchNorm statistic moves),
    and the optimiser step that every process then takes is the global batch's. both: the method
    records clean risks too (an empty set of them)."""
    empty = x.new_zeros((0, ctx.num_classes))
    return StepOutput(ctx.zero_loss(x), y[:0], adv_logits=empty, nat_logits=empty if both else None,
                      kept=hard, loss_scale=count)


def keep_all(out: StepOutput, y: torch.Tensor) -> StepOutput:
    """Before HAM switches on, the whole batch is trained on (kept fraction 1)."""
    out.kept = torch.ones_like(y, dtype=torch.bool)
    return out


@register("ham", display="HAM", options=HAMOptions, order=50)
class HAM(PGDAT):
    def step(self, x, y, ctx: StepContext) -> StepOutput:
        c = self.options
        if ctx.epoch < c.ham_start_epoch:
            return keep_all(super().step(x, y, ctx), y)
        x_m, first, hard = mine_hard(ctx, x, y, c.ham_early_steps)
        h = hard_index(hard)
        n_all, count = hard_set_size(ctx, h)
        if n_all == 0:
            return StepOutput(None, kept=hard)  # no process has a hard example: every one skips the step
        if h.numel() == 0:
            return nothing_hard_here(ctx, x, y, hard, count)
        xh, yh = x[h], y[h]
        x_adv = A.pgd(ctx.raw, xh, yh, ctx.eps, ctx.alpha, ctx.steps - c.ham_early_steps, x_init=x_m[h],
                      amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            (z,) = ctx.forward(x_adv)
        w = None
        if c.ham_weighting == "hardness":
            w = hardness_weights(first[h], c.ham_early_steps, ctx, n_all)
        loss = weighted_mean(soft_ce(z, self.targets(yh)), w, count)
        return StepOutput(loss, yh, adv_logits=z, kept=hard, loss_scale=count)
