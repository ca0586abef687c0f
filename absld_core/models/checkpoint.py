"""Save and load model checkpoints: atomic writes, weights_only loads, tolerant of wrapper prefixes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import atomic_write

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model; the message says which keys."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DataParallel
        model = model.module
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: str | os.PathLike, model: nn.Module | dict, meta: dict | None = None,
                    **extra: Any) -> None:
    """Write {'model': state_dict, 'meta': meta, **extra} atomically. meta should hold how to rebuild
    the model (arch, num_classes, in_channels, ...) so `model_from_checkpoint` can."""
    state = model if isinstance(model, dict) else _unwrap(model).state_dict()
    atomic_torch_save({"model": state, "meta": dict(meta or {}), **extra}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with weights_only=True; always returns a dict with 'model' and 'meta'."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file (an interrupted copy or save?); "
                              f"it must be a torch.save'd state dict")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"cannot read checkpoint {path} with weights_only=True ({type(e).__name__}"
                              f"{': ' + first if first else ''}); it must be a torch.save'd state dict") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state dict")
    for key in ("model", "state_dict", "model_state_dict", "net"):
        if key in obj and isinstance(obj[key], dict):
            return {**obj, "model": obj[key], "meta": obj.get("meta", {})}
    if all(isinstance(v, torch.Tensor) for v in obj.values()):  # a bare state dict (e.g. TRADES release)
        return {"model": obj, "meta": {}}
    raise CheckpointError(f"checkpoint {path} has no model weights (keys: {sorted(obj)[:10]})")


def _strip(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_state_dict(model: nn.Module, state: dict, source: str = "checkpoint") -> nn.Module:
    """Load weights strictly after removing wrapper prefixes; name every key that does not fit."""
    target = _unwrap(model)
    state = _strip(state)
    own = target.state_dict()
    if not any(k in own for k in state) and any(("model." + k) in own for k in state):
        state = {"model." + k: v for k, v in state.items()}  # raw weights into a Normalize wrapper
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape:
        def few(xs):
            return ", ".join(xs[:8]) + (f" (+{len(xs) - 8} more)" if len(xs) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shape:
            parts.append(f"shape mismatches: {few(shape)}")
        raise CheckpointError(f"{source} does not fit {type(target).__name__}; " + "; ".join(parts))
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite weights in {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}: it comes from a diverged run; use an earlier "
                              f"checkpoint")
    target.load_state_dict(state)
    return model


def check_fits(meta: dict, num_classes: int, in_channels: int, source: str) -> None:
    """A checkpoint's model must predict the data's classes from images with the data's channels."""
    if int(meta["num_classes"]) != num_classes:
        raise CheckpointError(f"{source} predicts {meta['num_classes']} classes but the data has {num_classes}")
    got = int(meta.get("in_channels", 3))
    if got != in_channels:
        raise CheckpointError(f"{source} takes images with {got} channel(s) but the data has {in_channels}; "
                              f"use a checkpoint trained on this dataset (or pass its in_channels)")
