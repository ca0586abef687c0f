"""CFA (Wei et al., CVPR 2023, "Cfa: class-wise calibrated fair adversarial training") on PGD-AT or TRADES.

t_k: class k's accuracy on the training attack's own adversarial examples (train-mode logits, the
class's own radius) over the previous epoch (the engine's class-wise statistics).
- CCM (calibrated margin): eps_k = (lambda1 + t_k) * eps from ccm_start_epoch on (eps before); step alpha.
- CCR (calibrated regularisation, TRADES): per sample b = (lambda2 + t_y) beta / (1 + (lambda2 + t_y) beta),
  loss mean_b[(1 - b) CE_b + b KL_b]; without CCR b = beta / (1 + beta) (the code's TRADES, (CE + 6 KL) / 7).
- FAWA (fairness-aware weight averaging): after each epoch's validation (PGD, class-wise), if the worst
  class reaches fawa_threshold, avg <- decay * avg + (1 - decay) * theta (theta the first time). The averaged
  weights are kept as averaged.pt and are the ones the final evaluation uses.
variant 'paper' (the default): lambda1 0.5 on PGD-AT, 0.3 on TRADES; decay 0.85, threshold 0.2.
variant 'release' (PKU-ML/CFA's defaults): lambda1 0.5; decay 0.88, threshold 0.24.
The paper's schedule: 200 epochs, lr 0.1, /10 at 50% and /100 at 75%, weight decay 5e-4; CCM from epoch 10.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import attacks as A
from ..checks import ConfigError, check_int, check_range
from .base import EpochStats, Method, Options, StepContext, StepOutput, kl_per_sample
from .pgd_at import PGDAT
from .registry import register
from .trades import TRADES

AT, KL = PGDAT.name, TRADES.name   # the trainers CFA calibrates, by their registered names
CFA_VARIANTS = {"paper": {"lambda1": {KL: 0.3, AT: 0.5}, "fawa_decay": 0.85, "fawa_threshold": 0.2},
                "release": {"lambda1": {KL: 0.5, AT: 0.5}, "fawa_decay": 0.88, "fawa_threshold": 0.24}}


@dataclass(frozen=True)
class CFAOptions(Options):
    base: str = KL                       # the trainer CFA calibrates: TRADES' or PGD-AT's registered name
    variant: str = "paper"               # which defaults: 'paper' or 'release' (see the module's text)
    ccm: bool = True                     # class-wise calibrated margin (attack radius)
    ccr: bool = True                     # class-wise calibrated regularisation (TRADES only)
    fawa: bool = True                    # fairness-aware weight averaging
    beta: float = 6.0                    # TRADES' weight
    lambda1: float | None = None         # CCM base; None: the variant's
    lambda2: float = 0.5                 # CCR base
    ccm_start_epoch: int | None = None   # None: epoch 10 of 200, scaled to the run (at least 2)
    fawa_decay: float | None = None      # None: the variant's
    fawa_threshold: float | None = None  # worst-class validation accuracy (fraction) for an update

    def __post_init__(self):
        if self.base not in (KL, AT):
            raise ConfigError(f"method.base={self.base!r} is invalid: {KL!r} or {AT!r}")
        if self.variant not in CFA_VARIANTS:
            raise ConfigError(f"method.variant={self.variant!r} is invalid: 'paper' or 'release'")
        check_range("method.beta", self.beta, 0, float("inf"))
        for name in ("lambda1", "lambda2"):
            if getattr(self, name) is not None:
                check_range(f"method.{name}", getattr(self, name), 0, 1)
        if self.ccm_start_epoch is not None:
            check_int("method.ccm_start_epoch", self.ccm_start_epoch, 1)
        if self.fawa_decay is not None:
            check_range("method.fawa_decay", self.fawa_decay, 0, 1, hi_open=True)
        if self.fawa_threshold is not None:
            check_range("method.fawa_threshold", self.fawa_threshold, 0, 1)

    def resolved(self, epochs: int) -> dict:
        v = CFA_VARIANTS[self.variant]
        return {"lambda1": self.lambda1 if self.lambda1 is not None else v["lambda1"][self.base],
                "fawa_decay": self.fawa_decay if self.fawa_decay is not None else v["fawa_decay"],
                "fawa_threshold": self.fawa_threshold if self.fawa_threshold is not None else v["fawa_threshold"],
                "ccm_start_epoch": (self.ccm_start_epoch if self.ccm_start_epoch is not None
                                    else max(2, round(10 * epochs / 200)))}

    def check_config(self, cfg) -> None:
        if self.fawa and cfg.data.val_per_class == 0:
            raise ConfigError("CFA's weight averaging reads a validation split: set data.val_per_class > 0 "
                              "(the release holds out 100 per class) or method.fawa=false")


def calibrated_eps(t: torch.Tensor, lambda1: float, eps: float) -> torch.Tensor:
    """CCM: per-class radius (lambda1 + t_k) * eps."""
    return (lambda1 + t) * eps


def calibrated_weight(t: torch.Tensor, lambda2: float, beta: float) -> torch.Tensor:
    """CCR: per-class weight of the KL term, (lambda2 + t_k) beta / (1 + (lambda2 + t_k) beta)."""
    b = (lambda2 + t) * beta
    return b / (1 + b)


def fawa_update(avg: dict | None, theta: dict, decay: float) -> dict:
    """avg <- decay * avg + (1 - decay) * theta for float tensors (theta itself the first time);
    integer buffers (BatchNorm's batch counter) follow theta."""
    theta = {k: v.detach().cpu().clone() for k, v in theta.items()}
    if avg is None:
        return theta
    return {k: (decay * avg[k] + (1 - decay) * v) if v.is_floating_point() else v for k, v in theta.items()}


@register("cfa", display="CFA", options=CFAOptions, order=80)
class CFA(Method):
    validate_every_epoch = True   # FAWA decides on every epoch's validation table

    def __init__(self, options, num_classes, device, train_config=None):
        super().__init__(options, num_classes, device, train_config)
        self.settings = options.resolved(train_config.optim.epochs if train_config is not None else 200)
        self.t = torch.ones(num_classes)        # class accuracies on the training attack (previous epoch)
        self.t_known = False
        self.avg = None
        self._t_dev = None

    def resolved(self):
        return dict(self.settings)

    def calibrating(self, epoch: int) -> bool:
        return self.t_known and epoch >= self.settings["ccm_start_epoch"]

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        c, on = self.options, self.calibrating(ctx.epoch)
        if self._t_dev is None:
            self._t_dev = self.t.to(x.device)
        t = self._t_dev[y]
        eps = ((calibrated_eps(t, self.settings["lambda1"], ctx.eps)[:, None, None, None]) if on and c.ccm
               else ctx.eps)
        if c.base == AT:
            x_adv = A.pgd(ctx.raw, x, y, eps, ctx.alpha, ctx.steps, amp_dtype=ctx.attack_dtype, validate=False)
            with ctx.autocast():
                (z,) = ctx.forward(x_adv)
            return StepOutput(F.cross_entropy(z.float(), y), y, adv_logits=z)
        x_adv = A.trades_kl(ctx.raw, x, eps, ctx.alpha, ctx.steps, init_std=ctx.kl_init_std,
                            amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            z_nat, z_adv = ctx.forward(x, x_adv)
        z_nat, z_adv = z_nat.float(), z_adv.float()
        ce = F.cross_entropy(z_nat, y, reduction="none")
        kl = kl_per_sample(z_nat, z_adv)
        b = (calibrated_weight(t, c.lambda2, c.beta) if on and c.ccr
             else torch.full_like(ce, c.beta / (1 + c.beta)))
        return StepOutput(((1 - b) * ce + b * kl).mean(), y, adv_logits=z_adv, nat_logits=z_nat)

    def after_epoch(self, stats: EpochStats) -> dict:
        if stats.acc_adv is not None:
            self.t, self.t_known, self._t_dev = stats.acc_adv.float().clone(), True, None
        return {"cfa_class_acc_adv": self.t.tolist(), "cfa_calibrating": self.calibrating(stats.epoch + 1)}

    def after_validation(self, stats: EpochStats) -> dict:
        if not self.options.fawa or not stats.val:
            return {}
        robust = [a for a in stats.val if a != "clean"] or ["clean"]
        worst = stats.val[robust[-1]]["worst"] / 100
        updated = worst >= self.settings["fawa_threshold"]
        if updated:
            self.avg = fawa_update(self.avg, stats.model.state_dict(), self.settings["fawa_decay"])
        return {"fawa_updated": bool(updated), "fawa_worst": worst}

    def averaged_weights(self):
        return self.avg

    def state_dict(self):
        return {"t": self.t.clone(), "t_known": self.t_known, "avg": self.avg}

    def load_state_dict(self, s):
        self.t, self.t_known, self.avg, self._t_dev = s["t"].float().clone(), bool(s["t_known"]), s.get("avg"), None
