"""ABSLD (Zhao et al.): RSLAD with class-wise teacher temperatures adapted from the student's class risks.

After every epoch: g = R - mean(R), tau <- clamp(tau - eta * g / max|g|, tau_min, tau_max), separately for
the adversarial and the clean term (a hard class gets a sharper soft label); eta, the temperature step,
is multiplied by 0.1 whenever the lr is (eta_follows_lr).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..checks import ConfigError, check_temperature_rule
from ..declare import N3, N5, Param
from ..schedule import PAPER_ETA, absld_eta, eta_for_paper_travel, simple_schedule
from .base import EpochStats
from .distill import Distill, DistillOptions
from .registry import register
from .temperature import Temperatures

TEMPERATURE_SCHEDULES = ("adaptive", "fixed", "table", "function")


def study_eta(eta, P: dict) -> float:
    """The study's eta; with eta_for_300_epochs, scaled so that the temperatures travel as far in total
    as 300 updates of the paper's schedule at eta (schedule.eta_for_paper_travel)."""
    if not P.get("eta_for_300_epochs"):
        return float(eta)
    return eta_for_paper_travel(simple_schedule(int(P["epochs"]), P.get("lr_schedule", "paper300")), float(eta))


@dataclass(frozen=True)
class ABSLDOptions(DistillOptions):
    temperature_schedule: str = "adaptive"   # adaptive (ABSLD's rule), fixed, table, function
    eta: float = PAPER_ETA                   # the temperature step of the adaptive rule (the paper's 0.1)
    eta_follows_lr: bool = True              # eta is multiplied by 0.1 whenever the lr is
    tau_min: float = 0.5
    tau_max: float = 5.0
    tau_init_adv: Any = 1.0                  # a number or one value per class
    tau_init_nat: Any = 1.0
    tau_table_adv: tuple | None = None       # temperature_schedule='table': one row (C values) per epoch
    tau_table_nat: tuple | None = None
    tau_function: Callable | None = None     # 'function': f(epoch, risk_adv, risk_nat, tau_adv, tau_nat)
    coupled_temperatures: bool = False       # the released script's quirk: both use z_T / (t_adv * t_nat)
    STUDY_PARAMS: ClassVar[tuple] = (
        Param("eta", PAPER_ETA, "ABSLD's temperature step per epoch (the paper's 0.1); the explorer's replay too",
              (N3, N5), option="eta", to_option=study_eta),)

    def __post_init__(self):
        self.check_distill()
        self.check_temperatures()

    def check_temperatures(self):
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ConfigError(f"method.temperature_schedule={self.temperature_schedule!r} is invalid: one of "
                              f"{', '.join(TEMPERATURE_SCHEDULES)}")
        check_temperature_rule(self.eta, self.tau_min, self.tau_max, "method.")
        if self.temperature_schedule == "table" and self.tau_table_adv is None and self.tau_table_nat is None:
            raise ConfigError("method.temperature_schedule='table' needs method.tau_table_adv and/or "
                              "method.tau_table_nat (one row of class temperatures per epoch)")
        if self.temperature_schedule == "function" and not callable(self.tau_function):
            raise ConfigError("method.temperature_schedule='function' needs method.tau_function, a callable "
                              "f(epoch, risk_adv, risk_nat, tau_adv, tau_nat) -> (tau_adv, tau_nat)")


@register("absld", display="ABSLD", options=ABSLDOptions, needs_teacher=True, order=40)
class ABSLD(Distill):
    def __init__(self, options, num_classes, device, train_config=None):
        super().__init__(options, num_classes, device, train_config)
        self.temps = Temperatures(options, num_classes)

    def update_temperatures(self, stats: EpochStats) -> dict:
        eta = absld_eta(self.options.eta, stats.lr_factor, self.options.eta_follows_lr)
        self.temps.update(stats.epoch, stats.risk_adv, stats.risk_nat, eta)
        return {"tau_adv": self.temps.adv.tolist(), "tau_nat": self.temps.nat.tolist(), "eta": eta}
