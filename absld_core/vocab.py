"""The ground floor of names: the evaluation attacks (how they are written and shown). Imports nothing
from the package, so that configs, evaluation, intervals and plots can all read it."""
from __future__ import annotations

import re
from dataclasses import dataclass

AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack: kind in clean/fgsm/pgd/cw/aa, steps, and for aa an optional subset."""
    name: str
    kind: str
    steps: int = 0
    aa_attacks: tuple[str, ...] | None = None


_PATTERNS = [
    (r"clean|natural", lambda m: ("clean", 0)),
    (r"fgsm", lambda m: ("fgsm", 1)),
    (r"pgd(\d+)?", lambda m: ("pgd", int(m.group(1) or 20))),
    (r"cw(\d+)?", lambda m: ("cw", int(m.group(1) or 30))),
]


def parse_attack(spec: str) -> AttackSpec:
    """'clean', 'fgsm', 'pgdN' (default 20), 'cwN' (default 30), 'aa' (standard AutoAttack) or
    'aa:apgd-ce+apgd-t' (a subset of the AutoAttack attacks)."""
    s = str(spec).strip().lower()
    for pat, make in _PATTERNS:
        m = re.fullmatch(pat, s)
        if m:
            kind, steps = make(m)
            if steps < 1 and kind != "clean":
                raise ValueError(f"attack {spec!r}: the number of steps must be >= 1")
            return AttackSpec(s, kind, steps)
    if s == "aa":
        return AttackSpec(s, "aa")
    if s.startswith("aa:"):
        subset = tuple(a for a in s[3:].split("+") if a)
        bad = [a for a in subset if a not in AA_ATTACKS]
        if bad or not subset:
            raise ValueError(f"attack {spec!r}: unknown AutoAttack part(s) {bad or '(none given)'}; "
                             f"allowed: {', '.join(AA_ATTACKS)}")
        return AttackSpec(s, "aa", 0, subset)
    raise ValueError(f"unknown attack {spec!r}; allowed: clean, fgsm, pgdN (e.g. pgd20), cwN (e.g. cw30), "
                     f"aa, aa:<{'+'.join(AA_ATTACKS[:2])}...>")


def attack_label(attack: str) -> str:
    """'pgd20' -> 'PGD-20', 'cw30' -> 'CW-30', 'aa:apgd-ce+apgd-t' -> 'AA (apgd-ce+apgd-t)'."""
    a = str(attack)
    m = re.fullmatch(r"(pgd|cw)(\d+)", a)
    if m:
        return f"{m.group(1).upper()}-{m.group(2)}"
    if a.startswith("aa:"):
        return f"AA ({a[3:]})"
    return {"aa": "AutoAttack", "clean": "clean", "fgsm": "FGSM"}.get(a, a)
