"""The ground floor of validation: the project's error for a refused value and the small checks that
configs, method options and study parameters share. Imports nothing from the package."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field, the value and what is allowed."""


class InputError(ValueError):
    """A tensor or argument given to the library (evaluate, the attacks, build_model) that it cannot
    take; the message says what was found and what is expected."""


def invalid(field_name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{field_name}={value!r} is invalid: {allowed}")


def check_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise invalid(name, v, f"must be an integer >= {minimum}")


def check_bool(name, v):
    """A boolean is YAML's true or false; a quoted "false", 0/1 or 'no' is refused, not read as truthy."""
    if not isinstance(v, bool):
        raise invalid(name, v, "must be true or false")


def check_range(name, v, lo, hi, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise invalid(name, v, "must be a number")
    if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
        raise invalid(name, v, f"must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def check_temperature_rule(eta, tau_min, tau_max, prefix: str = "") -> None:
    """The settings of ABSLD's temperature rule, as both the engine (method options) and the explorer's
    replay (ReplaySettings) accept them: 0 < tau_min < tau_max and eta >= 0."""
    check_range(f"{prefix}tau_min", tau_min, 0, float("inf"), lo_open=True)
    if not tau_min < tau_max:
        raise ConfigError(f"{prefix}tau_min={tau_min} and {prefix}tau_max={tau_max} are inverted: "
                          f"need 0 < tau_min < tau_max")
    check_range(f"{prefix}eta", eta, 0, float("inf"))


def check_device(name: str):
    """The torch device for `name`, refused with a message when this machine does not have it."""
    import torch

    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"device={name!r} is invalid: 'cpu', 'cuda' or 'cuda:N'")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device={name!r} but this machine has no CUDA device ({why}); use device=cpu")
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ConfigError(f"device={name!r} is invalid ({e})") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    return torch.device("cpu")
