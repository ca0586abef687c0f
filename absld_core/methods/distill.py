"""Robust soft-label distillation, shared by RSLAD, ABSLD and ABSLD+HAM (not a method of its own).

Loss (release convention): L = kd_scale * (w_adv * l(p_adv, s(z_S(x_adv))) + w_nat * l(p_nat, s(z_S(x)))),
with l the elementwise KD term averaged over all B*C elements, p_adv = s(z_T(x) / t_adv[y]) and
p_nat = s(z_T(x) / t_nat[y]) (RSLAD: t = 1); x_adv maximises KL(p_adv || s(z_S)) from a Gaussian start.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import attacks as A
from ..checks import check_range
from .base import DeviceMirror, EpochStats, Method, Options, StepContext, StepOutput, kd_per_sample, weighted_mean


def default_kd_scale(num_classes: int) -> float:
    """The releases' KD scale: RSLAD's CIFAR-100 script multiplies both KD terms by 10 (undoing most of
    the 1/C of the element-mean KD loss); every other release uses 1."""
    return 10.0 if num_classes == 100 else 1.0


def fair_ard_weights(mean_steps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Fair-ARD style class weights: w_c ~ (1 / k_c)^2 from the mean number of PGD steps k_c that a
    class survives, normalised to sum to C, then clamped to [5/6, 5/2]. k_c below 1 counts as 1."""
    w = 1.0 / mean_steps.double().clamp_min(1.0) ** 2
    w = w / w.sum() * num_classes
    return w.clamp(5 / 6, 5 / 2).float()


@dataclass(frozen=True)
class DistillOptions(Options):
    adv_weight: float = 5 / 6       # weight of the adversarial KD term
    nat_weight: float = 1 / 6       # weight of the clean KD term
    kd_scale: float | None = None   # None: 10 for 100 classes (the RSLAD CIFAR-100 release), else 1
    fair_reweight: bool = False     # Fair-ARD style class weights (1/k_c)^2, clamped to [5/6, 5/2]

    def __post_init__(self):
        self.check_distill()

    def check_distill(self):
        check_range("method.adv_weight", self.adv_weight, 0, float("inf"))
        check_range("method.nat_weight", self.nat_weight, 0, float("inf"))
        if self.kd_scale is not None:
            check_range("method.kd_scale", self.kd_scale, 0, float("inf"), lo_open=True)


class Distill(Method):
    """Soft labels from the frozen teacher; subclasses set the temperatures (none: RSLAD's 1)."""

    def __init__(self, options, num_classes, device, train_config=None):
        super().__init__(options, num_classes, device, train_config)
        self.temps = None  # Temperatures (ABSLD); None: the teacher's untempered soft labels
        self.kd_scale = options.kd_scale if options.kd_scale is not None else default_kd_scale(num_classes)
        self.class_weights = torch.ones(num_classes)
        self._weights_dev = DeviceMirror()
        self._steps_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self._steps_cnt = torch.zeros(num_classes, dtype=torch.float64, device=device)

    # ------------------------------------------------------------------ targets and loss
    def teacher_targets(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
        with torch.inference_mode(), ctx.autocast():  # a training pass: bf16 where the run trains in bf16
            z_t = ctx.teacher(x).float()
        z_t = z_t.clone()  # a normal tensor, usable as a constant in the autograd graph
        if self.temps is None:
            p = F.softmax(z_t, 1)
            return p, p
        ta, tn = self.temps.per_sample(y, self.options.coupled_temperatures)
        return F.softmax(z_t / ta[:, None], 1), F.softmax(z_t / tn[:, None], 1)

    def sample_weights(self, y):
        return self._weights_dev.get(self.class_weights, y.device)[y] if self.options.fair_reweight else None

    def record_steps(self, y, steps):
        self._steps_sum.index_add_(0, y, steps.double())
        self._steps_cnt.index_add_(0, y, torch.ones_like(steps, dtype=torch.float64))

    def distill_loss(self, x_adv, x, y, p_adv, p_nat, ctx: StepContext, count: float | None = None):
        """(loss, adversarial logits, clean logits) of the student on (x_adv, x)."""
        with ctx.autocast():
            z_adv, z_nat = ctx.forward(x_adv, x)
        w = self.sample_weights(y)
        c = self.options
        loss = self.kd_scale * (c.adv_weight * weighted_mean(kd_per_sample(p_adv, z_adv), w, count)
                                + c.nat_weight * weighted_mean(kd_per_sample(p_nat, z_nat), w, count))
        return loss, z_adv, z_nat

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        p_adv, p_nat = self.teacher_targets(x, y, ctx)
        if self.options.fair_reweight:
            x_adv, k = A.pgd_kl_tracked(ctx.raw, x, p_adv, y, ctx.eps, ctx.alpha, ctx.steps,
                                        init_std=ctx.kl_init_std, amp_dtype=ctx.attack_dtype, validate=False)
            self.record_steps(y, k)
        else:
            x_adv = A.pgd_kl(ctx.raw, x, p_adv, ctx.eps, ctx.alpha, ctx.steps, init_std=ctx.kl_init_std,
                             amp_dtype=ctx.attack_dtype, validate=False)
        loss, z_adv, z_nat = self.distill_loss(x_adv, x, y, p_adv, p_nat, ctx)
        return StepOutput(loss, y, adv_logits=z_adv, nat_logits=z_nat)

    # ------------------------------------------------------------------ per-epoch bookkeeping
    def after_epoch(self, stats: EpochStats) -> dict:
        out = self.update_temperatures(stats)
        if self.options.fair_reweight:
            steps_sum, steps_cnt = stats.reduce(self._steps_sum), stats.reduce(self._steps_cnt)
            seen = steps_cnt > 0
            mean_steps = torch.where(seen, steps_sum / steps_cnt.clamp_min(1), torch.ones_like(steps_sum))
            self.class_weights = fair_ard_weights(mean_steps.cpu(), self.num_classes)
            out["class_mean_steps"] = mean_steps.cpu().tolist()
            out["class_weights"] = self.class_weights.tolist()
            self._steps_sum.zero_(); self._steps_cnt.zero_()
        return out

    def update_temperatures(self, stats: EpochStats) -> dict:
        """History fields of the temperatures (none: fixed at 1)."""
        return {}

    def resolved(self):
        return {"kd_scale": self.kd_scale}

    def state_dict(self):
        temps = self.temps.state_dict() if self.temps is not None else {}
        return {**temps, "class_weights": self.class_weights.clone()}

    def load_state_dict(self, s):
        if self.temps is not None:
            self.temps.load_state_dict(s)
        self.class_weights = s["class_weights"].float().clone()
