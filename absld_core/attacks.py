"""L-inf attacks on [0,1] images, batched, fp32 by default.

Every attack returns x_adv with ||x_adv - x||_inf <= eps and x_adv in [0,1], and leaves the model's
train/eval mode and its parameters' .grad exactly as it found them (gradients are taken with
torch.autograd.grad with respect to the input only). Attacks run the model in eval mode unless
`train_mode=True` is passed.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import InputError
from .vocab import AA_ATTACKS

__all__ = ["fgsm", "pgd", "pgd_kl", "pgd_kl_tracked", "trades_kl", "cw_inf", "pgd_boundary_steps", "autoattack",
           "kl_to_targets", "margin_loss", "check_images", "AA_ATTACKS", "project", "uniform_start", "autocast_for"]



def check_images(x: torch.Tensor, what: str = "images") -> None:
    """Float images must be finite and lie in [0, 1]: one reduction (and one host read) per call."""
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        n = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contain {n} NaN or infinite value(s); every pixel must be a finite number in [0, 1]")
    if lo < 0 or hi > 1:
        hint = " (pixels in [0, 255]? divide by 255)" if hi > 1 and hi <= 255 and lo >= 0 else ""
        raise ValueError(f"{what} must lie in [0, 1], found values from {lo:.4g} to {hi:.4g}{hint}")


def check_batch(x: torch.Tensor, y: torch.Tensor | None = None, what: str = "images") -> None:
    """Shapes and dtypes as the models and attacks take them: x N x C x H x W, y int64 of shape (N,)."""
    if not torch.is_tensor(x):
        raise InputError(f"{what} must be a torch tensor N x C x H x W, got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{what} must be 4-D, N x C x H x W (channels first), got shape {tuple(x.shape)}"
                         + (": reshape flat images to N x C x H x W" if x.ndim == 2 else ""))
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise InputError(f"{what} of shape {tuple(x.shape)} look channels-last (N x H x W x C); the models take "
                         f"N x C x H x W: x.permute(0, 3, 1, 2)")
    if y is None:
        return
    if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"labels must be an integer tensor of class indices (int64), got "
                        f"{y.dtype if torch.is_tensor(y) else type(y).__name__}: y.long()")
    if y.ndim != 1:
        raise InputError(f"labels must be 1-D, shape (N,), got {tuple(y.shape)}"
                         + (": y.squeeze(1)" if y.ndim == 2 and y.shape[1] == 1 else ""))
    if len(y) != len(x):
        raise InputError(f"{len(x)} {what} but {len(y)} labels: one label per image")


def _check_labels_fit(logits: torch.Tensor, y: torch.Tensor) -> None:
    """A label outside the model's classes (one host read; only for checked calls)."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= logits.shape[1]:
        raise InputError(f"labels must lie in [0, {logits.shape[1] - 1}] for a model with {logits.shape[1]} classes; "
                         f"found labels from {lo} to {hi}")


def _check(x: torch.Tensor, eps: float, alpha: float | None = None, steps: int | None = None,
           validate: bool = True) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"attack inputs must be float images in [0,1], got dtype {x.dtype}")
    if validate:
        check_images(x, "attack inputs")
    # a per-sample eps or alpha (N x 1 x 1 x 1 tensors, the fair-AT methods'): checked here only when
    # validate (one host read); the engine's training attacks build them in range
    for name, v in (("eps", eps), ("alpha", alpha)):
        if validate and torch.is_tensor(v) and not bool(((v > 0) & (v <= 1)).all()):
            raise ValueError(f"per-sample {name} must lie in (0, 1] for every sample, got values from "
                             f"{float(v.min())} to {float(v.max())}" + (" (NaN among them)" if bool(v.isnan().any()) else ""))
    if not torch.is_tensor(eps) and not (0 < eps <= 1):
        raise ValueError(f"eps must lie in (0, 1] (pixels in [0,1]; 8/255 not 8), got {eps}")
    if alpha is not None and not torch.is_tensor(alpha) and not (0 < alpha <= 1):
        raise ValueError(f"alpha (step size) must lie in (0, 1], got {alpha}")
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool = False):
    """Put the model in eval (or train) mode for the attack and restore every submodule's flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, f in flags:
            m.training = f


def autocast_for(x: torch.Tensor, dtype: torch.dtype | None):
    """The autocast context of an attack's forward passes on x's device (none for fp32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=dtype)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """x_adv clipped to the L-inf ball of radius eps (a number or per-sample radii) around x, and to [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def _run(model: nn.Module, x: torch.Tensor, loss_fn: Callable, x0: torch.Tensor, eps: float,
         alpha: float, steps: int, amp_dtype=None, on_logits: Callable | None = None) -> torch.Tensor:
    """Signed-gradient ascent on loss_fn(logits) from x0, projected to the eps-ball and [0,1].

    on_logits(k, logits) is called with the logits at iterate k (before step k+1)."""
    x_adv = x0.detach()
    for k in range(steps):
        x_adv.requires_grad_(True)
        with autocast_for(x, amp_dtype):
            logits = model(x_adv)
        logits = logits.float()
        if on_logits is not None:
            on_logits(k, logits.detach())
        (grad,) = torch.autograd.grad(loss_fn(logits), x_adv)
        x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def _noise(x: torch.Tensor) -> torch.Tensor:
    """A fresh tensor shaped like x in logical (contiguous) order: the same seed gives the same noise
    whatever x's memory format (randn_like would follow channels_last strides)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def uniform_start(x: torch.Tensor, eps) -> torch.Tensor:
    """A uniform random start in the eps-ball (a number or per-sample radii), clipped to [0, 1]."""
    if torch.is_tensor(eps):  # per-sample radii
        return (x + (2 * _noise(x).uniform_() - 1) * eps).clamp_(0.0, 1.0)
    return (x + _noise(x).uniform_(-eps, eps)).clamp_(0.0, 1.0)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, amp_dtype=None,
         validate: bool = True) -> torch.Tensor:
    """One signed-gradient step of size eps on the cross-entropy, from x."""
    _check(x, eps, validate=validate)
    if validate:
        check_batch(x, y)
        with torch.no_grad(), model_mode(model):
            _check_labels_fit(model(x[:1]), y)
    with model_mode(model):
        return _run(model, x, lambda z: F.cross_entropy(z, y, reduction="sum"), x, eps, eps, 1, amp_dtype)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
        random_start: bool = True, *, x_init: torch.Tensor | None = None, loss: str = "ce",
        train_mode: bool = False, amp_dtype=None, validate: bool = True) -> torch.Tensor:
    """PGD (Madry et al.) on cross-entropy ('ce') or the CW margin ('margin'); uniform random start.

    x_init: continue from an earlier iterate (then random_start is ignored). validate: check once that x
    is finite and in [0, 1] (one host read; the engine's training attacks skip it, their batches are
    in range by construction)."""
    _check(x, eps, alpha, steps, validate)
    if validate:
        check_batch(x, y)
        with torch.no_grad(), model_mode(model):
            _check_labels_fit(model(x[:1]), y)
    if loss == "ce":
        loss_fn = lambda z: F.cross_entropy(z, y, reduction="sum")  # noqa: E731
    elif loss == "margin":
        loss_fn = lambda z: margin_loss(z, y).sum()  # noqa: E731
    else:
        raise ValueError(f"unknown PGD loss {loss!r}; allowed: 'ce', 'margin'")
    if x_init is not None:
        x0 = project(x_init.detach().clone(), x, eps)
    else:
        x0 = uniform_start(x, eps) if random_start else x.clone()
    with model_mode(model, train_mode):
        return _run(model, x, loss_fn, x0, eps, alpha, steps, amp_dtype)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin max_{j != y} z_j - z_y per sample (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def cw_inf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
           random_start: bool = True, *, amp_dtype=None, validate: bool = True) -> torch.Tensor:
    """CW-inf: PGD on the margin loss max_{j != y} z_j - z_y."""
    return pgd(model, x, y, eps, alpha, steps, random_start, loss="margin", amp_dtype=amp_dtype, validate=validate)


def kl_to_targets(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """sum over the batch of KL(target || softmax(logits))."""
    return F.kl_div(F.log_softmax(logits, dim=1), target_probs, reduction="sum")


def pgd_kl(model: nn.Module, x: torch.Tensor, target_probs: torch.Tensor, eps: float, alpha: float,
           steps: int, *, init_std: float = 0.001, x_init: torch.Tensor | None = None,
           train_mode: bool = False, amp_dtype=None, validate: bool = True) -> torch.Tensor:
    """Maximise sum KL(target_probs || softmax(model(x_adv))) from a Gaussian start x + init_std*N(0,1)
    (the RSLAD/ABSLD inner maximisation; target_probs are the teacher's soft labels on clean x).

    x_init: continue from an earlier iterate instead. eps (and alpha) may be per-sample tensors
    shaped N x 1 x 1 x 1."""
    x0 = _kl_start(x, target_probs, eps, alpha, steps, init_std, x_init, validate)
    if validate:
        with torch.no_grad(), model_mode(model):
            classes = model(x[:1]).shape[1]
        if target_probs.shape[1] != classes:
            raise InputError(f"target_probs has {target_probs.shape[1]} columns but the model has {classes} classes")
    with model_mode(model, train_mode):
        return _run(model, x, lambda z: kl_to_targets(z, target_probs.detach().float()), x0, eps, alpha, steps,
                    amp_dtype)


def pgd_kl_tracked(model: nn.Module, x: torch.Tensor, target_probs: torch.Tensor, labels: torch.Tensor,
                   eps: float, alpha: float, steps: int, *, init_std: float = 0.001,
                   x_init: torch.Tensor | None = None, train_mode: bool = False, amp_dtype=None,
                   validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """pgd_kl that also returns, per sample, the first iterate at which the model misclassifies it
    (0..steps; steps + 1 = never): (x_adv, first)."""
    x0 = _kl_start(x, target_probs, eps, alpha, steps, init_std, x_init, validate)
    with model_mode(model, train_mode):
        x_adv, first, _ = _tracked(model, x, labels, lambda z: kl_to_targets(z, target_probs.detach().float()),
                                   x0, eps, alpha, steps, amp_dtype)
    return x_adv, first


def _kl_start(x, target_probs, eps, alpha, steps, init_std, x_init, validate):
    _check(x, eps, alpha, steps, validate)
    if validate:
        check_batch(x)
    if target_probs.shape[0] != x.shape[0] or target_probs.ndim != 2:
        raise ValueError(f"target_probs must be N x C with N = {x.shape[0]}, got {tuple(target_probs.shape)}")
    if validate and not bool(((target_probs >= 0) & (target_probs <= 1)).all()):
        raise ValueError(f"target_probs must be probabilities (each in [0, 1], rows summing to 1), got values from "
                         f"{float(target_probs.min())} to {float(target_probs.max())}")
    if x_init is None:  # as the release: the Gaussian start is not clipped (every step projects)
        x0 = (x + init_std * _noise(x).normal_()).detach()
        return project(x0, x, eps) if steps == 0 else x0
    return project(x_init.detach().clone(), x, eps)


def trades_kl(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int, *,
              init_std: float = 0.001, amp_dtype=None, validate: bool = True) -> torch.Tensor:
    """TRADES inner maximisation: KL to the model's own clean prediction (computed in eval mode)."""
    _check(x, eps, alpha, steps, validate)
    with model_mode(model), torch.no_grad():
        p = F.softmax(model(x).float(), dim=1)
    return pgd_kl(model, x, p, eps, alpha, steps, init_std=init_std, amp_dtype=amp_dtype, validate=False)


def _tracked(model, x, y, loss_fn, x0, eps, alpha, steps, amp_dtype):
    """_run that records the first misclassified iterate (0..steps; steps+1 = never) and whether the
    final iterate is misclassified. The model must already be in the wanted mode."""
    first = torch.full((x.shape[0],), steps + 1, dtype=torch.long, device=x.device)

    def record(k, logits):
        wrong = logits.argmax(1) != y
        first.copy_(torch.where(wrong & (first > steps), torch.full_like(first, k), first))
        return wrong

    x_adv = _run(model, x, loss_fn, x0, eps, alpha, steps, amp_dtype, on_logits=record)
    with torch.no_grad(), autocast_for(x, amp_dtype):
        final_wrong = record(steps, model(x_adv).float())
    return x_adv, first, final_wrong


def pgd_boundary_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                       steps: int, random_start: bool = True, *, amp_dtype=None, validate: bool = True):
    """PGD-CE that also reports, per sample, the first iterate k (0..steps) at which the model
    misclassifies it: 0 = already wrong at the start point, steps+1 = never crossed the boundary.

    Returns (x_adv, steps_to_cross, wrong_at_end): steps_to_cross an int64 tensor, wrong_at_end a
    boolean mask of the samples misclassified at the final iterate (HAM's hard set)."""
    _check(x, eps, alpha, steps, validate)
    x0 = uniform_start(x, eps) if random_start else x.clone()
    with model_mode(model):
        x_adv, first, final_wrong = _tracked(model, x, y, lambda z: F.cross_entropy(z, y, reduction="sum"),
                                             x0, eps, alpha, steps, amp_dtype)
    return x_adv, first, final_wrong


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               attacks: Sequence[str] | None = None, *, batch_size: int = 250, seed: int = 0,
               n_iter: int | None = None, n_queries: int | None = None,
               validate: bool = True) -> torch.Tensor:
    """AutoAttack (pyautoattack) L-inf: standard version when attacks is None, else a chosen subset
    of AA_ATTACKS. n_iter / n_queries shrink APGD/FAB iterations and Square queries for CPU runs.

    Returns x_adv."""
    _check(x, eps, validate=validate)
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:  # pragma: no cover - installed by the project's requirements
        raise ImportError("AutoAttack needs the package 'pyautoattack' (pip install pyautoattack)") from e
    import logging

    if attacks is not None:
        bad = [a for a in attacks if a not in AA_ATTACKS]
        if bad or not attacks:
            raise ValueError(f"unknown AutoAttack attack(s) {bad or attacks}; allowed: {', '.join(AA_ATTACKS)}")
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with model_mode(model):
        kw = dict(eps=eps, norm="Linf", device=x.device, seed=seed)
        aa = (AutoAttack(model, version="standard", **kw) if attacks is None
              else AutoAttack(model, version="custom", attacks=list(attacks), **kw))
        num_classes = None
        if n_iter is not None:
            aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = int(n_iter)
        if n_queries is not None:
            aa.square.n_queries = int(n_queries)
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, num_classes - 1)
        x_adv = aa.run_standard_evaluation(x.detach(), y, batch_size=batch_size)[0]
    x_adv = project(x_adv.to(x.dtype), x, eps)
    return x_adv
