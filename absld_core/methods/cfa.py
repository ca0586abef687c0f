"""CFA (Wei et al., CVPR 2023, "Cfa: class-wise calibrated fair adversarial training") on PGD-AT, TRADES or FAT.

t_k: class k's accuracy on the training attack's own adversarial examples (train-mode logits, the
class's own radius) over the previous epoch, normalised as the release does: correct_k * C / N (N the
epoch's samples), equal to correct_k / N_k on balanced data (t_normalisation: 'class_count' for the latter).
- CCM (calibrated margin): eps_k = (lambda1 + t_k) * eps from ccm_start_epoch on (eps before); step alpha.
  The release's `epoch >= begin` with 0-based epochs and begin 10: the first calibrated epoch is 11 of 200.
- CCR (calibrated regularisation, TRADES): per sample b = (lambda2 + t_y) beta / (1 + (lambda2 + t_y) beta),
  loss mean_b[(1 - b) CE_b + b KL_b]; without CCR b = beta / (1 + beta) (the code's TRADES, (CE + 6 KL) / 7).
- FAWA (fairness-aware weight averaging): after each epoch, if the worst class's robust accuracy on the
  validation split reaches fawa_threshold, avg <- decay * avg + (1 - decay) * theta (theta the first
  time). The gate is the release's: PGD-10 (step eps/4: 2/255 at 8/255), eval mode, uniform start
  (fawa_gate: 'validation' reads the run's own validation table instead). The averaged weights are kept
  as averaged.pt and are the ones the final evaluation uses.
As released (PKU-ML/CFA, attack.py and train.py): on the PGD-AT and FAT bases the attack runs in train
mode (batch statistics; every attack pass moves BatchNorm's running statistics; attack_train_mode:
false attacks in eval mode); on TRADES it runs in eval mode. The release's extra train-mode passes are
made too (release_bn_passes): TRADES' third pass on the clean images for the KL target, and after the
optimiser step the logging pass on the clean images; they change only BatchNorm's running statistics.
CFA's FAT base is the release's own early stopping (fat_loss): a sample moves while its budget tau
(default 3) lasts, spending one unit at each step it is misclassified, and stops for good when the
budget is spent; no per-step noise.
variant 'paper' (the default): lambda1 0.5 on PGD-AT, 0.3 on TRADES, 0.7 on FAT; decay 0.85, threshold 0.2.
variant 'release' (PKU-ML/CFA's defaults): lambda1 0.5; decay 0.88, threshold 0.24.
The paper's schedule: 200 epochs, lr 0.1, /10 at 50% and /100 at 75%, weight decay 5e-4.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import attacks as A
from ..checks import ConfigError, check_bool, check_int, check_range
from .base import EpochStart, EpochStats, Method, Options, StepContext, StepOutput, kl_per_sample, running_stats_pass
from .fat import FAT
from .pgd_at import PGDAT
from .registry import register
from .trades import TRADES

AT, KL, FA = PGDAT.name, TRADES.name, FAT.name   # the trainers CFA calibrates, by their registered names
CFA_VARIANTS = {"paper": {"lambda1": {KL: 0.3, AT: 0.5, FA: 0.7}, "fawa_decay": 0.85, "fawa_threshold": 0.2},
                "release": {"lambda1": {KL: 0.5, AT: 0.5, FA: 0.5}, "fawa_decay": 0.88, "fawa_threshold": 0.24}}
GATES = ("pgd10", "validation")
NORMALISATIONS = ("mean_class_count", "class_count")


@dataclass(frozen=True)
class CFAOptions(Options):
    base: str = KL                       # the trainer CFA calibrates: TRADES', PGD-AT's or FAT's registered name
    variant: str = "paper"               # which defaults: 'paper' or 'release' (see the module's text)
    ccm: bool = True                     # class-wise calibrated margin (attack radius)
    ccr: bool = True                     # class-wise calibrated regularisation (TRADES only)
    fawa: bool = True                    # fairness-aware weight averaging
    beta: float = 6.0                    # TRADES' weight
    lambda1: float | None = None         # CCM base; None: the variant's
    lambda2: float = 0.5                 # CCR base
    ccm_start_epoch: int | None = None   # first calibrated (1-based) epoch; None: 11 of 200 (the release's
                                         # begin 10, 0-based), scaled to the run (at least 2)
    fawa_decay: float | None = None      # None: the variant's
    fawa_threshold: float | None = None  # worst-class validation accuracy (fraction) for an update
    fawa_gate: str = "pgd10"             # 'pgd10': the release's gate attack; 'validation': the run's table
    t_normalisation: str = "mean_class_count"  # t_k = correct_k*C/N (release) or 'class_count': correct_k/N_k
    tau: int = 3                         # FAT base: the early-stopping budget (the release's --tau)
    attack_train_mode: bool = True       # PGD-AT and FAT bases attack in train mode, as released
    release_bn_passes: bool = True       # the release's extra train-mode passes (BatchNorm statistics only)

    def __post_init__(self):
        if self.base not in (KL, AT, FA):
            raise ConfigError(f"method.base={self.base!r} is invalid: {KL!r}, {AT!r} or {FA!r}")
        if self.fawa_gate not in GATES:
            raise ConfigError(f"method.fawa_gate={self.fawa_gate!r} is invalid: one of {', '.join(GATES)}")
        if self.t_normalisation not in NORMALISATIONS:
            raise ConfigError(f"method.t_normalisation={self.t_normalisation!r} is invalid: "
                              f"one of {', '.join(NORMALISATIONS)}")
        check_int("method.tau", self.tau, 0)
        for name in ("ccm", "ccr", "fawa", "attack_train_mode", "release_bn_passes"):
            check_bool(f"method.{name}", getattr(self, name))
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
                                    else max(2, round(10 * epochs / 200) + 1))}

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


def class_accuracy(correct: torch.Tensor, count: torch.Tensor, normalisation: str = "mean_class_count") -> torch.Tensor:
    """t_k from class k's correct count: correct_k * C / N (the release's CW_log: m * cw_robust / N) or
    correct_k / N_k ('class_count'); the two agree when every class has N / C samples."""
    correct, count = correct.double(), count.double()
    if normalisation == "mean_class_count":
        return correct * len(count) / count.sum().clamp_min(1)
    return correct / count.clamp_min(1)


def early_stopped_pgd(model, x, y, eps, alpha, steps: int, tau: int, train_mode: bool = True, amp_dtype=None):
    """CFA's FAT base (the release's fat_loss/cw_fat_loss), vectorised: from a uniform start, at each
    step every sample with budget left moves (a misclassified one spends one unit of its budget of
    tau), the others stay; the loop ends early when none moves. The loss is the batch's mean
    cross-entropy, all samples in every pass (train mode: batch statistics, so stopped samples still
    shape the others' gradients, and each pass moves BatchNorm's running statistics, as in the
    release). One host read per step (whether any sample moves), so that the number of passes, and
    with it the running statistics, is the release's."""
    x_adv = A.uniform_start(x, eps)
    budget = torch.full((x.shape[0],), tau, dtype=torch.long, device=x.device)
    with A.model_mode(model, train_mode):
        x_adv.requires_grad_(True)
        with A.autocast_for(x, amp_dtype):
            logits = model(x_adv).float()
        for _ in range(steps):
            wrong = logits.argmax(1) != y
            move = budget > 0
            budget = budget - (wrong & move).long()
            if not bool(move.any()):
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), x_adv)
            step = alpha * grad.sign() * move.to(x.dtype)[:, None, None, None]
            x_adv = A.project(x_adv.detach() + step, x, eps).requires_grad_(True)
            with A.autocast_for(x, amp_dtype):
                logits = model(x_adv).float()
    return x_adv.detach()


def gate_accuracy(model, x_u8, y, eps, num_classes, device, normalisation, steps=10, batch=256):
    """FAWA's gate: class-wise robust accuracy (fractions) under PGD-`steps` at step eps/4, eval mode,
    uniform start (the release's eval_epoch with pgd_loss at 8/255, 2/255, 10 steps)."""
    correct = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(0, len(y), batch):
        xb = x_u8[i:i + batch].to(device).float() / 255
        yb = y[i:i + batch].to(device)
        xa = A.pgd(model, xb, yb, eps, eps / 4, steps, validate=False)
        with A.model_mode(model), torch.no_grad():
            correct.index_add_(0, yb.cpu(), (model(xa).argmax(1) == yb).double().cpu())
    return class_accuracy(correct, torch.bincount(y, minlength=num_classes), normalisation)


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
        self._val = None

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
        if c.base in (AT, FA):
            if c.base == AT:
                x_adv = A.pgd(ctx.raw, x, y, eps, ctx.alpha, ctx.steps, train_mode=c.attack_train_mode,
                              amp_dtype=ctx.attack_dtype, validate=False)
            else:
                x_adv = early_stopped_pgd(ctx.raw, x, y, eps, ctx.alpha, ctx.steps, c.tau, c.attack_train_mode,
                                          ctx.attack_dtype)
            with ctx.autocast():
                (z,) = ctx.forward(x_adv)
            return StepOutput(F.cross_entropy(z.float(), y), y, adv_logits=z)
        x_adv = A.trades_kl(ctx.raw, x, eps, ctx.alpha, ctx.steps, init_std=ctx.kl_init_std,
                            amp_dtype=ctx.attack_dtype, validate=False)
        with ctx.autocast():
            z_nat, z_adv = ctx.forward(x, x_adv)
        if c.release_bn_passes:
            running_stats_pass(ctx, x)      # the release's third pass (the KL target); its logits equal z_nat
        z_nat, z_adv = z_nat.float(), z_adv.float()
        ce = F.cross_entropy(z_nat, y, reduction="none")
        kl = kl_per_sample(z_nat, z_adv)
        b = (calibrated_weight(t, c.lambda2, c.beta) if on and c.ccr
             else torch.full_like(ce, c.beta / (1 + c.beta)))
        return StepOutput(((1 - b) * ce + b * kl).mean(), y, adv_logits=z_adv, nat_logits=z_nat)

    def after_step(self, x, y, ctx: StepContext) -> None:
        if self.options.release_bn_passes:
            running_stats_pass(ctx, x)      # the release's logging pass on the clean batch (train.py)

    def before_epoch(self, start: EpochStart) -> None:
        self._val = (start.val_x, start.val_y, start.device, start.eps, start.epoch)

    def after_epoch(self, stats: EpochStats) -> dict:
        if stats.acc_adv is not None:
            count = stats.class_count if stats.class_count is not None else torch.ones(self.num_classes)
            t = class_accuracy(stats.acc_adv.double() * count.double(), count, self.options.t_normalisation)
            self.t, self.t_known, self._t_dev = t.float(), True, None
        return {"cfa_class_acc_adv": self.t.tolist(), "cfa_calibrating": self.calibrating(stats.epoch + 1)}

    def _gate_worst(self, stats: EpochStats) -> float | None:
        """The worst class's robust accuracy (fraction) that FAWA compares with its threshold."""
        if self.options.fawa_gate == "validation":
            if not stats.val:
                return None
            robust = [a for a in stats.val if a != "clean"] or ["clean"]
            return stats.val[robust[-1]]["worst"] / 100
        x, y, device, eps, epoch = self._val
        if x is None:
            return None
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):   # its own stream: a resumed run gates the same
            torch.manual_seed(2_000_003 + epoch)
            acc = gate_accuracy(stats.model, x, y, eps, self.num_classes, device, self.options.t_normalisation)
        return float(acc.min())

    def after_validation(self, stats: EpochStats) -> dict:
        if not self.options.fawa:
            return {}
        worst = self._gate_worst(stats)
        if worst is None:
            return {}
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
