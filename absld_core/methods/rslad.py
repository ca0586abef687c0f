"""RSLAD (Zi et al.): the teacher's untempered soft labels for both the adversarial and the clean term."""
from __future__ import annotations

from .distill import Distill, DistillOptions
from .registry import register


@register("rslad", display="RSLAD", options=DistillOptions, needs_teacher=True, order=30)
class RSLAD(Distill):
    pass
