"""Replay the ABSLD temperature rule on class risks recorded in a run, under other settings.

The explorer notebook uses this to show what eta, bounds, initial values, decay epochs and the
adversarial/natural coupling would have done with the same risks; a replay with the run's own
settings reproduces the temperatures the run recorded (a test checks this).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_temperature_rule
from .methods.absld import ABSLDOptions
from .methods.temperature import absld_update
from .schedule import absld_eta

_D = ABSLDOptions  # the defaults are the method's own


@dataclass(frozen=True)
class ReplaySettings:
    eta: float = _D.eta
    tau_min: float = _D.tau_min
    tau_max: float = _D.tau_max
    tau_init_adv: float = _D.tau_init_adv
    tau_init_nat: float = _D.tau_init_nat
    decay_epochs: tuple = ()      # eta x decay after each of these epochs (the lr milestones)
    decay: float = 0.1
    coupled: bool = False         # release quirk: both targets use t_adv * t_nat
    eta_factors: tuple | None = None  # exact multiplier of eta at the end of each epoch (overrides decay_epochs)

    def __post_init__(self):
        check_temperature_rule(self.eta, self.tau_min, self.tau_max)


def replay(risk_adv: np.ndarray, risk_nat: np.ndarray, s: ReplaySettings) -> tuple[np.ndarray, np.ndarray]:
    """Temperatures (E+1 x C, row 0 the initial values) from per-epoch class risks (E x C).

    After epoch e (1-based) eta is eta0 * decay^(number of decay epochs <= e), as in the engine
    (the release decays lr and eta before updating the temperatures)."""
    ra, rn = np.asarray(risk_adv, dtype=float), np.asarray(risk_nat, dtype=float)
    if ra.ndim != 2 or ra.shape != rn.shape:
        raise ValueError(f"risks must be epochs x classes arrays of one shape, got {ra.shape} and {rn.shape}")
    C = ra.shape[1]
    ta, tn = torch.full((C,), float(s.tau_init_adv)), torch.full((C,), float(s.tau_init_nat))
    out_a, out_n = [ta.numpy().copy()], [tn.numpy().copy()]
    for e, eta in enumerate(etas(s, len(ra)), start=1):
        ta = absld_update(ta, torch.tensor(ra[e - 1]), eta, s.tau_min, s.tau_max)
        tn = absld_update(tn, torch.tensor(rn[e - 1]), eta, s.tau_min, s.tau_max)
        out_a.append(ta.numpy().copy())
        out_n.append(tn.numpy().copy())
    return np.stack(out_a), np.stack(out_n)


def etas(s: ReplaySettings, epochs: int) -> list[float]:
    """eta at each of the updates after epochs 1..E: eta0 times the recorded factor, or decay^(number of
    decay epochs <= e)."""
    if s.eta_factors is not None:
        return [absld_eta(s.eta, s.eta_factors[min(e, len(s.eta_factors)) - 1]) for e in range(1, epochs + 1)]
    return [s.eta * s.decay ** sum(e >= d for d in s.decay_epochs) for e in range(1, epochs + 1)]


def travel_text(s: ReplaySettings, epochs: int) -> str:
    """How far these settings let a class temperature move: E updates, the sum of their eta, against
    the paper's 300 updates (schedule.paper_travel)."""
    from .schedule import paper_travel

    total, paper = sum(etas(s, epochs)), paper_travel()
    return (f"{epochs} temperature updates, total travel (sum of eta) {total:.3g}: {100 * total / paper:.0f}% of "
            f"the paper's {paper:.3g} (300 updates at eta 0.1)")


def effective(tau_adv: np.ndarray, tau_nat: np.ndarray, coupled: bool) -> tuple[np.ndarray, np.ndarray]:
    """The temperatures the teacher logits are actually divided by (the product when coupled)."""
    return (tau_adv * tau_nat, tau_adv * tau_nat) if coupled else (tau_adv, tau_nat)


def soft_labels(teacher_logits: torch.Tensor, labels: torch.Tensor, tau_per_class: Sequence[float]) -> np.ndarray:
    """s(z_T / tau[y]) for each image: the tempered soft label ABSLD trains towards."""
    t = torch.as_tensor(np.asarray(tau_per_class, dtype=np.float32))[labels]
    return F.softmax(teacher_logits.float() / t[:, None], dim=1).numpy()


def risks_from_history(history) -> tuple[np.ndarray, np.ndarray]:
    """E x C arrays of the recorded class risks (pandas DataFrame or list of records)."""
    recs = history.to_dict(orient="records") if hasattr(history, "to_dict") else list(history)
    if not recs or "class_risk_adv" not in recs[0]:
        raise ValueError("this run recorded no class risks (train an ABSLD/RSLAD run first)")
    return (np.array([r["class_risk_adv"] for r in recs], dtype=float),
            np.array([r["class_risk_nat"] for r in recs], dtype=float))
