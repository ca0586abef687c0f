"""How a study parameter is declared (the ground floor: imports nothing from the package, so that the
core list in params.py and a method's own knobs in its file use the same declaration).

    @dataclass(frozen=True)
    class MyOptions(Options):
        gain: float = 1.0
        STUDY_PARAMS: ClassVar[tuple] = (Param("my_gain", 1.0, "the gain of my method", option="gain"),)

A knob declared on a method's options reaches notebook 03 and `absld sweep` as the study parameter
`my_gain` and sets the option `gain` of every method whose options carry the declaration (inherited
declarations included: ABSLD+HAM gets ABSLD's eta and HAM's knobs)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

N1, N2, N3, N4, N5 = ("01_smoothness_vs_fairness", "02_teacher", "03_students", "04_class_wise_robustness",
                      "05_temperature_explorer")
NOTEBOOKS = (N1, N2, N3, N4, N5)
TRAINING = (N1, N2, N3)              # the notebooks that train
STUDY = (N1, N2, N3, N4)             # every notebook that builds run configs from the shared parameters


@dataclass(frozen=True)
class Param:
    """One study parameter: its name, default and meaning (units in the words), the notebooks whose
    parameters cell shows it, and for a method's knob the option it sets (to_option(value, P) turns
    the value into the option's, P being all the notebook's parameters)."""
    name: str
    default: Any
    help: str
    notebooks: tuple = STUDY
    option: str | None = None
    to_option: Callable[[Any, dict], Any] | None = None

    def option_value(self, P: dict):
        v = P.get(self.name, self.default)
        return self.to_option(v, P) if self.to_option is not None else v


def study_params_of(options_class: type) -> list[Param]:
    """The study knobs declared on an options dataclass and its bases (STUDY_PARAMS), each once."""
    out, seen = [], set()
    for klass in options_class.__mro__:
        for p in klass.__dict__.get("STUDY_PARAMS", ()):
            if p.name not in seen:
                seen.add(p.name)
                out.append(p)
    return out
