"""The study's trainings as data: one job per run directory, with the jobs it waits for.

    jobs = study_plan("digits-paper", ["seeds=[0,1]"])     # every training of the preset's notebooks
    jobs = notebook_jobs("03_students", P)                  # what one notebook trains (P: its parameters)

A job is a run configuration (exactly what `engine.train` gets) plus its dependencies: the students
after their seed's teacher, notebook 01's SSD/DSD pairs after their seed's reference run (whose
class-wise validation error sets the pairs' temperatures and label smoothing, so a pair's method is
filled in from the reference when the job runs). The notebooks and `absld sweep` build their jobs
here, so a sweep trains exactly the runs the notebooks read (and reuse: `run_or_resume` keeps a
finished run whose config is unchanged).

Seeds: every job runs once per seed, in `<run_root>/s<seed>/`. The teacher is trained per seed: with
`test_folds` (digits) the seed also picks the held-out fold, and a teacher trained on another fold
would have seen the test images; otherwise the per-seed teacher makes the seed-to-seed spread include
the teacher's own variance, which is what a user retraining the chain sees. An external
`teacher_checkpoint` is shared by every seed.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

STUDY_NOTEBOOKS_WITH_TRAINING = ("01_smoothness_vs_fairness", "02_teacher", "03_students")
PAIR_LABELS = ("SSD (temperature)", "DSD (temperature)", "SSD (label smoothing)", "DSD (label smoothing)")
PAIR_RUNS = dict(zip(PAIR_LABELS, ("ssd-kd", "dsd-kd", "ssd-ls", "dsd-ls")))


class PlanError(ValueError):
    """A plan could not be built (bad seeds, folds or methods)."""


@dataclass(frozen=True)
class Job:
    key: str                       # "s0/student-absld": unique in a plan, the run directory under run_root
    notebook: str                  # the notebook that reads (and would train) it
    seed: int
    label: str                     # how tables name it: a method, "teacher", "reference", "DSD (temperature)"
    config: dict = field(hash=False, compare=False)  # the run's config; a pair's method comes from its reference
    deps: tuple[str, ...] = ()
    pair: dict | None = field(default=None, hash=False, compare=False)  # smoothness settings of a pair job

    @property
    def run_dir(self) -> Path:
        return Path(self.config["out_dir"]) / self.config["name"]

    def resolved_config(self) -> dict:
        """The config to train; a pair's method is computed from its finished reference run."""
        if self.pair is None:
            return self.config
        from . import smoothness

        p = self.pair
        error, classes = smoothness.class_error(p["reference"])
        settings = smoothness.plan(error, classes, p["n_hard"], p["tau_sharp"], p["tau_smooth"], p["ls_sharp"],
                                   p["ls_smooth"])
        return smoothness.pair_configs(self.config, p["reference"], settings)[self.label]

    def status(self) -> str:
        """'done' (finished with this config), 'unfinished' (a run to resume), 'changed' (config differs:
        trained again) or 'new'."""
        from .config import TrainConfig, config_changes, normalised
        from .runs import RunDir

        run = RunDir(self.run_dir)
        if not run.config.is_file():
            return "new"
        if self.pair is not None and not RunDir(self.pair["reference"]).finished():
            return "unfinished"  # its method is set by a reference run that is not finished
        cfg = self.resolved_config()
        new = TrainConfig.from_dict({**cfg, "resume": False, "overwrite": False}).to_json()
        if config_changes(normalised(json.loads(run.config.read_text())), new):
            return "changed"
        return "done" if run.finished() else "unfinished"

    def run(self, log=print, progress: bool = True) -> Path:
        """Train (or resume, or reuse) this job's run in this process (progress: the run's own bars)."""
        from .experiments import run_or_resume

        return run_or_resume({**self.resolved_config(), "progress": progress}, log=log)


# ------------------------------------------------------------------------------------ parameters
def seeds_of(P: dict) -> list[int]:
    """The study's seeds: `seeds` (a list), else [seed], else [0]; distinct non-negative integers."""
    seeds = P.get("seeds")
    if seeds is None:
        seeds = [P.get("seed", 0)]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise PlanError(f"seeds must be a non-empty list of integers such as [0, 1, 2], got {seeds!r}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad or len(set(seeds)) != len(seeds):
        raise PlanError(f"seeds must be distinct non-negative integers, got {list(seeds)!r}")
    return [int(s) for s in seeds]


def fold_of(P: dict, seed: int) -> int | None:
    """With test_folds=k (digits only), the seed's held-out fold: its position in the seed list mod k."""
    k = P.get("test_folds")
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise PlanError(f"test_folds must be an integer >= 2 (or None), got {k!r}")
    if P.get("dataset") != "digits":
        raise PlanError(f"test_folds rotates the held-out fold of the digits dataset; dataset is {P.get('dataset')!r}")
    return seeds_of(P).index(seed) % k


def seed_root(P: dict, seed: int) -> Path:
    return Path(P["run_root"]) / f"s{seed}"


def config(P: dict, seed: int, name: str, method: dict, **over) -> dict:
    """A run config for one seed (out_dir run_root/s<seed>, the seed's fold) from notebook parameters."""
    from . import study

    fold = fold_of(P, seed)
    if fold is not None:
        over.setdefault("data__options", {"folds": int(P["test_folds"]), "fold": fold, "seed": 0})
    return study.base_config({**P, "seed": seed, "run_root": str(seed_root(P, seed))}, name, method, **over)


# ------------------------------------------------------------------------------------ jobs per notebook
def _job(nb, seed, label, cfg, deps=(), pair=None) -> Job:
    return Job(f"s{seed}/{cfg['name']}", nb, seed, label, cfg, tuple(deps), pair)


def reference_jobs(P: dict) -> list[Job]:
    from .methods.pgd_at import PGDAT

    epochs = P.get("reference_epochs", P["epochs"])
    return [_job("01_smoothness_vs_fairness", s, "reference",
                 config(P, s, "reference", {"name": PGDAT.name}, optim__epochs=epochs)) for s in seeds_of(P)]


def pair_jobs(P: dict) -> list[Job]:
    out = []
    for ref in reference_jobs(P):
        settings = {k: P[k] for k in ("n_hard", "tau_sharp", "tau_smooth", "ls_sharp", "ls_smooth")}
        settings["reference"] = str(ref.run_dir)
        base = config(P, ref.seed, "pair", {})
        for label, name in PAIR_RUNS.items():
            out.append(_job("01_smoothness_vs_fairness", ref.seed, label, {**base, "name": name}, [ref.key],
                            settings))
    return out


def teacher_jobs(P: dict) -> list[Job]:
    if P.get("teacher_checkpoint"):
        return []
    return [_job("02_teacher", s, "teacher",
                 config(P, s, "teacher", {"name": P["teacher_method"]}, optim__epochs=P["teacher_epochs"],
                        model__arch=P["teacher_arch"], model__width=P["teacher_width"])) for s in seeds_of(P)]


def wanted_methods(P: dict) -> list[str]:
    """The notebook's `methods` parameter: 'all' (the registry's student methods) or a comma list."""
    from .experiments import student_methods
    from .methods import registry

    spec = str(P.get("methods", "all")).strip()
    if spec == "all":
        return student_methods()
    names = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in registry.names()]
    if bad or not names:
        raise PlanError(f"methods: unknown {bad or '(none given)'}; registered: {', '.join(registry.names())} or 'all'")
    return names


def student_options(P: dict) -> dict[str, dict]:
    """Notebook 03's per-method options: HAM's warm-up at its release's fraction, ABSLD's eta, TRADES' beta."""
    start = max(1, round(float(P.get("ham_start_fraction", 0.42)) * int(P["epochs"])))
    ham = {"ham_start_epoch": start, "ham_early_steps": int(P.get("ham_early_steps", 2))}
    eta = float(P.get("eta", 0.1))
    if P.get("eta_for_300_epochs"):  # the paper's total temperature travel (300 updates at eta) in fewer epochs
        eta = eta_scaled_for_paper(P, eta)
    from .methods.absld import ABSLD
    from .methods.absld_ham import ABSLDHAM
    from .methods.ham import HAM
    from .methods.trades import TRADES

    return {HAM.name: ham, ABSLDHAM.name: {**ham, "eta": eta}, ABSLD.name: {"eta": eta},
            TRADES.name: {"beta": float(P.get("trades_beta", 6.0))}}


def teacher_of(P: dict, seed: int) -> tuple[str, tuple[str, ...]]:
    """(the teacher the seed's students distil from, the job key they wait for)."""
    if P.get("teacher_checkpoint"):
        return str(P["teacher_checkpoint"]), ()
    return str(seed_root(P, seed) / "teacher"), (f"s{seed}/teacher",)


def student_jobs(P: dict) -> list[Job]:
    from .experiments import student_configs
    from .methods import registry
    from .methods.absld import ABSLD
    from .methods.ham import HAM

    out = []
    for s in seeds_of(P):
        teacher, deps = teacher_of(P, s)
        cfgs = student_configs(config(P, s, "student", {}), teacher, wanted_methods(P), student_options(P))
        if P.get("ham_paper_schedule") and HAM.name in cfgs:
            # HAM on its paper's budget: 120 epochs, lr /10, /100, /200 at 60, 90, 110, early dropping from 50
            cfgs[HAM.name]["optim"] = {**cfgs[HAM.name]["optim"], "epochs": 120, "schedule": "ham120"}
            cfgs[HAM.name]["method"]["ham_start_epoch"] = 50
        if P.get("compare_eta_scaling") and ABSLD.name in cfgs and not P.get("eta_for_300_epochs"):
            # ABSLD once more with eta scaled to the paper's temperature travel, beside the plain squeeze
            scaled = copy.deepcopy(cfgs[ABSLD.name])
            scaled["name"] = f"{scaled['name']}-eta-scaled"
            scaled["method"]["eta"] = eta_scaled_for_paper(P, scaled["method"]["eta"])
            cfgs[ETA_SCALED] = scaled
        for m, cfg in cfgs.items():
            needs = m == ETA_SCALED or registry.get(m).needs_teacher
            out.append(_job("03_students", s, m, cfg, deps if needs else ()))
    return out


ETA_SCALED = "absld_eta_scaled"  # the label of notebook 03's compare_eta_scaling run (student-absld-eta-scaled)


def eta_scaled_for_paper(P: dict, eta: float) -> float:
    """eta for the notebook's students such that their temperatures travel as far in total as 300
    updates of the paper's schedule at `eta` (schedule.eta_for_paper_travel)."""
    from .config import OptimConfig
    from .schedule import eta_for_paper_travel

    return eta_for_paper_travel(OptimConfig(epochs=int(P["epochs"]), schedule=P.get("lr_schedule", "paper300")), eta)


def notebook_jobs(notebook: str, P: dict) -> list[Job]:
    """The trainings of one notebook under its parameters P (empty for the notebooks that only read)."""
    if notebook == "01_smoothness_vs_fairness":
        return reference_jobs(P) + pair_jobs(P)
    if notebook == "02_teacher":
        return teacher_jobs(P)
    if notebook == "03_students":
        return student_jobs(P)
    return []


def study_plan(preset: str, overrides: list[str] | None = None, notebooks=None) -> list[Job]:
    """Every training of a preset's notebooks (each with exactly the parameters papermill gives it)."""
    from . import study

    spec = study.load_preset(preset, overrides)
    per_nb = study.resolve_parameters(spec)
    jobs: list[Job] = []
    for nb in spec["notebooks"]:
        if notebooks is not None and nb not in notebooks:
            continue
        P = {**study.notebook_defaults(nb), **per_nb[nb]}
        jobs += notebook_jobs(nb, P)
    check(jobs)
    return jobs


def check(jobs: list[Job]) -> None:
    """Unique keys and dependencies that exist in the plan (or are already finished runs)."""
    keys = [j.key for j in jobs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise PlanError(f"two jobs would write the same run directory: {dup}")
    known = set(keys)
    for j in jobs:
        for d in j.deps:
            if d not in known:
                raise PlanError(f"job {j.key} waits for {d}, which is not in the plan")


def run_jobs(jobs: list[Job], log=print, progress: bool = True) -> dict[str, Path]:
    """Train a notebook's jobs in this process, in plan order (each reused when already finished),
    under one compact progress bar over the runs (a notebook's output stays a few lines long)."""
    from tqdm.auto import tqdm

    out = {}
    with tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress or not jobs) as bar:
        for j in jobs:
            bar.set_postfix_str(j.key, refresh=True)
            out[j.key] = j.run(log=log, progress=False)
            bar.update(1)
    return out


def by_label(jobs: list[Job]) -> dict[str, dict[int, Path]]:
    """{label: {seed: run directory}}: how the tables group runs."""
    out: dict[str, dict[int, Path]] = {}
    for j in jobs:
        out.setdefault(j.label, {})[j.seed] = j.run_dir
    return out
