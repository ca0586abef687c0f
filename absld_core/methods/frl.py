"""FRL (Xu et al., ICML 2021, "To be robust or to be fair"): TRADES with class-wise loss weights (Reweight)
and class-wise attack radii (Reweight + Remargin), set once per epoch from the validation split.

Loss: sum_b w0[y] CE(f(x), y) / sum_b w0[y] + beta * sum_b w1[y] KL_b / sum_b w1[y], with
KL_b = KL(f(x) || f(x')) over classes (clean target not detached); x' from the TRADES KL attack projected
per sample to eps * w2[y] (step alpha; Reweight+Remargin: max_b eps * w2[y] / 4).
Before each epoch, on the validation split, per class i: e_nat_i = 1 - clean accuracy, e_bndy_i =
clean - PGD-20 accuracy; lambda0 <- P(lambda0 + r1 (e_nat_i - mean e_nat - tau)), lambda1 <- P(lambda1 +
2 r1 (e_bndy_i - mean e_bndy - tau)), Remargin: lambda2 <- lambda2 + r2 (e_bndy_i - mean e_bndy - tau);
P(v) = max(v, 0) rescaled to sum `limit` when its sum is larger; w = 1/K + lambda - mean(lambda);
w2 = clip(exp(2 lambda2), 0.98, 3.0).
r1 is halved at every 40th epoch (epochs 40, 80, ..., before that epoch's update), as the release's
`if now_epoch % 40 == 0: rate1 = rate1 / 2` (rate1_halving_every: 0 keeps it constant). The KL target is
a third train-mode pass on the clean images, as in the release: its logits equal the first pass's, so it
only moves BatchNorm's running statistics (three updates per step; release_bn_passes: false keeps two).
Defaults are the authors' current code (hannxu123/fair_robust): beta 1.5, tau 0.1 (Reweight) or 0.07
(Remargin), r1 0.05, r2 0.2, limit 0.5; their code fine-tunes a TRADES model for 40 epochs at a constant
lr of 0.001 (set model.init_checkpoint and optim for that). A 2021 version of the code differed (beta 1,
120 epochs); which one produced the paper's numbers is not known.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import attacks as A
from ..checks import ConfigError, check_bool, check_int, check_range
from .base import EpochStart, Method, Options, StepContext, StepOutput, kl_per_sample, running_stats_pass
from .registry import register

VARIANTS = ("reweight", "reweight_remargin")


@dataclass(frozen=True)
class FRLOptions(Options):
    variant: str = "reweight"      # 'reweight' (RW) or 'reweight_remargin' (RW+RM)
    beta: float = 1.5              # weight of the KL term
    tau: float | None = None       # tolerance; None: 0.1 (reweight) or 0.07 (reweight_remargin)
    rate1: float = 0.05            # r1: step of the loss-weight multipliers
    rate2: float = 0.2             # r2: step of the radius multipliers (remargin)
    limit: float = 0.5             # the loss-weight multipliers' sum is at most this
    val_steps: int = 20            # PGD steps of the per-epoch validation (step attack.alpha)
    rate1_halving_every: int = 40  # r1 halves at every multiple of this epoch (the release's 40); 0: never
    release_bn_passes: bool = True  # the release's third train-mode pass (BatchNorm statistics only)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"method.variant={self.variant!r} is invalid: one of {', '.join(VARIANTS)}")
        check_range("method.beta", self.beta, 0, float("inf"))
        if self.tau is not None:
            check_range("method.tau", self.tau, 0, 1)
        check_range("method.rate1", self.rate1, 0, float("inf"))
        check_range("method.rate2", self.rate2, 0, float("inf"))
        check_range("method.limit", self.limit, 0, 1, lo_open=True)
        check_int("method.val_steps", self.val_steps, 1)
        check_int("method.rate1_halving_every", self.rate1_halving_every, 0)
        check_bool("method.release_bn_passes", self.release_bn_passes)

    def rate1_at(self, epoch: int) -> float:
        """r1 in 1-based `epoch`: halved at each multiple of rate1_halving_every reached."""
        n = self.rate1_halving_every
        return self.rate1 / 2 ** (epoch // n) if n else self.rate1

    @property
    def tolerance(self) -> float:
        return self.tau if self.tau is not None else (0.1 if self.variant == "reweight" else 0.07)

    def check_config(self, cfg) -> None:
        if cfg.data.val_per_class == 0:
            raise ConfigError("FRL sets its class weights on the validation split: set data.val_per_class > 0 "
                              "(the release holds out 300 per class)")


def project_multipliers(v: torch.Tensor, limit: float) -> torch.Tensor:
    """P(v): negative entries to 0, then rescaled to sum `limit` when the sum exceeds it."""
    v = v.clamp_min(0)
    s = float(v.sum())
    return v * (limit / s) if s > limit else v


def class_weights(lam: torch.Tensor) -> torch.Tensor:
    """w_i = 1/K + lambda_i - mean(lambda): sums to one."""
    return 1.0 / len(lam) + lam - lam.mean()


def update(lam0, lam1, lam2, e_nat, e_bndy, opts: FRLOptions, rate1: float | None = None):
    """One epoch's multiplier update from the class-wise clean and boundary errors (fractions); rate1:
    this epoch's r1 (default opts.rate1)."""
    t = opts.tolerance
    r1 = opts.rate1 if rate1 is None else rate1
    g0 = e_nat - e_nat.mean() - t
    g1 = e_bndy - e_bndy.mean() - t
    lam0 = project_multipliers(lam0 + r1 * g0, opts.limit)
    lam1 = project_multipliers(lam1 + 2 * r1 * g1, opts.limit)
    if opts.variant == "reweight_remargin":
        lam2 = lam2 + opts.rate2 * g1
    return lam0, lam1, lam2


def class_errors(model, x_u8, y, eps, alpha, steps, num_classes, device, batch=256):
    """(e_nat, e_bndy) per class on a validation split: 1 - clean accuracy, clean - PGD accuracy."""
    correct = torch.zeros(num_classes, dtype=torch.float64)
    robust = torch.zeros(num_classes, dtype=torch.float64)
    count = torch.bincount(y, minlength=num_classes).double()
    for i in range(0, len(y), batch):
        xb = x_u8[i:i + batch].to(device).float() / 255
        yb = y[i:i + batch].to(device)
        with A.model_mode(model), torch.no_grad():
            ok = (model(xb).argmax(1) == yb).double().cpu()
        xa = A.pgd(model, xb, yb, eps, alpha, steps, validate=False)
        with A.model_mode(model), torch.no_grad():
            rob = (model(xa).argmax(1) == yb).double().cpu()
        correct.index_add_(0, yb.cpu(), ok)
        robust.index_add_(0, yb.cpu(), rob)
    acc, adv = correct / count.clamp_min(1), robust / count.clamp_min(1)
    return 1 - acc, acc - adv


@register("frl", display="FRL", options=FRLOptions, order=70)
class FRL(Method):
    def __init__(self, options, num_classes, device, train_config=None):
        super().__init__(options, num_classes, device, train_config)
        z = torch.zeros(num_classes, dtype=torch.float64)
        self.lam0, self.lam1, self.lam2 = z.clone(), z.clone(), z.clone()
        self._set_weights()

    def _set_weights(self):
        self.w0, self.w1 = class_weights(self.lam0), class_weights(self.lam1)
        self.w2 = (torch.exp(2 * self.lam2).clamp(0.98, 3.0) if self.options.variant == "reweight_remargin"
                   else torch.ones_like(self.lam2))
        # device copies, made once per epoch
        self._w0, self._w1, self._w2 = (w.float().to(self.device) for w in (self.w0, self.w1, self.w2))

    def before_epoch(self, start: EpochStart) -> None:
        """The multipliers from this epoch's validation errors. The attack's random starts come from a
        stream of their own (seeded by the epoch), so that every process computes the same weights and a
        resumed run the same as an uninterrupted one."""
        devices = [start.device] if start.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(1_000_003 + start.epoch)
            e_nat, e_bndy = class_errors(start.model, start.val_x, start.val_y, start.eps, start.alpha,
                                         self.options.val_steps, self.num_classes, start.device)
        self.last_errors, self.last_rate1 = (e_nat, e_bndy), self.options.rate1_at(start.epoch)
        self.lam0, self.lam1, self.lam2 = update(self.lam0, self.lam1, self.lam2, e_nat, e_bndy, self.options,
                                                 self.last_rate1)
        self._set_weights()

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        eps = (ctx.eps * self._w2[y])[:, None, None, None]
        alpha = ctx.alpha if self.options.variant == "reweight" else eps.max() / 4
        x_adv = A.trades_kl(ctx.raw, x, eps, alpha, ctx.steps, init_std=ctx.kl_init_std,
                            amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            z_nat, z_adv = ctx.forward(x, x_adv)
        if self.options.release_bn_passes:
            running_stats_pass(ctx, x)
        z_nat, z_adv = z_nat.float(), z_adv.float()
        ce = F.cross_entropy(z_nat, y, reduction="none")
        kl = kl_per_sample(z_nat, z_adv)
        w0, w1 = self._w0[y], self._w1[y]
        loss = (w0 * ce).sum() / w0.sum() + self.options.beta * (w1 * kl).sum() / w1.sum()
        return StepOutput(loss, y, adv_logits=z_adv, nat_logits=z_nat)

    def after_epoch(self, stats) -> dict:
        out = {"frl_weight_nat": self.w0.tolist(), "frl_weight_bndy": self.w1.tolist(),
               "frl_eps_scale": self.w2.tolist()}
        if hasattr(self, "last_errors"):
            out["frl_val_error_nat"], out["frl_val_error_bndy"] = (e.tolist() for e in self.last_errors)
            out["frl_rate1"] = self.last_rate1
        return out

    def state_dict(self):
        return {"lam0": self.lam0.clone(), "lam1": self.lam1.clone(), "lam2": self.lam2.clone()}

    def load_state_dict(self, s):
        self.lam0, self.lam1, self.lam2 = (s[k].double().clone() for k in ("lam0", "lam1", "lam2"))
        self._set_weights()
