"""Shared tiny configurations for the training tests (synthetic data, a 4-wide CNN, CPU)."""
import copy

from absld_core.config import apply_overrides


def _early_steps(method_name):
    """M = 2 (of K = 4) for the methods with early dropping."""
    from absld_core.methods import registry
    return {"ham_early_steps": 2} if "ham_early_steps" in registry.option_names(method_name) else {}


def tiny(name, method_name, out_dir, **over):
    cfg = {
        "name": name, "out_dir": str(out_dir), "progress": False, "seed": 0,
        "precision": "fp32",  # the same numbers on every CPU (auto would pick bf16 on some)
        "data": {"dataset": "synthetic", "val_per_class": 4, "augment": True, "pad": 2,
                 "options": {"num_classes": 4, "train_per_class": 24, "test_per_class": 8, "image_size": 8}},
        "model": {"arch": "small_cnn", "width": 4},
        "attack": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 4, "val_attacks": ["clean", "pgd3"],
                   "test_attacks": ["clean", "pgd5"]},
        "method": {"name": method_name, **_early_steps(method_name)},
        "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05, "schedule": "constant"},
    }
    return apply_overrides(cfg, {k.replace("__", "."): copy.deepcopy(v) for k, v in over.items()})
