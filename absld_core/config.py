"""Training configuration: one frozen dataclass per concern, built from a dict or YAML, validated.

    cfg = TrainConfig.from_dict({"name": "my-run", "method": {"name": NAME, "teacher": {...}, **options}, ...})
    cfg = load_config("presets/x.yaml", overrides=["optim.lr=0.05", "method.eta=0.2"])

Every invalid value raises ConfigError naming the field, the value and what is allowed.
"""
from __future__ import annotations

import copy
import warnings
import dataclasses
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .checks import ConfigError, check_int, check_range, check_temperature_rule, invalid  # noqa: F401
from .methods import registry
from .schedule import collapsed_decays
from .vocab import parse_attack

LR_SCHEDULES = ("paper300", "ham120", "milestones", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
SELECTIONS = ("validation", "test")
MAX_LR = 10.0                  # a larger SGD learning rate is a typo, not an experiment
# fields that cannot change a run's results: a resume may differ in these, and reuse ignores them
VOLATILE_FIELDS = ("resume", "overwrite", "progress", "stop_after", "name", "out_dir", "resolved", "trackers")
# fields that change only the final evaluation, never a weight: a finished run that differs from a
# config only in these is evaluated again (engine.reevaluate), not trained again
EVALUATION_FIELDS = ("attack.test_attacks", "attack.aa_iters", "attack.aa_queries", "final_checkpoint")


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: 1e-3 and 5E4 are floats (YAML 1.2), not strings (YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))

# a radius as people write it: 8/255 (a fraction of two plain numbers) is the float it names
_FRACTION = "tag:absld,2026:fraction"
_Loader.add_implicit_resolver(_FRACTION, re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?/[0-9]+(?:\.[0-9]*)?$"),
                              list("-+0123456789"))


def _fraction(loader, node):
    num, den = loader.construct_scalar(node).split("/")
    if float(den) == 0:
        raise ConfigError(f"{node.value!r} divides by zero")
    return float(num) / float(den)


_Loader.add_constructor(_FRACTION, _fraction)


def yaml_load(text: str, origin: str = "YAML"):
    """Parse YAML text (a config file, a preset, a --set value); a syntax error names where it is."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{origin} is not valid YAML{at}: {problem}") from None


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    root: str | None = None
    val_per_class: int = 20            # class-balanced validation split held out of the training set
    train_per_class: int | None = None  # keep only this many training images per class (CPU runs)
    test_per_class: int | None = None   # final evaluation on a class-balanced test subset (None: all)
    augment: bool = True                # random crop (pad 4) + horizontal flip
    pad: int = 4
    split_seed: int = 0
    options: dict = field(default_factory=dict)  # passed to load_dataset

    def __post_init__(self):
        if not isinstance(self.options, dict):
            raise _not_a_section("data.options", self.options, "image_size: 8")
        from .data import KNOWN

        if self.dataset not in KNOWN:
            raise invalid("data.dataset", self.dataset, f"known datasets: {', '.join(KNOWN)}")
        check_int("data.val_per_class", self.val_per_class, 0)
        for n in ("train_per_class", "test_per_class"):
            if getattr(self, n) is not None:
                check_int(f"data.{n}", getattr(self, n))
        check_int("data.pad", self.pad, 0)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "small_cnn"
    width: int | None = None
    channels: int | None = None          # resnet18 / preact_resnet18: first-stage channels (None: 64, the papers')
    depth: int = 34
    mean: tuple | None = None
    std: tuple | None = None
    init_checkpoint: str | None = None   # start from these weights (fine-tuning); ignored on resume
    norm: str = "batch"                  # small_cnn: 'batch' or 'none'

    def __post_init__(self):
        from .models import MODELS

        if self.arch not in MODELS:
            raise invalid("model.arch", self.arch, f"known models: {', '.join(MODELS)}")
        if self.norm not in ("batch", "none") or (self.norm == "none" and self.arch != "small_cnn"):
            raise invalid("model.norm", self.norm, "'batch', or 'none' for small_cnn")
        if self.width is not None:
            check_int("model.width", self.width)
        if self.channels is not None:
            from .models import RESNETS
            check_int("model.channels", self.channels)
            if self.arch not in RESNETS:
                raise invalid("model.channels", self.channels, f"null for {self.arch} (channels sets the size of "
                              f"{' and '.join(RESNETS)}; {self.arch}'s is set by model.width)")
        check_int("model.depth", self.depth)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, tuple) or not all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) for t in v)):
                raise invalid(f"model.{name}", v, "a list of numbers, one per input channel, or null")


@dataclass(frozen=True)
class AttackConfig:
    """The training attack (eps, alpha, steps) and the evaluation attacks."""
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    eval_alpha: float = 0.003          # PGD-20 step of the ABSLD/RSLAD evaluation (HAM: eps/4)
    kl_init_std: float = 0.001         # Gaussian start of the PGD-KL / TRADES attacks (0: start at x)
    val_attacks: tuple = ("clean", "pgd10")
    test_attacks: tuple = ("clean", "fgsm", "pgd20", "cw30")
    amp_dtype: str | None = None       # training attacks: None follows the training precision; 'fp32' or 'bf16'
                                       # (evaluation attacks are always fp32)
    aa_iters: int | None = None        # AutoAttack iterations in evaluation (None: the standard 100)
    aa_queries: int | None = None      # AutoAttack's Square queries in evaluation (None: the standard 5000)

    def __post_init__(self):
        check_range("attack.eps", self.eps, 0, 1, lo_open=True)
        check_range("attack.alpha", self.alpha, 0, 1, lo_open=True)
        check_range("attack.eval_alpha", self.eval_alpha, 0, 1, lo_open=True)
        check_int("attack.steps", self.steps, 1)
        check_range("attack.kl_init_std", self.kl_init_std, 0, 1)
        for name in ("val_attacks", "test_attacks"):
            if not isinstance(getattr(self, name), tuple) or not getattr(self, name):
                raise invalid(f"attack.{name}", getattr(self, name), "a non-empty list of attacks such as "
                                                                     "clean,pgd20 (the run evaluates with them)")
            for a in getattr(self, name):
                try:
                    parse_attack(a)
                except ValueError as e:
                    raise ConfigError(f"attack.{name}: {e}") from e
        if self.aa_iters is not None:
            check_int("attack.aa_iters", self.aa_iters)
        if self.aa_queries is not None:
            check_int("attack.aa_queries", self.aa_queries)
        if self.amp_dtype not in (None, "fp32", "bf16"):
            raise invalid("attack.amp_dtype", self.amp_dtype, "null (as the training precision), 'fp32' or 'bf16'")

    def aa_options(self) -> dict | None:
        """AutoAttack's options for the final evaluation (evaluate's aa_opts): None for the standard ones."""
        return {k: v for k, v in (("n_iter", self.aa_iters), ("n_queries", self.aa_queries)) if v} or None


TEACHER_CHECKPOINTS = ("fair_best", "best", "last", "averaged")


@dataclass(frozen=True)
class TeacherConfig:
    checkpoint: str | None = None   # a checkpoint file, or a run directory (its fair_best/last checkpoint)
    arch: str | None = None         # needed for external state dicts that record no architecture
    width: int | None = None
    depth: int | None = None
    which: str = "fair_best"        # checkpoint of a run directory: fair_best, best, last or averaged

    def __post_init__(self):
        if self.which not in TEACHER_CHECKPOINTS:
            raise invalid("method.teacher.which", self.which, f"one of {', '.join(TEACHER_CHECKPOINTS)}")
        for name in ("width", "depth"):
            if getattr(self, name) is not None:
                check_int(f"method.teacher.{name}", getattr(self, name), 1)


@dataclass(frozen=True)
class MethodConfig:
    """The training method: its registered name, its teacher when it distils, and its own options.

    In YAML/JSON the options sit beside name and teacher (`method: {name: absld, eta: 0.1}`); here they
    are the method's option dataclass (methods/<file>.py declares it), built and validated by it."""
    name: str | None = None                  # None: the registry's default method (PGD-AT)
    teacher: TeacherConfig | None = None
    options: Any = None                      # the method's option dataclass (None: its defaults)

    def __post_init__(self):
        if self.name is None:
            object.__setattr__(self, "name", registry.default_name())
        try:
            cls = registry.get(self.name)
        except registry.UnknownMethodError as e:
            raise ConfigError(str(e)) from None
        if self.options is None:
            object.__setattr__(self, "options", cls.options_class())
        elif not isinstance(self.options, cls.options_class):
            raise ConfigError(f"method.options for {self.name!r} must be {cls.options_class.__name__}, "
                              f"got {type(self.options).__name__}")
        if cls.needs_teacher and (self.teacher is None or self.teacher.checkpoint is None):
            raise ConfigError(f"method.name={self.name!r} distils from a teacher: set method.teacher.checkpoint "
                              f"to a teacher checkpoint or run directory")

    @classmethod
    def from_dict(cls, d: dict) -> "MethodConfig":
        """{name, teacher, **options}, as under `method:` in a config."""
        return _build_method(d, "method.")

    @property
    def method_class(self) -> type:
        return registry.get(self.name)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    schedule: str = "paper300"     # paper300: x0.1 at 215/260/285 of 300, scaled to `epochs`;
                                   # ham120: /10, /100, /200 at 50%, 75%, 91.7% (HAM's 60/90/110
                                   # of 120, scaled); milestones; constant
    milestones: tuple = ()         # schedule='milestones': epochs after which lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0

    def __post_init__(self):
        check_int("optim.epochs", self.epochs)
        check_int("optim.batch_size", self.batch_size)
        check_range("optim.lr", self.lr, 0, MAX_LR, lo_open=True)
        check_range("optim.momentum", self.momentum, 0, 1, hi_open=True)
        check_range("optim.weight_decay", self.weight_decay, 0, 1, hi_open=True)
        check_range("optim.gamma", self.gamma, 0, 1, lo_open=True)
        if self.schedule not in LR_SCHEDULES:
            raise invalid("optim.schedule", self.schedule, f"one of {', '.join(LR_SCHEDULES)}")
        for m in self.milestones:
            if isinstance(m, bool) or not isinstance(m, int) or not (1 <= m < self.epochs):
                raise ConfigError(f"optim.milestones={list(self.milestones)} is invalid: milestone {m!r} must be "
                                  f"an integer in [1, {self.epochs - 1}] (before the last epoch)")
        if list(self.milestones) != sorted(set(self.milestones)):
            raise invalid("optim.milestones", list(self.milestones), "increasing epochs without repeats")
        check_int("optim.warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise invalid("optim.warmup_epochs", self.warmup_epochs, f"fewer than optim.epochs={self.epochs}")
        for e, k, f in collapsed_decays(self):
            warnings.warn(f"optim.schedule={self.schedule} over {self.epochs} epoch(s) applies {k} of its lr decays "
                          f"at once from epoch {e} (lr x{f:.3g} there): its milestones need more epochs; give "
                          f"optim.epochs more, or schedule: milestones", ScheduleWarning, stacklevel=3)


class ScheduleWarning(UserWarning):
    """A schedule whose decays a short run puts onto the same epoch."""


@dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"        # auto: bf16 where the device has it natively, else fp32; or fp32, bf16
    channels_last: bool | None = None   # None: on when training in bf16
    compile: bool = False
    threads: int | None = None     # intra-op CPU threads while training (None: as torch is set); bf16 on a CPU
                                   # gives other weights with another count, so a study fixes it
    eval_every: int = 1            # class-wise validation evaluation every N epochs (and at the end) ...
    eval_every_epoch_after_decay: bool = True   # ... and every epoch from the first lr decay on (the releases)
    selection: str = "validation"  # checkpoints selected on the validation split; 'test': on the test set
                                   # (the releases' protocol; every table of such a run says so)
    max_loss: float = 1e4          # a training loss above this (or NaN/inf) stops the run as diverged
    final_checkpoint: str = "fair_best"   # evaluated on the test set: last, best or fair_best
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (resumable, as if interrupted) after this epoch
    progress: bool = True
    trackers: tuple = ("tensorboard",)   # what shows the run while it trains (absld_core/trackers/); () for none
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise invalid("name", self.name, "a non-empty run name without '/'")
        if self.precision not in PRECISIONS:
            raise invalid("precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise invalid("device", self.device, "'cpu', 'cuda' or 'cuda:N'")
        check_int("eval_every", self.eval_every)
        check_int("seed", self.seed, 0)
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise invalid("out_dir", self.out_dir, "a folder path")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite together are refused: --resume continues the run in place, "
                              "--overwrite deletes it and trains again; give one of them")
        if self.threads is not None:
            check_int("threads", self.threads)
        if self.selection not in SELECTIONS:
            raise invalid("selection", self.selection, "'validation' (held-out split, the default) or 'test' "
                                                    "(the releases' protocol)")
        if self.selection == "validation" and self.data.val_per_class == 0:
            raise ConfigError("selection='validation' needs a validation split: set data.val_per_class > 0, "
                              "or selection='test' to select on the test set as the releases do")
        check_range("max_loss", self.max_loss, 0, float("inf"), lo_open=True)
        if self.stop_after is not None:
            check_int("stop_after", self.stop_after)
        if self.final_checkpoint not in ("last", "best", "fair_best"):
            raise invalid("final_checkpoint", self.final_checkpoint, "'last', 'best' or 'fair_best'")
        from . import trackers
        bad = [t for t in self.trackers if t not in trackers.names()]
        if bad or not isinstance(self.trackers, tuple):
            raise invalid("trackers", list(self.trackers) if isinstance(self.trackers, tuple) else self.trackers,
                          f"a list of trackers from {', '.join(trackers.names())}, or [] for none")
        self.method.options.check_config(self)

    # ------------------------------------------------------------ construction and serialisation
    @classmethod
    def from_dict(cls, d: dict | "TrainConfig") -> "TrainConfig":
        if isinstance(d, TrainConfig):
            return d
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a dict or TrainConfig, got {type(d).__name__}")
        # a run's config.json records what the run resolved (classes, sizes, versions): not an input
        resolved = d.get("resolved") if isinstance(d.get("resolved"), dict) else {}
        d = {k: v for k, v in d.items() if k != "resolved"}
        fn = (d.get("method") or {}).get("tau_function") if isinstance(d.get("method"), dict) else None
        if isinstance(fn, str) and fn.startswith("<function"):
            raise ConfigError(f"method.tau_function={fn!r} is the name of a Python function recorded by an "
                              f"earlier run; a YAML/JSON config cannot hold a function: pass the callable "
                              f"through the Python API (train(cfg) with method.tau_function=f)")
        try:
            cfg = _build(cls, d, "")
        except ConfigError as e:
            raise _name_the_method_file(e, d, resolved) from None
        refused = _name_the_method_file(None, d, resolved) if resolved else None
        if refused is not None:
            raise refused
        return cfg

    def to_dict(self, keep_callables: bool = False) -> dict:
        """Nested plain dict (tuples as lists). Callables (a schedule function) become a descriptive
        string unless keep_callables, which keeps them for building a modified copy."""
        def conv(v):
            if isinstance(v, MethodConfig):  # the options sit beside name and teacher, as in YAML
                return {"name": v.name, "teacher": conv(v.teacher), **conv(v.options)}
            if dataclasses.is_dataclass(v):
                return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
            if callable(v):
                return v if keep_callables else f"<function {getattr(v, '__qualname__', repr(v))}>"
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v
        return conv(self)

    def to_json(self) -> dict:
        """to_dict as plain JSON values (what config.json holds), for comparing configs."""
        return json.loads(json.dumps(self.to_dict()))

    def replace(self, **overrides) -> "TrainConfig":
        return TrainConfig.from_dict(apply_overrides(self.to_dict(keep_callables=True), overrides))

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


_NESTED = {"data": DataConfig, "model": ModelConfig, "attack": AttackConfig, "method": MethodConfig,
           "optim": OptimConfig, "teacher": TeacherConfig}


def _plugin_module(module: str | None) -> bool:
    return bool(module) and not str(module).startswith("absld_core.")


def _name_the_method_file(e: ConfigError | None, d: dict, resolved: dict) -> ConfigError | None:
    """A run trained with a method from a file of one's own, read where that file is not loaded: say
    which file defined it (recorded in resolved.method_source) and how to load it. e None: the config
    built; refuse it still when the run's method came from a file of one's own that replaced a built-in
    name and the built-in is what this process has (it would be read as the other method)."""
    name = d.get("method", {}).get("name") if isinstance(d.get("method"), dict) else None
    src = resolved.get("method_source") if isinstance(resolved.get("method_source"), dict) else {}
    if not name or not src.get("file"):
        return e
    hint = (f"this run was trained with method {name!r} defined in {src['file']} (sha256 {src.get('sha256')}), "
            f"which is not loaded: set {registry.PLUGIN_ENV}={src['file']} to read the run")
    if name not in registry.names():
        return ConfigError(hint)
    if e is None and _plugin_module(src.get("module")) and not _plugin_module(registry.get(name).__module__):
        return ConfigError(hint + f" (without it {name!r} is the package's own method)")
    return e


def _build_method(d: dict, prefix: str) -> MethodConfig:
    """method: {name, teacher, **options}: the options are built by the named method's dataclass."""
    d = dict(d)
    name = d.pop("name", None)
    name = registry.default_name() if name is None else name
    try:
        cls = registry.get(name)
    except registry.UnknownMethodError as e:
        raise ConfigError(str(e)) from None
    teacher = d.pop("teacher", None)
    if isinstance(teacher, dict):
        teacher = _build(TeacherConfig, teacher, f"{prefix}teacher.")
    elif teacher is not None and not isinstance(teacher, TeacherConfig):
        raise _not_a_section(f"{prefix}teacher", teacher, "checkpoint: runs/teacher")
    try:
        options = _build(cls.options_class, d, prefix, what=f"the options of method {name!r}")
    except ConfigError as e:
        if "unknown field" in str(e):
            raise ConfigError(f"{e} (name and teacher are allowed for every method)") from None
        raise
    return MethodConfig(name=name, teacher=teacher, options=options)


def _not_a_section(name: str, value, example: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is invalid: it is a section, a mapping of fields such as "
                       f"`{name.rsplit('.', 1)[-1]}: {{{example}}}`")


_SECTION_EXAMPLES = {"data": "dataset: digits", "model": "arch: small_cnn", "attack": "eps: 0.031",
                     "method": "name: absld", "optim": "epochs: 10", "teacher": "checkpoint: runs/teacher",
                     "options": "image_size: 8"}


def _build(cls, d: dict, prefix: str, what: str | None = None):
    if not isinstance(d, dict):
        raise _not_a_section(prefix.rstrip(".") or "config", d, _SECTION_EXAMPLES.get(prefix.rstrip(".").rsplit(".", 1)[-1], "..."))
    if cls is MethodConfig:
        return _build_method(d, prefix)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(prefix + u for u in unknown)}; allowed in "
                          f"{what or prefix.rstrip('.') or 'the top level'}: {', '.join(known) or 'none'}")
    kw = {}
    for k, v in d.items():
        if k in _NESTED and isinstance(v, dict):
            v = _build(_NESTED[k], v, f"{prefix}{k}.")
        elif k in _NESTED and v is not None and not isinstance(v, _NESTED[k]):
            raise _not_a_section(f"{prefix}{k}", v, _SECTION_EXAMPLES[k])
        elif str(known[k].type) in ("bool", "bool | None") and not isinstance(v, bool) and not (
                v is None and str(known[k].type) == "bool | None"):
            raise invalid(f"{prefix}{k}", v, "must be true or false (unquoted; a quoted 'false', 0/1 or 'no' is "
                                             "not a boolean)" + (", or null" if "None" in str(known[k].type) else ""))
        elif isinstance(v, str) and str(known[k].type).startswith("tuple"):
            # a comma list as people type it on a command line: clean,pgd5 or 215,260,285
            v = tuple(yaml_load(t.strip(), f"{prefix}{k}") for t in v.split(",") if t.strip())
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def _parse_value(text: str):
    try:
        return yaml_load(text)
    except ConfigError:
        return text


def key_values(overrides: dict | list[str] | None, parse, error: type, form: str) -> list[tuple[str, Any]]:
    """(key, value) pairs from a dict or from 'key=value' strings (value = parse(text, whole item));
    a string without '=' raises error naming the expected form."""
    if isinstance(overrides, dict):
        return list(overrides.items())
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise error(f"override {item!r} must look like {form}")
        k, v = item.split("=", 1)
        out.append((k.strip(), parse(v, item)))
    return out


def apply_overrides(d: dict, overrides: dict | list[str] | None) -> dict:
    """Apply {'optim.lr': 0.05} or ['optim.lr=0.05'] to a nested dict (a deep copy is returned)."""
    d = copy.deepcopy(d)
    if not overrides:
        return d
    items = key_values(overrides, lambda v, _: _parse_value(v), ConfigError, "key.sub=value")
    for key, value in items:
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
            node = node[p]
        node[parts[-1]] = value
    return d


def load_config(path: str | Path | dict, overrides=None) -> TrainConfig:
    """Read a YAML/JSON training config (or take a dict) and apply key=value overrides."""
    if isinstance(path, dict):
        raw = path
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        raw = yaml_load(p.read_text(), f"config file {p}") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of fields, got {type(raw).__name__}")
    return TrainConfig.from_dict(apply_overrides(raw, overrides))


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts (the top-level VOLATILE_FIELDS
    ignored)."""
    out = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in VOLATILE_FIELDS:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(prefix + k)
    return out


def normalised(saved: dict) -> dict:
    """A saved config.json read through the current dataclasses, as plain JSON values, so that fields
    added to the package since (at their defaults) do not count as changes."""
    raw = {k: v for k, v in saved.items() if k != "resolved"}
    try:
        return TrainConfig.from_dict(raw).to_json()
    except (ConfigError, TypeError, ValueError):
        return raw
