"""ABSLD's class-wise teacher temperatures: the adaptive rule, fixed values, a table, or a function."""
from __future__ import annotations

import torch

from .base import DeviceMirror, per_class


def absld_update(tau: torch.Tensor, risk: torch.Tensor, eta: float, tau_min: float, tau_max: float) -> torch.Tensor:
    """One adaptive step: g = R - mean(R); tau <- clamp(tau - eta * g / max|g|, tau_min, tau_max).

    A class with above-average risk (hard) gets a lower temperature (sharper soft label)."""
    g = risk.double() - risk.double().mean()
    m = g.abs().max()
    if m == 0 or not torch.isfinite(m):
        return tau.clone()
    return (tau.double() - eta * g / m).clamp(tau_min, tau_max).to(tau.dtype)


class Temperatures:
    """Per-class adversarial and natural temperatures and how they change after every epoch."""

    def __init__(self, options, num_classes: int):
        """options: ABSLD's options (temperature_schedule, tau_init_*, tau_table_*, tau_function, bounds)."""
        cfg = options
        self.options, self.C = options, num_classes
        self._adv_dev, self._nat_dev = DeviceMirror(), DeviceMirror()
        self.schedule = cfg.temperature_schedule
        self.adv = per_class(cfg.tau_init_adv, num_classes, "method.tau_init_adv")
        self.nat = per_class(cfg.tau_init_nat, num_classes, "method.tau_init_nat")
        if self.schedule == "table":
            self.table_adv = self._table(cfg.tau_table_adv, "method.tau_table_adv")
            self.table_nat = self._table(cfg.tau_table_nat, "method.tau_table_nat")
            self.adv, self.nat = self._row(self.table_adv, 1, self.adv), self._row(self.table_nat, 1, self.nat)
        for name, t in (("adversarial", self.adv), ("clean", self.nat)):
            if (t <= 0).any():
                raise ValueError(f"{name} temperatures must be positive, got {t.tolist()}")

    def _table(self, rows, name):
        if rows is None:
            return None
        t = torch.as_tensor([list(r) for r in rows], dtype=torch.float32)
        if t.ndim != 2 or t.shape[1] != self.C or (t <= 0).any():
            raise ValueError(f"{name} must be rows of {self.C} positive temperatures (one row per epoch), "
                             f"got shape {tuple(t.shape)}")
        return t

    @staticmethod
    def _row(table, epoch, default):
        return default if table is None else table[min(epoch, len(table)) - 1].clone()

    def update(self, epoch: int, risk_adv: torch.Tensor, risk_nat: torch.Tensor, eta: float) -> None:
        """Temperatures for epoch+1 from the risks recorded in `epoch` (1-based)."""
        c = self.options
        if self.schedule == "adaptive":
            self.adv = absld_update(self.adv, risk_adv.cpu(), eta, c.tau_min, c.tau_max)
            self.nat = absld_update(self.nat, risk_nat.cpu(), eta, c.tau_min, c.tau_max)
        elif self.schedule == "table":
            self.adv = self._row(self.table_adv, epoch + 1, self.adv)
            self.nat = self._row(self.table_nat, epoch + 1, self.nat)
        elif self.schedule == "function":
            out = c.tau_function(epoch, risk_adv.cpu().clone(), risk_nat.cpu().clone(), self.adv.clone(), self.nat.clone())
            try:
                adv, nat = out
            except (TypeError, ValueError) as e:
                raise ValueError("method.tau_function must return (tau_adv, tau_nat)") from e
            adv = per_class(adv.tolist() if torch.is_tensor(adv) else adv, self.C, "tau_function's tau_adv")
            nat = per_class(nat.tolist() if torch.is_tensor(nat) else nat, self.C, "tau_function's tau_nat")
            if (adv <= 0).any() or (nat <= 0).any() or not (torch.isfinite(adv).all() and torch.isfinite(nat).all()):
                raise ValueError(f"method.tau_function returned non-positive or non-finite temperatures at epoch {epoch}")
            self.adv, self.nat = adv, nat

    def per_sample(self, y: torch.Tensor, coupled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Temperatures of each sample's true class (adv, nat); coupled: both are t_adv[y] * t_nat[y]."""
        ta, tn = self._adv_dev.get(self.adv, y.device)[y], self._nat_dev.get(self.nat, y.device)[y]
        if coupled:
            ta = tn = ta * tn
        return ta, tn

    def state_dict(self) -> dict:
        return {"tau_adv": self.adv.clone(), "tau_nat": self.nat.clone()}

    def load_state_dict(self, s: dict) -> None:
        self.adv, self.nat = s["tau_adv"].float().clone(), s["tau_nat"].float().clone()
