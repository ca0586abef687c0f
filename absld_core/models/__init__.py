"""Model zoo (CIFAR variants, any input size) and the one pair of checkpoint functions.

    model = build_model("preact_resnet18", num_classes=10)
    model = build_model("wrn", 10, depth=34, width=10)          # the TRADES WRN-34-10 teacher
    save_checkpoint(path, model, meta={...});  load_checkpoint(path, model)
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..checks import InputError
from .checkpoint import CheckpointError, check_fits, load_checkpoint, load_state_dict, save_checkpoint
from .resnet import CHANNELS as RESNET_CHANNELS, preact_resnet18, resnet18
from .small import MobileNetV2, SmallCNN
from .wrn import WideResNet

MODELS = ("small_cnn", "resnet18", "preact_resnet18", "mobilenet_v2", "wrn")
RESNETS = ("resnet18", "preact_resnet18")   # the models whose first-stage channels are set by `channels`
__all__ = ["build_model", "MODELS", "Normalize", "save_checkpoint", "load_checkpoint", "load_state_dict",
           "model_from_checkpoint", "CheckpointError", "check_fits", "count_parameters"]


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so attacks still work on [0,1] pixels."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"normalisation std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.model = model

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def build_model(name: str, num_classes: int, in_channels: int = 3, *, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, depth: int = 34, width: int | None = None,
                channels: int | None = None, dropout: float = 0.0, norm: str = "batch") -> nn.Module:
    """Build a model by name: small_cnn, resnet18, preact_resnet18, mobilenet_v2, wrn (depth/width).

    mean/std: optional input normalisation inside the model (both or neither).
    width: WRN widening factor (default 10) or SmallCNN base width (default 32).
    channels: ResNet-18 / PreAct ResNet-18 channels of the first stage (default 64, the papers').
    norm: SmallCNN only, 'batch' (default) or 'none'.
    """
    key = str(name).lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    for what, v in (("width", width), ("depth", depth), ("channels", channels)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{what}={v!r} is invalid: a positive integer")
    if channels is not None and key not in RESNETS:
        raise InputError(f"channels={channels!r} applies to {' and '.join(RESNETS)} only; {key}'s size is set by "
                         f"width" + (" and depth" if key == "wrn" else ""))
    if norm != "batch" and key != "small_cnn":
        raise ValueError(f"norm={norm!r} is only available for small_cnn")
    if key == "small_cnn":
        model = SmallCNN(num_classes, in_channels, width or 32, norm)
    elif key == "resnet18":
        model = resnet18(num_classes, in_channels, channels or RESNET_CHANNELS)
    elif key == "preact_resnet18":
        model = preact_resnet18(num_classes, in_channels, channels or RESNET_CHANNELS)
    elif key == "mobilenet_v2":
        model = MobileNetV2(num_classes, in_channels)
    else:
        model = WideResNet(depth, width or 10, num_classes, in_channels, dropout)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std for input normalisation, or neither")
    if mean is not None:
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values (one per input channel), "
                             f"got {len(mean)} and {len(std)}")
        model = Normalize(model, mean, std)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                          defaults: dict | None = None, **overrides: Any) -> tuple[nn.Module, dict]:
    """Rebuild the model recorded in a checkpoint's meta (arch, num_classes, ...) and load its weights.
    overrides (arch, num_classes, in_channels, depth, width, channels, mean, std) replace what the meta says;
    defaults only fill in what it does not say (external state dicts record nothing)."""
    ckpt = load_checkpoint(path, map_location)
    meta = {**(defaults or {}), **ckpt["meta"], **{k: v for k, v in overrides.items() if v is not None}}
    if "arch" not in meta or "num_classes" not in meta:
        raise CheckpointError(f"checkpoint {path} does not record its architecture; pass arch= and "
                              f"num_classes= (CLI: --model NAME --num-classes N)")
    kw = {k: meta[k] for k in ("depth", "width", "channels", "mean", "std", "norm") if meta.get(k) is not None}
    try:
        model = build_model(meta["arch"], int(meta["num_classes"]), int(meta.get("in_channels", 3)), **kw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} records a model that cannot be built ({e}); pass the right "
                              f"arch/width/depth (CLI: --model, --width, --depth) or use another checkpoint") from None
    load_state_dict(model, ckpt["model"], source=f"checkpoint {path}")
    return model.to(map_location), meta
