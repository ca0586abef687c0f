"""How tables, figures and sentences name a run label: the method's display name from the registry
(PGD-AT, TRADES, RSLAD, ABSLD, HAM, ABSLD+HAM, FRL, CFA, FAT), ABSLD's eta-scaled twin, and any other
label ("teacher", "DSD (temperature)") as it is. The tidy CSVs keep the ids."""
from __future__ import annotations

import pandas as pd

ETA_SCALED = "absld_eta_scaled"  # the label of notebook 03's compare_eta_scaling run (student-absld-eta-scaled)


def display(label) -> str:
    from .methods import registry

    label = str(label)
    return "ABSLD (eta scaled)" if label == ETA_SCALED else registry.display_name(label)


def displayed(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its index (run labels) in display names."""
    return table.rename(index=display)
