"""absld_core: adversarial robust fairness (ABSLD, RSLAD, HAM) with class-wise evaluation.

    from absld_core import train, evaluate, attacks
    from absld_core.data import load_dataset
    from absld_core.models import build_model
"""
__version__ = "0.1.0"


def __getattr__(name):  # light import: torch-heavy modules load on first use
    if name == "train":
        from .engine import train
        return train
    if name == "evaluate":
        from .evaluate import evaluate
        return evaluate
    raise AttributeError(f"module 'absld_core' has no attribute {name!r}")


__all__ = ["train", "evaluate", "attacks", "__version__"]
