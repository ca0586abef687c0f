"""What every training method shares: the step interface, the context it gets, and the losses."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MethodConfig


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
    """loss: the scalar to minimise (None: no process learns from this batch; the step is skipped).
    risk_y / ce_adv / ce_nat: labels and per-sample CE of the train-mode student logits, for the
    class-wise risks; kept: boolean mask of the batch samples trained on (HAM).
    loss_scale: the loss is a sum divided by this (default: the number of risk_y labels, else the
    batch), so that the logged epoch loss is a mean over the samples trained on."""
    loss: torch.Tensor | None
    risk_y: torch.Tensor | None = None
    ce_adv: torch.Tensor | None = None
    ce_nat: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    loss_scale: float | None = None


class Method:
    """A training method: a loss for a batch and per-epoch bookkeeping; the engine does the rest."""
    needs_teacher = False

    def __init__(self, cfg: MethodConfig, num_classes: int, device: torch.device):
        self.cfg, self.num_classes, self.device = cfg, num_classes, device

    def step(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before an epoch's first batch."""

    def end_epoch(self, epoch: int, risk_adv: torch.Tensor | None, risk_nat: torch.Tensor | None,
                  eta_factor: float, extra: dict) -> dict:
        """Called after an epoch with the class risks (reduced over processes); returns history fields."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def resolved(self) -> dict:
        """Option values this method chose itself (defaults that depend on the data); recorded in the
        run's config.json under resolved.method."""
        return {}


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


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None, count: float | None = None) -> torch.Tensor:
    """Mean of values (times weights); with count, their sum divided by count instead (HAM under DDP
    divides by the hard set of every process)."""
    v = values if weights is None else values * weights
    return v.mean() if count is None else v.sum() / count
