"""Natural training: cross-entropy on clean images, with optional class-wise label smoothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checks import ConfigError
from .base import Method, Options, StepContext, StepOutput, per_class, smoothed_targets, soft_ce
from .registry import register


def check_smoothing(value, name: str = "method.label_smoothing") -> None:
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        raise ConfigError(f"{name}={value!r} is invalid: a number in [0, 1], or one per class")


@dataclass(frozen=True)
class SmoothingOptions(Options):
    label_smoothing: Any = 0.0     # a number in [0, 1], or one per class (class-wise label smoothing)

    def __post_init__(self):
        check_smoothing(self.label_smoothing)


@register("natural", display="natural", options=SmoothingOptions, student=False, order=0)
class Natural(Method):
    """CE to the (optionally class-wise smoothed) one-hot labels on clean images."""

    def __init__(self, options, num_classes, device, train_config=None):
        super().__init__(options, num_classes, device, train_config)
        s = per_class(options.label_smoothing, num_classes, "method.label_smoothing")
        if (s < 0).any() or (s > 1).any():
            raise ValueError(f"method.label_smoothing must lie in [0, 1], got {s.tolist()}")
        self.smoothing = s.to(device)

    def targets(self, y):
        return smoothed_targets(y, self.smoothing, self.num_classes)

    def step(self, x, y, ctx: StepContext) -> StepOutput:
        with ctx.autocast():
            (z,) = ctx.forward(x)
        return StepOutput(soft_ce(z, self.targets(y)).mean(), y, nat_logits=z)
