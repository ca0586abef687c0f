"""Learning-rate schedules as pure functions of the epoch (so a resumed run needs no scheduler state),
and ABSLD's temperature step, which follows the lr. `cfg` is an OptimConfig (or anything with its
fields epochs, schedule, milestones, gamma, lr, warmup_epochs); this module imports nothing from the
package, so that configs and methods can both read it."""
from __future__ import annotations

from types import SimpleNamespace


def lr_factor(cfg, epoch: int) -> float:
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


def collapsed_decays(cfg) -> list[tuple[int, int, float]]:
    """(epoch, n, factor): the 1-based epochs from which n > 1 of a named schedule's decays take effect
    at once, because a short run scales its milestones onto the same epoch, and the lr's change there."""
    n = cfg.epochs
    if cfg.schedule == "paper300":
        starts = [int(m * n // 300) + 1 for m in (215, 260, 285)]   # the first epoch e with e > m * n / 300
    elif cfg.schedule == "ham120":
        starts = [max(2, int(frac * n)) for frac in (0.5, 0.75, 0.917)]
    else:
        return []
    out = []
    for e in sorted(set(starts)):
        k = starts.count(e)
        if k > 1 and e <= n:
            out.append((e, k, lr_factor(cfg, e) / (lr_factor(cfg, e - 1) if e > 1 else 1.0)))
    return out


def lr_at(cfg, epoch: int, batch: int = 0, batches_per_epoch: int = 1) -> float:
    """Learning rate for a batch: the schedule, with a linear warm-up over the first warmup_epochs."""
    lr = cfg.lr * lr_factor(cfg, epoch)
    if cfg.warmup_epochs and epoch <= cfg.warmup_epochs:
        done = (epoch - 1) * batches_per_epoch + batch + 1
        lr *= done / (cfg.warmup_epochs * batches_per_epoch)
    return lr


def milestone_epochs(cfg) -> list[int]:
    """Epochs after which the lr drops (for plots and for eta's decay)."""
    return [e for e in range(1, cfg.epochs) if lr_factor(cfg, e + 1) < lr_factor(cfg, e)]


# ABSLD's temperatures move once per epoch by at most eta (times the lr's decay factor) per class, so
# a run's "temperature travel", the sum of eta over its updates, bounds how far a class temperature can
# go. The paper: 300 updates at eta 0.1 with the x0.1 decays at 215/260/285. Squeezing that schedule
# into a few epochs keeps eta and shrinks the travel by about the same factor as the epochs.
PAPER_EPOCHS, PAPER_ETA = 300, 0.1   # the paper's epochs and eta (ABSLD's default eta)


def simple_schedule(epochs: int, schedule: str = "paper300"):
    """The fields of an OptimConfig that the lr factor reads, for a named schedule over `epochs`."""
    return SimpleNamespace(epochs=epochs, schedule=schedule, milestones=(), gamma=0.1)


def _paper_schedule():
    return simple_schedule(PAPER_EPOCHS)


def next_lr_factor(cfg, epoch: int) -> float:
    """The lr multiplier of the epoch after 1-based `epoch` (what the per-epoch hooks receive)."""
    return lr_factor(cfg, epoch + 1)


def absld_eta(eta: float, next_factor: float, follows_lr: bool = True) -> float:
    """ABSLD's temperature step after an epoch: eta times the lr factor of the next epoch (the release
    decays lr and eta before it updates the temperatures), or eta itself when it does not follow the lr.
    The one place of this rule: the engine's method, the explorer's replay and the travel use it."""
    return eta * (next_factor if follows_lr else 1.0)


def eta_factors(cfg, follows_lr: bool = True) -> list[float]:
    """eta's multiplier at each of the run's temperature updates (one after every epoch)."""
    return [absld_eta(1.0, next_lr_factor(cfg, e), follows_lr) for e in range(1, cfg.epochs + 1)]


def temperature_travel(cfg, eta: float, follows_lr: bool = True) -> float:
    """The sum of eta over a run's temperature updates: the furthest a class temperature can travel."""
    return float(eta * sum(eta_factors(cfg, follows_lr)))


def paper_travel() -> float:
    """The temperature travel of the paper's schedule (300 epochs, eta 0.1, paper300 decays): about 21.9."""
    return temperature_travel(_paper_schedule(), PAPER_ETA)


def eta_for_paper_travel(cfg, eta: float = PAPER_ETA, follows_lr: bool = True) -> float:
    """eta scaled so that this run's temperatures travel as far in total as the paper's 300 updates at
    `eta` do (eta x 300 / epochs when neither schedule decays; a little more under squeezed decays)."""
    full = temperature_travel(_paper_schedule(), eta)
    return float(full / sum(eta_factors(cfg, follows_lr)))


def describe_travel(cfg, eta: float, follows_lr: bool = True) -> str:
    """One line on a run's temperature budget against the paper's, for the explorer and the notebooks."""
    f = eta_factors(cfg, follows_lr)
    at_full = sum(1 for x in f if x == 1.0)
    travel, paper = temperature_travel(cfg, eta, follows_lr), paper_travel()
    return (f"{cfg.epochs} epochs: {cfg.epochs} temperature updates, {at_full} of them at the full eta={eta:g}; "
            f"total travel (sum of eta) {travel:.3g} against the paper's {paper:.3g} (300 updates at 0.1), "
            f"{100 * travel / paper:.0f}% of it. eta={eta_for_paper_travel(cfg, PAPER_ETA, follows_lr):.3g} "
            f"would give the paper's travel (eta_for_300_epochs in notebook 03).")
