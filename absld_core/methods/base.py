"""What every training method shares: the step interface, the context it gets, and the losses."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F



@dataclass
class StepContext:
    """What a method needs for one batch, set by the engine."""
    raw: nn.Module                  # the student itself (attacks run on it, in eval mode)
    forward: Callable               # forward(*batches) -> tuple of logits, train mode (DDP-wrapped if any)
    eps: float
    alpha: float
    steps: int
    epoch: int                      # 1-based
    num_classes: int
    teacher: nn.Module | None = None
    autocast: Callable = contextlib.nullcontext   # context for the training passes (bf16 or nothing)
    attack_dtype: torch.dtype | None = None
    kl_init_std: float = 0.001      # Gaussian start of the KL attacks
    world_size: int = 1             # processes training together (DDP)
    sum_all: Callable = lambda v: v  # a Python number summed over those processes (identity for one)
    zero_loss: Callable | None = None  # zero_loss(x): a zero loss that still reaches every parameter (DDP)


@dataclass
class StepOutput:
    """What a step gives the engine.

    loss: the scalar to minimise (None: no process learns from this batch; the step is skipped).
    labels: the labels of the samples the loss covers (the batch's, or a subset such as HAM's hard set).
    adv_logits / nat_logits: the train-mode student logits of those samples on the adversarial and the
    clean images (either may be None); the engine computes the class-wise risks (cross-entropy) and
    accuracies from them. kept: boolean mask over the batch of the samples trained on (early dropping).
    loss_scale: the loss is a sum divided by this (default: the number of labels), so that the logged
    epoch loss is a mean over the samples trained on."""
    loss: torch.Tensor | None
    labels: torch.Tensor | None = None
    adv_logits: torch.Tensor | None = None
    nat_logits: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    loss_scale: float | None = None


@dataclass
class EpochStart:
    """What a method sees before an epoch's first batch (FRL updates its multipliers here)."""
    epoch: int                      # 1-based
    model: nn.Module                # the student (plain module, not the DDP wrapper)
    val_x: torch.Tensor | None      # the validation split (uint8 images on the host) and its labels
    val_y: torch.Tensor | None
    device: torch.device
    eps: float
    alpha: float


@dataclass
class EpochStats:
    """An epoch's statistics, summed over every process: what the per-epoch hooks receive.

    risk_adv / risk_nat: class-wise mean cross-entropy of the step's adversarial / clean logits
    (zeros when the method gave none); acc_adv / acc_nat: class-wise accuracy of the same logits;
    lr_factor: the lr multiplier of the next epoch (ABSLD decays eta with it); val: the validation table
    ({attack: {avg, worst, worst_class, nsd, class_acc}}) when one ran, else None; reduce(t): a
    tensor summed over the processes (identity for one); class_count: the epoch's samples per class."""
    epoch: int
    risk_adv: torch.Tensor
    risk_nat: torch.Tensor
    acc_adv: torch.Tensor | None = None
    acc_nat: torch.Tensor | None = None
    lr_factor: float = 1.0
    val: dict | None = None
    model: nn.Module | None = None
    reduce: Callable = lambda t: t
    class_count: torch.Tensor | None = None   # the epoch's training samples per class


@dataclass(frozen=True)
class Options:
    """Base of every method's option dataclass (what `method:` holds besides name and teacher)."""

    def check_config(self, cfg) -> None:
        """Checks against the rest of the training config (cfg: TrainConfig); raise ConfigError."""


class Method:
    """A training method: a loss for a batch and per-epoch hooks; the engine does the rest.

    The class attributes name, options_class, needs_teacher and in_study are set by @register."""
    name: str = ""
    options_class: type = Options
    needs_teacher = False
    in_study = True
    validate_every_epoch = False    # the after_validation hook needs a validation table every epoch

    def __init__(self, options: Options, num_classes: int, device: torch.device, train_config=None):
        """options: this method's own options (its dataclass); train_config: the whole TrainConfig
        (None in unit tests)."""
        self.options, self.num_classes, self.device, self.train_config = options, num_classes, device, train_config

    def step(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def before_epoch(self, start: EpochStart) -> None:
        """Called before an epoch's first batch, on every process."""

    def after_step(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> None:
        """Called after the optimiser stepped on a batch (CFA's release logs the batch's clean accuracy
        here with one more train-mode pass, which moves BatchNorm's running statistics)."""

    def after_epoch(self, stats: EpochStats) -> dict:
        """Called after an epoch (every process); returns fields for the epoch's history record."""
        return {}

    def after_validation(self, stats: EpochStats) -> dict:
        """Called on the main process after a validation ran (stats.val set); returns history fields."""
        return {}

    def averaged_weights(self) -> dict | None:
        """A state dict to evaluate instead of the trained weights (weight averaging), or None."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def resolved(self) -> dict:
        """Option values this method chose itself (defaults that depend on the data); recorded in the
        run's config.json under resolved.method."""
        return {}


def running_stats_pass(ctx: StepContext, *batches: torch.Tensor) -> None:
    """Train-mode forward passes without gradients: they change nothing but BatchNorm's running
    statistics, as the releases' extra passes do (FRL's and CFA's third pass on the clean images for the
    KL target, whose logits equal the first pass's; CFA's logging pass after the optimiser step)."""
    with torch.no_grad(), ctx.autocast():
        for x in batches:
            ctx.raw(x)


class DeviceMirror:
    """A copy on the training device of a small host tensor (temperatures, class weights), made again
    only when the host tensor changes (another object, or an in-place edit). Copying from the host in
    every step would make the host wait for the GPU (a blocking copy) once per batch."""

    def __init__(self):
        self._src = self._version = self._copy = None

    def get(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        if (self._copy is None or self._src is not t or self._version != t._version
                or self._copy.device != torch.device(device)):
            self._copy, self._src, self._version = t.to(device), t, t._version
        return self._copy


def per_class(value: Any, num_classes: int, name: str) -> torch.Tensor:
    """A float, or one value per class, as a float tensor of length num_classes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((num_classes,), float(value))
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() != num_classes:
        raise ValueError(f"{name} needs one value or {num_classes} values (one per class), got {t.numel()}")
    return t


def smoothed_targets(y: torch.Tensor, smoothing: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-wise label smoothing: (1 - s[y]) * onehot(y) + s[y] / C for every sample."""
    s = smoothing.to(y.device)[y][:, None]
    return (1 - s) * F.one_hot(y, num_classes).float() + s / num_classes


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy to soft targets."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1)


def kd_per_sample(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """The RSLAD/ABSLD release's KD term per sample: mean over classes of
    b * (log(b + 1e-5) - log a), b teacher probs, a student probs. Its batch mean is the release's
    loss averaged over all B*C elements (KL(teacher || student) / C)."""
    b = teacher_probs.float()
    log_a = F.log_softmax(student_logits.float(), dim=1)
    return (b * (torch.log(b + 1e-5) - log_a)).mean(1)


def kl_per_sample(z_nat: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """TRADES' robustness term per sample: KL(s(z_nat) || s(z_adv)) summed over classes (the clean
    distribution is not detached, as in the TRADES-style releases)."""
    return F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_nat, 1), reduction="none").sum(1)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None, count: float | None = None) -> torch.Tensor:
    """Mean of values (times weights); with count, their sum divided by count instead (HAM under DDP
    divides by the hard set of every process)."""
    v = values if weights is None else values * weights
    return v.mean() if count is None else v.sum() / count
