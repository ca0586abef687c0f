"""Robust soft-label distillation: RSLAD, and ABSLD with class-wise teacher temperatures.

Loss (release convention): L = w_adv * l(p_adv, s(z_S(x_adv))) + w_nat * l(p_nat, s(z_S(x))), with
l the elementwise KD term averaged over all B*C elements, p_adv = s(z_T(x) / t_adv[y]) and
p_nat = s(z_T(x) / t_nat[y]); x_adv maximises KL(p_adv || s(z_S)) from a Gaussian start.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import attacks as A
from .base import DeviceMirror, Method, StepContext, StepOutput, kd_per_sample, weighted_mean
from .temperature import Temperatures


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


class Distill(Method):
    """ABSLD (schedule adaptive/fixed/table/function); RSLAD is the special case of temperature 1."""
    needs_teacher = True
    fixed_unit_temperatures = False

    def __init__(self, cfg, num_classes, device):
        super().__init__(cfg, num_classes, device)
        self.temps = Temperatures(cfg, num_classes, force_fixed=self.fixed_unit_temperatures)
        self.kd_scale = cfg.kd_scale if cfg.kd_scale is not None else default_kd_scale(num_classes)
        self.class_weights = torch.ones(num_classes)
        self._weights_dev = DeviceMirror()
        self._steps_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self._steps_cnt = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.last_eta = None

    # ------------------------------------------------------------------ targets and loss
    def teacher_targets(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
        with torch.inference_mode():
            z_t = ctx.teacher(x).float()
        z_t = z_t.clone()  # a normal tensor, usable as a constant in the autograd graph
        ta, tn = self.temps.per_sample(y, self.cfg.coupled_temperatures)
        return F.softmax(z_t / ta[:, None], 1), F.softmax(z_t / tn[:, None], 1)

    def sample_weights(self, y):
        return self._weights_dev.get(self.class_weights, y.device)[y] if self.cfg.fair_reweight else None

    def record_steps(self, y, steps):
        self._steps_sum.index_add_(0, y, steps.double())
        self._steps_cnt.index_add_(0, y, torch.ones_like(steps, dtype=torch.float64))

    def distill_loss(self, x_adv, x, y, p_adv, p_nat, ctx: StepContext, count: float | None = None):
        with ctx.autocast():
            z_adv, z_nat = ctx.forward(x_adv, x)
        w = self.sample_weights(y)
        c = self.cfg
        loss = self.kd_scale * (c.adv_weight * weighted_mean(kd_per_sample(p_adv, z_adv), w, count)
                                + c.nat_weight * weighted_mean(kd_per_sample(p_nat, z_nat), w, count))
        ce_adv = F.cross_entropy(z_adv.float(), y, reduction="none").detach()
        ce_nat = F.cross_entropy(z_nat.float(), y, reduction="none").detach()
        return loss, ce_adv, ce_nat

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        p_adv, p_nat = self.teacher_targets(x, y, ctx)
        if self.cfg.fair_reweight:
            x_adv, k = A.pgd_kl(ctx.raw, x, p_adv, ctx.eps, ctx.alpha, ctx.steps, track_labels=y,
                                init_std=ctx.kl_init_std, amp_dtype=ctx.attack_dtype, validate=False)
            self.record_steps(y, k)
        else:
            x_adv = A.pgd_kl(ctx.raw, x, p_adv, ctx.eps, ctx.alpha, ctx.steps, init_std=ctx.kl_init_std,
                             amp_dtype=ctx.attack_dtype, validate=False)
        loss, ce_adv, ce_nat = self.distill_loss(x_adv, x, y, p_adv, p_nat, ctx)
        return StepOutput(loss, y, ce_adv, ce_nat)

    # ------------------------------------------------------------------ per-epoch bookkeeping
    def reduce_steps(self, reduce):
        """Sum the Fair-ARD step counts over processes (reduce is the engine's all-reduce)."""
        self._steps_sum, self._steps_cnt = reduce(self._steps_sum), reduce(self._steps_cnt)

    def end_epoch(self, epoch, risk_adv, risk_nat, eta_factor, extra):
        eta = self.cfg.eta * (eta_factor if self.cfg.eta_follows_lr else 1.0)
        self.last_eta = eta
        self.temps.update(epoch, risk_adv, risk_nat, eta)
        out = {"tau_adv": self.temps.adv.tolist(), "tau_nat": self.temps.nat.tolist(), "eta": eta}
        if self.cfg.fair_reweight:
            seen = self._steps_cnt > 0
            mean_steps = torch.where(seen, self._steps_sum / self._steps_cnt.clamp_min(1), torch.ones_like(self._steps_sum))
            self.class_weights = fair_ard_weights(mean_steps.cpu(), self.num_classes)
            out["class_mean_steps"] = mean_steps.cpu().tolist()
            out["class_weights"] = self.class_weights.tolist()
            self._steps_sum.zero_(); self._steps_cnt.zero_()
        return out

    def resolved(self):
        return {"kd_scale": self.kd_scale}

    def state_dict(self):
        return {**self.temps.state_dict(), "class_weights": self.class_weights.clone()}

    def load_state_dict(self, s):
        self.temps.load_state_dict(s)
        self.class_weights = s["class_weights"].float().clone()


class RSLAD(Distill):
    """RSLAD: the teacher's untempered soft labels for both terms (temperatures stay 1)."""
    fixed_unit_temperatures = True


class ABSLD(Distill):
    """ABSLD: class-wise adversarial and natural temperatures, adapted from the class risks."""
