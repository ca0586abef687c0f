"""The study's parameters: one declaration each, with its default, its unit and its meaning (the reason
on the line). Presets (presets/<name>.yaml) set values of these names; the notebooks' parameters cells
are written from this list with the default preset's values (`python -m absld_core.presets`
rewrites them; a test checks that they agree); `absld study`, `absld sweep` and a notebook opened by hand all
resolve the same names the same way (presets.py).

A method's own study knobs are declared in its file, on its options dataclass (STUDY_PARAMS, see
methods/ham.py), and reach notebook 03 and the sweep from there: adding one touches only that file and
the presets that set it.
"""
from __future__ import annotations

from .declare import TRAINING, N1, N2, N3, N4, N5, NOTEBOOKS, Param, study_params_of

DEFAULT_PRESET = "smoke"


CORE = (
    Param("preset", DEFAULT_PRESET, "the preset whose values this notebook takes (a name or a preset .yaml)", NOTEBOOKS),
    Param("run_root", f"runs/{DEFAULT_PRESET}", "run directories of this study (runs/<preset>)", NOTEBOOKS),
    Param("figure_dir", f"figures/{DEFAULT_PRESET}", "where figures and the summary go (figures/<preset>)", NOTEBOOKS),
    Param("retrain", False, "True: train again a finished run whose training configuration changed (else: stop and say which)",
          TRAINING + (N5,)),
    Param("dataset", "digits", "digits (offline default), imagefolder, cifar10, cifar100, svhn"),
    Param("data_root", None, "dataset folder or archive (not needed for digits)"),
    Param("train_per_class", None, "keep this many training images per class (None: all)"),
    Param("val_per_class", 15, "held out for checkpoint selection and for ranking classes"),
    Param("test_per_class", None, "class-balanced test subset for the final tables (None: all)"),
    Param("augment", True, "random crop (padding `pad`) and horizontal flip while training"),
    Param("pad", 1, "random-crop padding in pixels (4 on 32x32 images; 1 on 8x8 digits)"),
    Param("arch", "small_cnn", "student architecture: small_cnn, resnet18, preact_resnet18, mobilenet_v2, wrn"),
    Param("width", 16, "student width (small_cnn channels; WRN widen factor; not resnet18's: see channels)"),
    Param("channels", None, "resnet18 / preact_resnet18 first-stage channels (None: 64, the papers')"),
    Param("epochs", 10, "training epochs of every student"),
    Param("batch_size", 64, "training batch size"),
    Param("lr", 0.05, "SGD learning rate"),
    Param("lr_schedule", "paper300", "paper300: x0.1 at 215/260/285 of 300, scaled to `epochs`; ham120; constant"),
    Param("eps_255", 16, "L-inf radius in units of 1/255 (8 on CIFAR-10)"),
    Param("alpha_255", 4, "training attack step in units of 1/255"),
    Param("steps", 5, "training attack steps (K)"),
    Param("eval_alpha_255", 4, "PGD/CW evaluation step in units of 1/255 (0.765 is 0.003, the step of the releases)"),
    Param("val_attacks", "clean,pgd10", "validation attacks (checkpoint selection; the last one scores)"),
    Param("test_attacks", "clean,fgsm,pgd20,cw30", "final evaluation attacks (changing them re-evaluates, never retrains)"),
    Param("aa_iters", None, "AutoAttack iterations when test_attacks names aa (None: 100)"),
    Param("aa_queries", None, "AutoAttack's Square queries (None: 5000)"),
    Param("device", "cpu", "cpu, cuda or cuda:N", NOTEBOOKS),
    Param("precision", "auto", "auto: bf16 where the CPU/GPU has it natively, else fp32; or fp32, bf16"),
    Param("threads", 1, "intra-op CPU threads of every training (bf16 on a CPU gives other weights with another "
                        "count; the sweep runs cores/threads workers)"),
    Param("seeds", [0], "every training runs once per seed (runs in run_root/s<seed>/)", NOTEBOOKS),
    Param("test_folds", None, "digits: k-fold test split, the seed's position picks the fold (None: fixed split)"),
    Param("eval_every", 1, "validation every N epochs (and every epoch after the first lr decay)"),
    Param("selection", "validation", "checkpoints selected on the validation split; \"test\": the releases' protocol"),
    # notebook 01
    Param("reference_epochs", 10, "epochs of the reference PGD-AT run that says which classes are hard", (N1,)),
    Param("n_hard", 3, "how many classes count as hard (the reference run's highest validation error)", (N1,)),
    Param("tau_sharp", 0.7, "DSD teacher temperature of the hardest class (sharper label)", (N1,)),
    Param("tau_smooth", 1.5, "... and of the easiest class (smoother label)", (N1,)),
    Param("ls_sharp", 0.0, "DSD label smoothing of the hardest class", (N1,)),
    Param("ls_smooth", 0.4, "... and of the easiest class", (N1,)),
    # notebook 02
    Param("teacher_method", None, "the teacher's method: trades, pgd_at or natural (None: the default method, PGD-AT)",
          (N2,)),
    Param("teacher_arch", "small_cnn", "teacher architecture", (N2,)),
    Param("teacher_width", 32, "teacher width", (N2,)),
    Param("teacher_channels", None, "teacher first-stage channels when it is a resnet18 (None: 64)", (N2,)),
    Param("teacher_epochs", 12, "teacher training epochs", (N2,)),
    Param("teacher_checkpoint", None, "a checkpoint file to distil from instead of training one (e.g. a TRADES "
                                      "WRN-34-10 state dict)", (N2, N3, N4)),
    # notebooks 03 and 04
    Param("methods", "all", "comma list of registered methods, or all: the registry's student methods", (N3, N4)),
    Param("eta_for_300_epochs", False, "True: ABSLD's eta scaled so its temperatures travel as far as in 300 "
                                       "epochs at eta (about x300/epochs)", (N3, N4)),
    Param("compare_eta_scaling", False, "True: also ABSLD with eta_for_300_epochs (run student-absld-eta-scaled)",
          (N3, N4)),
    Param("ham_paper_schedule", False, "HAM alone on its paper's schedule: 120 epochs (lr /10, /100, /200 at 60, "
                                       "90, 110), warm-up 50", (N3, N4)),
    # notebook 05
    Param("run", None, "the ABSLD run to explore (None: the study's ABSLD student of the first seed)", (N5,)),
    Param("interactive", True, "sliders in JupyterLab (`absld study` runs it without them and saves the figures)", (N5,)),
    Param("use_recorded_settings", True, "start from the run's own eta, bounds and decay epochs (then the five "
                                         "below are not used)", (N5,)),
    Param("tau_min", 0.5, "replay: lower temperature bound", (N5,)),
    Param("tau_max", 5.0, "replay: upper temperature bound", (N5,)),
    Param("tau_init_adv", 1.0, "replay: initial adversarial temperature", (N5,)),
    Param("tau_init_nat", 1.0, "replay: initial clean temperature", (N5,)),
    Param("decay_epochs", "", "replay: comma list of epochs after which eta is multiplied by 0.1 (empty: none)", (N5,)),
    Param("coupled", False, "replay: the released script's coupled temperatures", (N5,)),
    Param("show_epoch", -1, "soft labels at this epoch (-1: the last)", (N5,)),
    Param("finetune_epochs", 0, "> 0: run the short fine-tune (what the button does) without a human", (N5,)),
)


def method_params() -> list[tuple[str, Param]]:
    """(method name, Param) for every study knob the registered methods declare (their options'
    STUDY_PARAMS, inherited ones included)."""
    from .methods import registry

    return [(name, p) for name in registry.names() for p in study_params_of(registry.get(name).options_class)]


class ParamError(ValueError):
    """Two declarations of one parameter disagree."""


def declared() -> dict[str, Param]:
    """Every study parameter by name: the core ones, then the methods' (a knob that several methods
    share, such as HAM's for HAM and ABSLD+HAM, is declared once, on the options they share)."""
    out = {p.name: p for p in CORE}
    for method, p in method_params():
        if p.name in out and out[p.name] != p:
            raise ParamError(f"study parameter {p.name!r} of method {method!r} is declared differently elsewhere "
                             f"({'core' if p.name in {c.name for c in CORE} else 'another method'}); give it "
                             f"another name")
        out[p.name] = p
    return out


def for_notebook(nb: str) -> list[Param]:
    """The parameters a notebook declares (its parameters cell, and what papermill may pass it)."""
    return [p for p in declared().values() if nb in p.notebooks]


def defaults() -> dict:
    return {name: p.default for name, p in declared().items()}


def method_options(method: str, P: dict) -> dict:
    """The options a method's study knobs set under parameters P ({option: value})."""
    from .methods import registry

    return {p.option: p.option_value(P) for p in study_params_of(registry.get(method).options_class)
            if p.option is not None}


# ------------------------------------------------------------------------------------ notebook cells
def parameter_cell(nb: str, values: dict) -> str:
    """The source of a notebook's parameters cell: one line per parameter, its value and its meaning."""
    lines = []
    for p in for_notebook(nb):
        lhs = f"{p.name} = {values.get(p.name, p.default)!r}"
        lines.append(f"{lhs:<32} # {p.help}" if len(lhs) < 32 else f"{lhs}  # {p.help}")
    return "\n".join(lines)
