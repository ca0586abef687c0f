"""The study: notebooks executed in order with papermill, per preset.

    absld study --preset smoke          # notebooks -> runs/smoke/, figures -> figures/smoke/

A preset (presets/<name>.yaml) holds `parameters` shared by every notebook (each takes the ones its
`parameters` cell declares) and optional `per_notebook` values. Invalid preset names and unknown
parameters are refused before anything runs. A notebook is skipped when its source, its parameters,
the package code and everything upstream are unchanged since its last successful run; otherwise
the runner says why it reruns. A failing notebook stops the batch with its failing cell's error and
keeps every finished output. Executed notebooks are written to a temporary copy and moved into place
only when they finish, and the state records a notebook as running until then, so a study that is
killed never leaves an unfinished copy that a later run would take as done. Kernels talk to the
runner over local IPC sockets, not TCP.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .config import yaml_load
from .runs import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_smoothness_vs_fairness", "02_teacher", "03_students", "04_class_wise_robustness",
             "05_temperature_explorer")
KERNEL = "absld"


class StudyError(ValueError):
    """A preset or parameter was refused before any work started."""


# ------------------------------------------------------------------------------------ parameters
PARAM_NAMES = ("preset", "run_root", "figure_dir", "dataset", "data_root", "train_per_class", "val_per_class",
               "test_per_class", "augment", "pad", "arch", "width", "teacher_arch", "teacher_width", "epochs",
               "teacher_epochs", "teacher_method", "teacher_checkpoint", "batch_size", "lr", "lr_schedule",
               "eps_255", "alpha_255", "steps", "eval_alpha_255", "test_attacks", "val_attacks", "device", "seed",
               "seeds", "test_folds", "eval_every", "precision", "aa_iters", "aa_queries", "selection",
               # notebook 01
               "reference_epochs", "n_hard", "tau_sharp", "tau_smooth", "ls_sharp", "ls_smooth",
               # notebook 02
               "teacher_method", "teacher_arch", "teacher_width", "teacher_epochs", "teacher_checkpoint",
               # notebook 03 (and 04)
               "methods", "ham_start_fraction", "ham_early_steps", "eta", "eta_for_300_epochs", "compare_eta_scaling",
               "trades_beta",
               "ham_paper_schedule")


def base_config(p: dict, name: str, method: dict, **over) -> dict:
    """A training config (dict) from notebook parameters; shared by every notebook. `over` sets
    nested fields, `optim__epochs=3` for optim.epochs."""
    from .config import apply_overrides

    from .config import AttackConfig

    d = AttackConfig()  # the one place of the attack defaults
    attacks = lambda s: [a.strip() for a in str(s).split(",") if a.strip()]  # noqa: E731
    per255 = lambda key, default: float(p[key]) / 255 if p.get(key) is not None else default  # noqa: E731
    cfg = {
        "name": name, "out_dir": p["run_root"], "seed": int(p.get("seed", 0)), "device": p.get("device", "cpu"),
        "precision": p.get("precision", "auto"), "eval_every": int(p.get("eval_every", 1)), "progress": True,
        "selection": p.get("selection", "validation"),
        "data": {"dataset": p["dataset"], "root": p.get("data_root"), "train_per_class": p.get("train_per_class"),
                 "val_per_class": int(p.get("val_per_class", 20)), "test_per_class": p.get("test_per_class"),
                 "augment": bool(p.get("augment", True)), "pad": int(p.get("pad", 4))},
        "model": {"arch": p.get("arch", "small_cnn"), "width": p.get("width")},
        "attack": {"eps": per255("eps_255", d.eps), "alpha": per255("alpha_255", d.alpha),
                   "steps": int(p.get("steps", d.steps)), "eval_alpha": per255("eval_alpha_255", d.eval_alpha),
                   "val_attacks": attacks(p.get("val_attacks", ",".join(d.val_attacks))),
                   "test_attacks": attacks(p.get("test_attacks", ",".join(d.test_attacks))),
                   "aa_iters": p.get("aa_iters"), "aa_queries": p.get("aa_queries")},
        "method": method,
        "optim": {"epochs": int(p["epochs"]), "batch_size": int(p.get("batch_size", 128)), "lr": float(p.get("lr", 0.1)),
                  "schedule": p.get("lr_schedule", "paper300")},
    }
    return apply_overrides(cfg, {k.replace("__", "."): v for k, v in over.items()})


def params_from(namespace: dict, extra: tuple = ()) -> dict:
    """The notebook's parameters, picked out of its global namespace."""
    return {k: namespace[k] for k in PARAM_NAMES + tuple(extra) if k in namespace}


def notebook_setup(namespace: dict) -> dict:
    """A notebook's first code: relative paths (run_root, figure_dir, teachers) mean the same folder in
    JupyterLab as under `absld study`: a kernel started in the repository's notebooks/ folder (or in a
    notebooks/ folder beside a study's runs/) moves to its parent, where `make study` writes runs/ and
    figures/ (papermill already starts in the study's root). Makes figure_dir, sets table display, returns the notebook's parameters."""
    import pandas as pd

    here = Path.cwd().resolve()
    if here.name == "notebooks" and (here == (ROOT / "notebooks").resolve() or (here.parent / "runs").is_dir()):
        os.chdir(here.parent)  # the repository (or a study's --out folder holding runs/)
    pd.set_option("display.precision", 2)
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)
    if namespace.get("figure_dir"):
        Path(namespace["figure_dir"]).mkdir(parents=True, exist_ok=True)
    return params_from(namespace)


def require_runs(runs: dict, run_root: str | Path, what: str = "finished runs") -> dict:
    """The runs a reading notebook needs, or a message that says how to make them."""
    if not runs:
        raise StudyError(f"no {what} in {Path(run_root).resolve()}: run notebooks 01-03 first, or `make study` "
                         f"(absld study --preset NAME) for the preset's runs")
    return runs


# ------------------------------------------------------------------------------------ presets
def preset_path(preset: str) -> Path:
    p = Path(preset)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    cand = ROOT / "presets" / f"{preset}.yaml"
    if cand.is_file():
        return cand
    known = sorted(q.stem for q in (ROOT / "presets").glob("*.yaml"))
    raise StudyError(f"unknown preset {preset!r}; known presets: {', '.join(known)} (or a path to a preset .yaml)")


def load_preset(preset: str, overrides: list[str] | None = None) -> dict:
    path = preset_path(preset)
    spec = yaml_load(path.read_text(), f"preset {path}") or {}
    unknown = set(spec) - {"description", "parameters", "per_notebook", "notebooks"}
    if unknown:
        raise StudyError(f"preset {path.name}: unknown section(s) {sorted(unknown)}; allowed: description, "
                         f"parameters, per_notebook, notebooks")
    spec.setdefault("parameters", {})
    spec.setdefault("per_notebook", {})
    spec["notebooks"] = list(spec.get("notebooks", NOTEBOOKS))
    for item in overrides or []:
        if "=" not in item:
            raise StudyError(f"override {item!r} must look like name=value or notebook.name=value")
        k, v = item.split("=", 1)
        if "." in k:
            nb, k = k.split(".", 1)
            spec["per_notebook"].setdefault(nb, {})[k] = yaml_load(v, f"override {item!r}")
        else:
            spec["parameters"][k] = yaml_load(v, f"override {item!r}")
    bad = [n for n in spec["notebooks"] + list(spec["per_notebook"]) if n not in NOTEBOOKS]
    if bad:
        raise StudyError(f"preset {path.name}: unknown notebook(s) {bad}; known: {', '.join(NOTEBOOKS)}")
    spec["name"] = path.stem
    return spec


def _declared(nb_path: Path) -> dict:
    import papermill as pm

    return pm.inspect_notebook(str(nb_path))


def resolve_parameters(spec: dict) -> dict[str, dict]:
    """Per notebook, the parameters it gets; refuses names no notebook declares and wrong types."""
    name = spec["name"]
    shared = {"preset": name, "run_root": str(Path("runs") / name), "figure_dir": str(Path("figures") / name),
              **spec["parameters"]}
    declared = {nb: _declared(ROOT / "notebooks" / f"{nb}.ipynb") for nb in spec["notebooks"]}
    everything = set().union(*[set(d) for d in declared.values()]) if declared else set()
    unknown = sorted(set(spec["parameters"]) - everything)
    if unknown:
        raise StudyError(f"unknown parameter(s) {unknown} in preset {name!r}; the notebooks declare: "
                         f"{', '.join(sorted(everything))}")
    out = {}
    for nb in spec["notebooks"]:
        own = spec["per_notebook"].get(nb, {})
        bad = sorted(set(own) - set(declared[nb]))
        if bad:
            raise StudyError(f"notebook {nb} has no parameter(s) {bad}; it declares: {', '.join(sorted(declared[nb]))}")
        params = {k: v for k, v in shared.items() if k in declared[nb]}
        params.update(own)
        out[nb] = params
        _check_training_params(nb, {**_defaults(declared[nb]), **params})
    return out


def notebook_defaults(nb: str) -> dict:
    """The values of a notebook's parameters cell (what it runs with when nothing is passed)."""
    return _defaults(_declared(ROOT / "notebooks" / f"{nb}.ipynb"))


def _defaults(declared: dict) -> dict:
    import ast

    out = {}
    for k, info in declared.items():
        try:
            out[k] = ast.literal_eval(info.get("default", "None"))
        except (ValueError, SyntaxError):
            out[k] = None
    return out


def _check_training_params(nb: str, p: dict) -> None:
    """Build the training config the notebook would build, so bad values fail before any work."""
    from .config import ConfigError, TrainConfig

    if "epochs" not in p or "dataset" not in p:
        return
    try:
        TrainConfig.from_dict(base_config(p, "check", {}))
        if p.get("teacher_epochs") is not None:
            TrainConfig.from_dict(base_config({**p, "epochs": p["teacher_epochs"]}, "check", {}))
    except (ConfigError, TypeError, ValueError) as e:
        raise StudyError(f"invalid parameter for notebook {nb}: {e}") from e


# ------------------------------------------------------------------------------------ fingerprints
def _package_hash() -> str:
    h = hashlib.sha256()
    for f in sorted((ROOT / "absld_core").rglob("*.py")):
        h.update(f.relative_to(ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _fingerprint(nb_path: Path, params: dict, package: str, upstream: str) -> dict:
    return {"notebook": hashlib.sha256(nb_path.read_bytes()).hexdigest()[:16],
            "parameters": json.loads(json.dumps(params, sort_keys=True, default=str)),
            "package": package, "upstream": upstream}


def rerun_reason(old: dict | None, new: dict, output: Path) -> str | None:
    if not old or old.get("status") != "ok":
        if old and old.get("status") == "running":
            return "the earlier run did not finish (stopped or killed)"
        return "no successful earlier run" if not old else f"the earlier run {old.get('status')}"
    if not output.is_file():
        return "its executed copy is missing"
    was = old.get("fingerprint", {})
    if was.get("notebook") != new["notebook"]:
        return "the notebook changed"
    if was.get("parameters") != new["parameters"]:
        changed = sorted(k for k in set(was.get("parameters", {})) | set(new["parameters"])
                         if was.get("parameters", {}).get(k) != new["parameters"].get(k))
        return f"parameters changed: {', '.join(changed)}"
    if was.get("package") != new["package"]:
        return "the absld_core code changed"
    if was.get("upstream") != new["upstream"]:
        return "an upstream notebook re-ran"
    return None


# ------------------------------------------------------------------------------------ running
def run_study(preset: str = "smoke", overrides: list[str] | None = None, force: bool = False,
              out_root: str | Path = ".", log=print) -> int:
    """Execute the preset's notebooks in order; returns 0 on success, 1 when a notebook failed."""
    import papermill as pm

    out_root = Path(out_root).resolve()
    spec = load_preset(preset, overrides)
    per_nb = resolve_parameters(spec)  # refuses bad input before any work
    name = spec["name"]
    run_root, fig_root = out_root / "runs" / name, out_root / "figures" / name
    (run_root / "notebooks").mkdir(parents=True, exist_ok=True)
    fig_root.mkdir(parents=True, exist_ok=True)
    state_file = run_root / "study_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    package, upstream = _package_hash(), ""
    log(f"study {name!r}: {len(spec['notebooks'])} notebooks -> {run_root}, figures -> {fig_root}")
    for nb in spec["notebooks"]:
        src = ROOT / "notebooks" / f"{nb}.ipynb"
        dst = run_root / "notebooks" / f"{nb}.ipynb"
        fp = _fingerprint(src, per_nb[nb], package, upstream)
        reason = "forced" if force else rerun_reason(state.get(nb), fp, dst)
        upstream = hashlib.sha256((upstream + json.dumps(fp, sort_keys=True)).encode()).hexdigest()[:16]
        if reason is None:
            log(f"  {nb}: unchanged, skipped")
            continue
        log(f"  {nb}: running ({reason})")
        t0 = time.time()
        state[nb] = {"status": "running", "fingerprint": fp, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(state_file, state)  # until it finishes, a later run reruns this notebook
        partial = dst.with_name(f"{nb}.running.ipynb")
        try:
            pm.execute_notebook(str(src), str(partial), parameters=per_nb[nb], kernel_name=KERNEL, cwd=str(out_root),
                                progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                                **_kernel_options())
        except pm.PapermillExecutionError as e:
            os.replace(partial, dst)
            state[nb] = {"status": "failed", "fingerprint": fp, "error": f"{e.ename}: {e.evalue}"}
            write_json_atomic(state_file, state)
            log(f"  {nb}: FAILED in cell {e.exec_count}: {e.ename}: {e.evalue}")
            log(f"  the executed copy with the error is {dst}; finished notebooks and runs are kept")
            return 1
        os.replace(partial, dst)  # the executed copy appears whole, and only when the notebook finished
        state[nb] = {"status": "ok", "fingerprint": fp, "seconds": round(time.time() - t0, 1),
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(state_file, state)
        log(f"  {nb}: done in {time.time() - t0:.0f} s")
    summary = fig_root / "summary.md"
    if summary.is_file():
        log(f"\nsummary ({summary}):\n{summary.read_text()}")
    return 0


def _kernel_options() -> dict:
    """Start the study's kernels on local IPC sockets (POSIX): nothing listens on a TCP port, and
    ipykernel does not print its warning about unencrypted TCP into every notebook's log."""
    if os.name != "posix":
        return {}
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _ipc(self):
            return "ipc"

        @default("ip")
        def _ipc_path(self):  # sockets beside the kernel's connection file, not in the working directory
            from jupyter_core.paths import jupyter_runtime_dir

            Path(jupyter_runtime_dir()).mkdir(parents=True, exist_ok=True)
            return os.path.join(jupyter_runtime_dir(), f"absld-{os.getpid()}-{time.time_ns()}-ipc")

    return {"kernel_manager_class": IPCKernelManager}


def run_classes(by_seed: dict) -> list[str]:
    """The class names of a set of runs ({seed: run directory}), from the first one's metrics."""
    from .evaluate import SUMMARY_COLUMNS, load_table

    df = load_table(Path(next(iter(by_seed.values()))) / "metrics.json")
    return list(df.attrs.get("classes") or [c for c in df.columns if c not in SUMMARY_COLUMNS])


def run_attacks(by_seed: dict) -> list[str]:
    """The evaluation attacks of a set of runs, in their order."""
    from .evaluate import load_table

    return list(load_table(Path(next(iter(by_seed.values()))) / "metrics.json").index)


def write_summary(tables: dict, figure_dir: str | Path, title: str, attack: str = "pgd20",
                  claims: str = "") -> tuple[Path, Path]:
    """The study's summary: per attack, mean over seeds [95% interval] of Avg / Worst / NSD per method
    (markdown), the claims, and all numbers flat in summary.csv (method, attack, metric, mean, lo, hi)
    plus the method x class table under `attack` (class_wise_<attack>.csv, with intervals)."""
    import pandas as pd

    from .experiments import markdown_summary
    from .intervals import format_ci

    figure_dir = Path(figure_dir)
    parts = [f"# {title}\n"]
    for a, t in tables.items():
        parts.append(f"## {a}: mean over seeds [95% interval]\n\n" + markdown_summary(format_ci(t)))
    if claims:
        parts.append(f"## Claims ({attack}, paired differences)\n\n{claims}\n")
    md = write_text_atomic(figure_dir / "summary.md", "\n".join(parts))
    rows = []
    for a, t in tables.items():
        for method, r in t.iterrows():
            for m in ("avg", "worst", "nsd"):
                rows.append({"method": method, "attack": a, "metric": m, "mean": r[m], "lo": r[f"{m}_lo"],
                             "hi": r[f"{m}_hi"], "n_seeds": int(r["n_seeds"])})
    csv = write_text_atomic(figure_dir / "summary.csv", pd.DataFrame(rows).to_csv(index=False))
    if attack in tables:
        write_text_atomic(figure_dir / f"class_wise_{attack}.csv", tables[attack].round(3).to_csv())
    return md, csv
