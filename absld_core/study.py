"""The study: notebooks executed in order with papermill, per preset, and what a notebook does first.

    absld study --preset smoke          # notebooks -> runs/smoke/, figures -> figures/smoke/

The parameters and presets live in params.py and presets.py, the runs in plan.py; this module runs
the notebooks. A notebook is skipped when its source, its parameters, the package code and everything
upstream are unchanged since its last successful run; otherwise the runner says why it reruns. A
failing notebook stops the batch with its failing cell's error and keeps every finished output.
Executed notebooks are written to a temporary copy and moved into place only when they finish, and the
state records a notebook as running until then, so a study that is killed never leaves an unfinished
copy that a later run would take as done. Kernels talk to the runner over local IPC sockets, not TCP.

A notebook, opened by hand or run by papermill, starts with `notebook_setup(globals(), NAME)`: it
takes the values of the preset its `preset` parameter names, and keeps those set in its parameters
cell (or passed by papermill) that differ from the default preset's; see notebook_setup.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from . import params, presets
from .presets import StudyError, load_preset, resolve_parameters
from .provenance import code_hash
from .runs import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = params.NOTEBOOKS
KERNEL = "absld"
BATCH_ENV = "ABSLD_BATCH"   # set for the kernels `absld study` starts: progress as lines of text, not widgets

__all__ = ["run_study", "notebook_setup", "NotebookParams", "StudyError", "NOTEBOOKS", "require_runs"]


# ------------------------------------------------------------------------------------ in a notebook
class NotebookParams(dict):
    """A notebook's parameters (every study parameter, resolved), with where they came from: the preset,
    the notebook, and the values set in the notebook or passed by papermill (`changes`)."""

    def __init__(self, values: dict, preset: str, notebook: str, changes: dict):
        super().__init__(values)
        self.preset, self.notebook, self.changes = preset, notebook, dict(changes)

    def of(self, notebook: str) -> dict:
        """The parameters another notebook of the same study gets (the same preset and changes)."""
        if notebook == self.notebook:
            return dict(self)
        return presets.notebook_parameters(self.preset, notebook, self.changes)


def batch_mode() -> bool:
    """True in a kernel started by `absld study` (papermill): progress is printed, not drawn."""
    return os.environ.get(BATCH_ENV) == "1"


def _study_root(here: Path) -> Path | None:
    """The folder whose runs/ a kernel started in `here` means: the repository for its notebooks/, a
    study's --out folder for a notebooks/ beside its runs/, and for an executed copy in
    <root>/runs/<preset>/notebooks/ that <root>."""
    if here.name != "notebooks":
        return None
    if here == (ROOT / "notebooks").resolve() or (here.parent / "runs").is_dir():
        return here.parent
    if here.parent.parent.name == "runs" and (here.parent / "study_state.json").is_file():
        return here.parents[2]
    return None


def _injected_names() -> set[str]:
    """The names papermill's injected-parameters cell assigned in this kernel (it begins '# Parameters')."""
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        return set()
    if shell is None:
        return set()
    import ast

    names: set[str] = set()
    for src in shell.user_ns.get("In", []):
        if isinstance(src, str) and src.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return names


def notebook_setup(namespace: dict, notebook: str, log=print) -> NotebookParams:
    """A notebook's first code. Relative paths mean the same folder in JupyterLab as under `absld study`
    (a kernel in the repository's notebooks/, beside a study's runs/, or in an executed copy's folder
    moves to the study's root). The parameters: the preset named by `preset`, then what the notebook
    changed: a value papermill injected, or one in the parameters cell that differs from the cell's
    default (the default preset's). The namespace's parameter names are set to the values used, and
    figure_dir is made."""
    import pandas as pd

    root = _study_root(Path.cwd().resolve())
    if root is not None:
        os.chdir(root)
    pd.set_option("display.precision", 2)
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)
    mine = [p.name for p in params.for_notebook(notebook)]
    cell = resolve_parameters(load_preset(params.DEFAULT_PRESET))[notebook]
    injected = _injected_names()
    changes = {k: namespace[k] for k in mine if k != "preset" and k in namespace
               and (k in injected or namespace[k] != cell.get(k))}
    changes.update({k: namespace[k] for k in injected if k not in mine and k in params.declared() and k in namespace})
    preset = str(namespace.get("preset") or params.DEFAULT_PRESET)
    base = presets.notebook_parameters(preset, notebook)
    differ = {k: v for k, v in changes.items() if base.get(k) != v}  # what this notebook changes in the preset
    P = NotebookParams(presets.notebook_parameters(preset, notebook, differ), preset, notebook, differ)
    namespace.update({k: P[k] for k in mine})
    if P.get("figure_dir"):
        Path(P["figure_dir"]).mkdir(parents=True, exist_ok=True)
    log(f"parameters: preset {preset!r}, runs in {P['run_root']}" + (f"; changed here: {', '.join(f'{k}={v!r}' for k, v in differ.items())}"
                                          if differ else " (no value changed here)"))
    return P


def require_runs(runs: dict, run_root: str | Path, what: str = "finished runs") -> dict:
    """The runs a reading notebook needs, or a message that says how to make them."""
    if not runs:
        raise StudyError(f"no {what} in {Path(run_root).resolve()}: run notebooks 01-03 first, or `make study` "
                         f"(absld study --preset NAME) for the preset's runs")
    return runs


# ------------------------------------------------------------------------------------ fingerprints
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
    package, upstream = code_hash(), ""
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
        batch = os.environ.get(BATCH_ENV)
        os.environ[BATCH_ENV] = "1"  # the kernel inherits it: progress as text lines in the executed copy
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
        finally:
            if batch is None:
                os.environ.pop(BATCH_ENV, None)
            else:
                os.environ[BATCH_ENV] = batch
        os.replace(partial, dst)  # the executed copy appears whole, and only when the notebook finished
        state[nb] = {"status": "ok", "fingerprint": fp, "seconds": round(time.time() - t0, 1),
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(state_file, state)
        log(f"  {nb}: done in {time.time() - t0:.0f} s")
    summary = fig_root / "summary.md"
    if summary.is_file():
        log(f"\nsummary ({summary}):\n{summary.read_text()}")
    changed = tracked_changes(fig_root)
    if changed:
        log(f"\n{len(changed)} committed file(s) under {fig_root} now differ from the repository's: "
            f"{', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}. Trained weights depend on the CPU's "
            f"kernels and the precision `auto` picks (bf16 only where the CPU has it natively), so another kind "
            f"of machine draws other figures; `git checkout -- {fig_root}` restores the committed ones.")
    return 0


def tracked_changes(folder: str | Path) -> list[str]:
    """The files under `folder` that git tracks and that differ from the checkout's commit (names
    relative to the folder); [] outside a git checkout or without git."""
    import subprocess

    folder = Path(folder).resolve()
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10)
        if top.returncode != 0:
            return []
        out = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no", "--", "."],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    root = Path(top.stdout.strip())
    names = [line[3:].strip() for line in out.stdout.splitlines() if line.strip()]
    return sorted(str((root / n).relative_to(folder)) if (root / n).is_relative_to(folder) else n for n in names)


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
                  claims: str = "", findings: str = "") -> tuple[Path, Path]:
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
    if findings:
        parts.append(f"## What the temperature and early-dropping figures show\n\n{findings}\n")
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
