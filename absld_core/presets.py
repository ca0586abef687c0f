"""Presets: named sets of study parameter values (presets/<name>.yaml), resolved per notebook.

    spec = load_preset("digits-paper", ["seeds=[0,1]", "03_students.methods=absld"])
    per_nb = resolve_parameters(spec)                    # {notebook: {parameter: value}}
    P = notebook_parameters("digits-paper", "03_students")   # every parameter, as notebook 03 gets it

A preset has `parameters` (shared by every notebook that declares them) and `per_notebook` values,
and may list its `notebooks`. Which names exist, their defaults and meanings: params.py. A value
resolves as: the notebook's own (per_notebook), else the preset's shared one, else the declared
default; `run_root`/`figure_dir` default to runs/<preset> and figures/<preset>. Unknown names and
values that cannot build a training config are refused before any work starts.
"""
from __future__ import annotations

from pathlib import Path

from . import params
from .declare import STUDY
from .checks import ConfigError
from .config import AttackConfig, TrainConfig, apply_overrides, key_values, yaml_load

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("description", "parameters", "per_notebook", "notebooks")


class StudyError(ValueError):
    """A preset or parameter was refused before any work started."""


def known_presets() -> list[str]:
    return sorted(q.stem for q in (ROOT / "presets").glob("*.yaml"))


def _preset_file(preset: str) -> Path | None:
    """The absolute path of a preset given as a .yaml file that exists (None for a name)."""
    p = Path(preset)
    return p.resolve() if p.suffix in (".yaml", ".yml") and p.is_file() else None


def preset_path(preset: str) -> Path:
    found = _preset_file(preset)
    if found is not None:
        return found
    cand = ROOT / "presets" / f"{preset}.yaml"
    if cand.is_file():
        return cand
    raise StudyError(f"unknown preset {preset!r}; known presets: {', '.join(known_presets())} (or a path to a "
                     f"preset .yaml)")


def given_preset(preset: str) -> str:
    """A preset as the plan should read it from any folder: a preset file given by a relative path
    becomes its absolute path (the sweep and the study chdir into --out), a name stays a name."""
    found = _preset_file(preset)
    return preset if found is None else str(found)


def preset_name(preset: str) -> str:
    """How a preset is named in run_root and figure_dir: the file's stem."""
    return preset_path(preset).stem


def load_preset(preset: str, overrides: list[str] | dict | None = None) -> dict:
    """The preset's sections, with `--set` style overrides applied (name=value or notebook.name=value,
    or a dict of the same)."""
    path = preset_path(preset)
    spec = yaml_load(path.read_text(), f"preset {path}") or {}
    if not isinstance(spec, dict):
        raise StudyError(f"preset {path.name} must hold a mapping of sections ({', '.join(SECTIONS)})")
    unknown = set(spec) - set(SECTIONS)
    if unknown:
        raise StudyError(f"preset {path.name}: unknown section(s) {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    for section, kind, example in (("parameters", dict, "parameters: {seeds: [0]}"),
                                   ("per_notebook", dict, "per_notebook: {03_students: {methods: [absld]}}"),
                                   ("notebooks", list, "notebooks: [01_smoothness, 03_students]")):
        if spec.get(section) is not None and not isinstance(spec[section], kind):
            raise StudyError(f"preset {path.name}: {section}: {spec[section]!r} is invalid: a "
                             f"{'mapping' if kind is dict else 'list'}, such as `{example}`")
    for nb, values in (spec.get("per_notebook") or {}).items():
        if values is not None and not isinstance(values, dict):
            raise StudyError(f"preset {path.name}: per_notebook.{nb}: {values!r} is invalid: a mapping of "
                             f"parameters, such as `{nb}: {{seeds: [0]}}`")
    spec = {**spec, "parameters": dict(spec.get("parameters") or {}),
            "per_notebook": {k: dict(v or {}) for k, v in (spec.get("per_notebook") or {}).items()}}
    spec["notebooks"] = list(spec.get("notebooks") or params.NOTEBOOKS)
    items = key_values(overrides, lambda v, item: yaml_load(v, f"override {item!r}"), StudyError,
                       "name=value or notebook.name=value")
    for k, v in items:
        if "." in k:
            nb, k = k.split(".", 1)
            spec["per_notebook"].setdefault(nb, {})[k] = v
        else:
            spec["parameters"][k] = v
    bad = [n for n in spec["notebooks"] + list(spec["per_notebook"]) if n not in params.NOTEBOOKS]
    if bad:
        raise StudyError(f"preset {path.name}: unknown notebook(s) {bad}; known: {', '.join(params.NOTEBOOKS)}")
    spec["name"] = path.stem
    spec["source"] = preset if path.parent == ROOT / "presets" and Path(preset).suffix == "" else str(path)
    return spec


def resolve_parameters(spec: dict, fill_defaults: bool = True) -> dict[str, dict]:
    """Per notebook of the preset, the values of the parameters it declares (fill_defaults: every one,
    else only those the preset sets); refuses names no notebook declares and values that cannot train."""
    declared = params.declared()
    name = spec["name"]
    shared = {"preset": spec.get("source", name), "run_root": f"runs/{name}", "figure_dir": f"figures/{name}",
              **spec["parameters"]}
    unknown = sorted(set(spec["parameters"]) - set(declared))
    if unknown:
        raise StudyError(f"unknown parameter(s) {unknown} in preset {name!r}; the notebooks declare: "
                         f"{', '.join(sorted(declared))}")
    out = {}
    for nb in params.NOTEBOOKS:
        mine = {p.name for p in params.for_notebook(nb)}
        own = spec["per_notebook"].get(nb, {})
        bad = sorted(set(own) - mine)
        if bad:
            raise StudyError(f"notebook {nb} has no parameter(s) {bad}; it declares: {', '.join(sorted(mine))}")
        full = {**params.defaults(), **shared, **own}
        check_training_params(nb, full)
        out[nb] = {k: full[k] for k in mine if fill_defaults or k in shared or k in own}
    return {nb: out[nb] for nb in spec["notebooks"]}


def spec_parameters(spec: dict, notebook: str, changes: dict | None = None) -> dict:
    """Every study parameter as `notebook` gets it under a loaded preset, with `changes` on top."""
    name = spec["name"]
    shared = {"preset": spec["source"], "run_root": f"runs/{name}", "figure_dir": f"figures/{name}",
              **spec["parameters"]}
    P = {**params.defaults(), **shared, **spec["per_notebook"].get(notebook, {}), **(changes or {})}
    check_training_params(notebook, P)
    return P


def notebook_parameters(preset: str, notebook: str, changes: dict | None = None) -> dict:
    """Every study parameter as `notebook` gets it under `preset`, with `changes` (values set in the
    notebook or passed by papermill) applied on top."""
    return spec_parameters(load_preset(preset), notebook, changes)


# ------------------------------------------------------------------------------------ run configs
_INTS = ("seed", "eval_every", "val_per_class", "pad", "steps", "epochs", "batch_size")
_NUMBERS = ("lr", "eps_255", "alpha_255", "eval_alpha_255")


def _check_kinds(P: dict) -> None:
    """The study parameters run_config converts (int(), float(), bool()) have the kind it expects: a
    conversion would read 'ten' as a crash and a quoted 'false' as true."""
    for key in _INTS:
        v = P.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise StudyError(f"parameter {key}={v!r} is invalid: an integer")
    for key in _NUMBERS:
        v = P.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise StudyError(f"parameter {key}={v!r} is invalid: a number")
    if P.get("augment") is not None and not isinstance(P["augment"], bool):
        raise StudyError(f"parameter augment={P['augment']!r} is invalid: true or false")


def run_config(P: dict, name: str, method: dict, **over) -> dict:
    """A training config (dict) from study parameters P; `over` sets nested fields (optim__epochs=3
    for optim.epochs)."""
    d = AttackConfig()  # the one place of the attack defaults
    _check_kinds(P)
    attacks = lambda s: [a.strip() for a in str(s).split(",") if a.strip()]  # noqa: E731
    per255 = lambda key, default: float(P[key]) / 255 if P.get(key) is not None else default  # noqa: E731
    cfg = {
        "name": name, "out_dir": P["run_root"], "seed": int(P.get("seed", 0)), "device": P.get("device", "cpu"),
        "precision": P.get("precision", "auto"), "threads": P.get("threads"), "eval_every": int(P.get("eval_every", 1)),
        "progress": True, "selection": P.get("selection", "validation"),
        "data": {"dataset": P["dataset"], "root": P.get("data_root"), "train_per_class": P.get("train_per_class"),
                 "val_per_class": int(P.get("val_per_class", 20)), "test_per_class": P.get("test_per_class"),
                 "augment": bool(P.get("augment", True)), "pad": int(P.get("pad", 4))},
        "model": {"arch": P.get("arch", "small_cnn"), "width": P.get("width"), "channels": P.get("channels")},
        "attack": {"eps": per255("eps_255", d.eps), "alpha": per255("alpha_255", d.alpha),
                   "steps": int(P.get("steps", d.steps)), "eval_alpha": per255("eval_alpha_255", d.eval_alpha),
                   "val_attacks": attacks(P.get("val_attacks", ",".join(d.val_attacks))),
                   "test_attacks": attacks(P.get("test_attacks", ",".join(d.test_attacks))),
                   "aa_iters": P.get("aa_iters"), "aa_queries": P.get("aa_queries")},
        "method": method,
        "optim": {"epochs": int(P["epochs"]), "batch_size": int(P.get("batch_size", 128)), "lr": float(P.get("lr", 0.1)),
                  "schedule": P.get("lr_schedule", "paper300")},
    }
    return apply_overrides(cfg, {k.replace("__", "."): v for k, v in over.items()})


PGD20_READERS = ("01_smoothness_vs_fairness", "03_students")   # notebooks whose claims read pgd20


def check_training_params(nb: str, P: dict) -> None:
    """Build the training config the notebook would build, so bad values fail before any work."""
    if nb in PGD20_READERS and "test_attacks" in P:
        attacks = P["test_attacks"]
        names = [a.strip() for a in attacks.split(",")] if isinstance(attacks, str) else list(attacks or [])
        if "pgd20" not in names:
            raise StudyError(f"notebook {nb} compares the runs' PGD-20 results: test_attacks must include pgd20 "
                             f"(now: {attacks!r})")
    if nb not in STUDY or "epochs" not in P or "dataset" not in P:
        return
    try:
        TrainConfig.from_dict(run_config(P, "check", {}))
        if P.get("teacher_epochs") is not None:
            TrainConfig.from_dict(run_config({**P, "epochs": P["teacher_epochs"]}, "check", {}))
    except (ConfigError, TypeError, ValueError) as e:
        raise StudyError(f"invalid parameter for notebook {nb}: {e}") from e


# ------------------------------------------------------------------------------------ notebook cells
def expected_cells() -> dict[str, str]:
    """Every notebook's parameters cell with the default preset's values."""
    per_nb = resolve_parameters(load_preset(params.DEFAULT_PRESET), fill_defaults=True)
    return {nb: params.parameter_cell(nb, per_nb[nb]) for nb in params.NOTEBOOKS}


def write_cells(root=None) -> list[str]:
    """Rewrite the parameters cells of notebooks/*.ipynb from the declarations (what changed)."""
    import nbformat
    from pathlib import Path

    root = Path(root) if root else Path(__file__).resolve().parents[1] / "notebooks"
    changed = []
    for nb, src in expected_cells().items():
        path = root / f"{nb}.ipynb"
        book = nbformat.read(path, as_version=4)
        cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
        if cell.source != src:
            cell.source = src
            nbformat.write(book, path)
            changed.append(nb)
    return changed


if __name__ == "__main__":  # python -m absld_core.presets: rewrite the notebooks' parameters cells
    print("rewritten:", ", ".join(write_cells()) or "none (all agree)")
