"""Training methods: each one module that registers itself (see registry.py and README "Adding a method").

Importing the package imports every module in it, so a new method file needs no other change."""
from __future__ import annotations

import importlib
import pkgutil

import torch

from . import registry
from .base import EpochStart, EpochStats, Method, Options, StepContext, StepOutput
from .registry import register

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["build_method", "registry", "register", "Method", "Options", "StepContext", "StepOutput",
           "EpochStart", "EpochStats"]


def build_method(method_config, num_classes: int, device: torch.device, train_config=None) -> Method:
    """The method of a MethodConfig (train_config: the whole TrainConfig, for methods that read the schedule)."""
    return method_config.method_class(method_config.options, num_classes, device, train_config)
