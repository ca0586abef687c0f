"""Learning-rate schedules as pure functions of the epoch (so a resumed run needs no scheduler state)."""
from __future__ import annotations

from .config import OptimConfig


def lr_factor(cfg: OptimConfig, epoch: int) -> float:
    """Multiplier of the base lr during 1-based `epoch`, warm-up excluded.

    paper300: x0.1 after 215, 260 and 285 of 300 epochs (scaled to cfg.epochs);
    ham120: /10, /100, /200 from the epochs int(0.5 n), int(0.75 n), int(0.917 n) on (at least epoch 2), as
    the HAM release: 60, 90 and 110 of 120; milestones: gamma after each."""
    e, n = epoch, cfg.epochs
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "paper300":
        return 0.1 ** sum(e > m * n / 300 for m in (215, 260, 285))
    if cfg.schedule == "ham120":
        f = 1.0
        for frac, div in ((0.5, 10), (0.75, 100), (0.917, 200)):
            if e >= max(2, int(frac * n)):
                f = 1.0 / div
        return f
    return cfg.gamma ** sum(e > m for m in cfg.milestones)


def lr_at(cfg: OptimConfig, epoch: int, batch: int = 0, batches_per_epoch: int = 1) -> float:
    """Learning rate for a batch: the schedule, with a linear warm-up over the first warmup_epochs."""
    lr = cfg.lr * lr_factor(cfg, epoch)
    if cfg.warmup_epochs and epoch <= cfg.warmup_epochs:
        done = (epoch - 1) * batches_per_epoch + batch + 1
        lr *= done / (cfg.warmup_epochs * batches_per_epoch)
    return lr


def milestone_epochs(cfg: OptimConfig) -> list[int]:
    """Epochs after which the lr drops (for plots and for eta's decay)."""
    return [e for e in range(1, cfg.epochs) if lr_factor(cfg, e + 1) < lr_factor(cfg, e)]
