"""Training methods: each a small unit supplying its loss and per-epoch bookkeeping to the engine."""
from __future__ import annotations

import torch

from ..config import MethodConfig
from .base import Method, StepContext, StepOutput, kd_per_sample, smoothed_targets, soft_ce
from .baselines import TRADES, PGDAT, Natural
from .distill import ABSLD, RSLAD, Distill, fair_ard_weights
from .ham import ABSLDHAM, HAM, hardness_weights
from .temperature import Temperatures, absld_update

REGISTRY = {"natural": Natural, "pgd_at": PGDAT, "trades": TRADES, "rslad": RSLAD, "absld": ABSLD,
            "ham": HAM, "absld_ham": ABSLDHAM}

__all__ = ["build_method", "REGISTRY", "Method", "StepContext", "StepOutput", "absld_update", "Temperatures",
           "smoothed_targets", "kd_per_sample", "soft_ce", "fair_ard_weights", "hardness_weights", "Distill"]


def build_method(cfg: MethodConfig, num_classes: int, device: torch.device) -> Method:
    return REGISTRY[cfg.name](cfg, num_classes, device)
