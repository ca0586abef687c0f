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
from dataclasses import dataclass, field
from pathlib import Path

from .declare import N1, N2, N3
from .smoothness import PAIR_LABELS

# the run directories of a study (under run_root/s<seed>/): the plan is the one place that names them
REFERENCE_RUN, TEACHER_RUN, EXTERNAL_TEACHER_RUN, STUDENT_PREFIX = "reference", "teacher", "teacher-external", "student"
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

    def state(self) -> tuple[str, list[str]]:
        """(experiments.run_state's state of this job's run, the changed fields); a pair whose reference
        is not finished yet is 'unfinished' (its method is set by that run)."""
        from .experiments import run_state
        from .runs import RunDir

        if not RunDir(self.run_dir).config.is_file():
            return "new", []
        if self.pair is not None and not RunDir(self.pair["reference"]).finished():
            return "unfinished", []
        return run_state(self.resolved_config())

    def status(self) -> str:
        """'done', 'unfinished', 'reevaluate' (only evaluation fields changed), 'changed' or 'new'."""
        return self.state()[0]

    def run(self, log=print, progress: bool = True, retrain: bool = True) -> Path:
        """Train (or resume, re-evaluate or reuse) this job's run in this process (progress: the run's
        own bars; retrain=False refuses to train a changed run again)."""
        from .experiments import run_or_resume

        return run_or_resume({**self.resolved_config(), "progress": progress}, log=log, retrain=retrain)


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
    """A run config for one seed (out_dir run_root/s<seed>, the seed's fold) from study parameters."""
    from .presets import run_config

    fold = fold_of(P, seed)
    if fold is not None:
        over.setdefault("data__options", {"folds": int(P["test_folds"]), "fold": fold, "seed": 0})
    return run_config({**P, "seed": seed, "run_root": str(seed_root(P, seed))}, name, method, **over)


def student_run(method: str) -> str:
    """The run directory name of a student method."""
    return f"{STUDENT_PREFIX}-{method}"


# ------------------------------------------------------------------------------------ jobs per notebook
def _job(nb, seed, label, cfg, deps=(), pair=None) -> Job:
    return Job(f"s{seed}/{cfg['name']}", nb, seed, label, cfg, tuple(deps), pair)


def reference_jobs(P: dict) -> list[Job]:
    from .methods.pgd_at import PGDAT

    epochs = P.get("reference_epochs", P["epochs"])
    return [_job(N1, s, "reference", config(P, s, REFERENCE_RUN, {"name": PGDAT.name}, optim__epochs=epochs))
            for s in seeds_of(P)]


def pair_jobs(P: dict) -> list[Job]:
    out = []
    for ref in reference_jobs(P):
        settings = {k: P[k] for k in ("n_hard", "tau_sharp", "tau_smooth", "ls_sharp", "ls_smooth")}
        settings["reference"] = str(ref.run_dir)
        base = config(P, ref.seed, "pair", {})
        for label, name in PAIR_RUNS.items():
            out.append(_job(N1, ref.seed, label, {**base, "name": name}, [ref.key], settings))
    return out


def teacher_jobs(P: dict) -> list[Job]:
    if P.get("teacher_checkpoint"):
        return []
    return [_job(N2, s, "teacher",
                 config(P, s, TEACHER_RUN, {"name": P["teacher_method"]}, optim__epochs=P["teacher_epochs"],
                        model__arch=P["teacher_arch"], model__width=P["teacher_width"],
                        model__channels=P["teacher_channels"])) for s in seeds_of(P)]


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


def student_options(P: dict, methods) -> dict[str, dict]:
    """Each student's options from its own study knobs (declared on its options, params.method_options)."""
    from .params import method_options

    return {m: method_options(m, P) for m in methods}


def teacher_of(P: dict, seed: int) -> tuple[str, tuple[str, ...]]:
    """(the teacher the seed's students distil from, the job key they wait for)."""
    if P.get("teacher_checkpoint"):
        return str(P["teacher_checkpoint"]), ()
    return str(seed_root(P, seed) / TEACHER_RUN), (f"s{seed}/{TEACHER_RUN}",)


def student_jobs(P: dict) -> list[Job]:
    from .experiments import student_configs
    from .methods import registry
    from .methods.absld import ABSLD, study_eta
    from .methods.ham import HAM

    out = []
    methods = wanted_methods(P)
    for s in seeds_of(P):
        teacher, deps = teacher_of(P, s)
        cfgs = student_configs(config(P, s, STUDENT_PREFIX, {}), teacher, methods, student_options(P, methods))
        if P.get("ham_paper_schedule") and HAM.name in cfgs:
            # HAM on its paper's budget: 120 epochs, lr /10, /100, /200 at 60, 90, 110, early dropping from 50
            cfgs[HAM.name]["optim"] = {**cfgs[HAM.name]["optim"], "epochs": 120, "schedule": "ham120"}
            cfgs[HAM.name]["method"]["ham_start_epoch"] = 50
        if P.get("compare_eta_scaling") and ABSLD.name in cfgs and not P.get("eta_for_300_epochs"):
            # ABSLD once more with eta scaled to the paper's temperature travel, beside the plain squeeze
            scaled = copy.deepcopy(cfgs[ABSLD.name])
            scaled["name"] = f"{scaled['name']}-eta-scaled"
            scaled["method"]["eta"] = study_eta(scaled["method"]["eta"], {**P, "eta_for_300_epochs": True})
            cfgs[ETA_SCALED] = scaled
        for m, cfg in cfgs.items():
            needs = m == ETA_SCALED or registry.get(m).needs_teacher
            out.append(_job(N3, s, m, cfg, deps if needs else ()))
    return out


from .labels import ETA_SCALED  # noqa: E402  (the label of notebook 03's compare_eta_scaling run)


def notebook_jobs(notebook: str, P: dict) -> list[Job]:
    """The trainings of one notebook under its parameters P (empty for the notebooks that only read)."""
    if notebook == N1:
        return reference_jobs(P) + pair_jobs(P)
    if notebook == N2:
        return teacher_jobs(P)
    if notebook == N3:
        return student_jobs(P)
    return []


def study_plan(preset: str, overrides: list[str] | None = None, notebooks=None) -> list[Job]:
    """Every training of a preset's notebooks (each with exactly the parameters its notebook gets)."""
    from .presets import load_preset, resolve_parameters, spec_parameters

    spec = load_preset(preset, overrides)
    resolve_parameters(spec)  # refuses bad names and values before any work
    jobs: list[Job] = []
    for nb in spec["notebooks"]:
        if notebooks is not None and nb not in notebooks:
            continue
        jobs += notebook_jobs(nb, spec_parameters(spec, nb))
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


def run_jobs(jobs: list[Job], retrain: bool = True, log=print, progress: bool = True) -> dict[str, Path]:
    """Train a notebook's jobs in this process, in plan order: reuse the finished ones, resume the
    unfinished ones, evaluate again those whose evaluation alone changed. A run whose training
    configuration changed is trained again only with retrain=True; otherwise nothing is started and
    RetrainRefused names every such run and what changed. progress: one compact bar over the runs in
    JupyterLab, lines of text in a batch (`absld study`) kernel, ending with a count."""
    from .experiments import RetrainRefused
    from .study import batch_mode

    states = {j.key: j.state() for j in jobs}
    blocked = [(j, states[j.key][1]) for j in jobs if states[j.key][0] == "changed"]
    if blocked and not retrain:
        lines = "; ".join(f"{j.run_dir} ({', '.join(ch[:4])}{' ...' if len(ch) > 4 else ''})" for j, ch in blocked)
        raise RetrainRefused(f"{len(blocked)} finished or started run(s) would be trained again because their "
                             f"training configuration changed: {lines}. Nothing was trained or deleted. Set "
                             f"retrain = True in the parameters cell (absld study: --set retrain=true) to train "
                             f"them again, or put the values back")
    count = {}
    text = batch_mode() or not progress
    from tqdm.auto import tqdm

    out = {}
    with tqdm(total=len(jobs), desc="runs", unit="run", disable=text or not jobs) as bar:
        for j in jobs:
            state = j.state()[0] if j.deps else states[j.key][0]  # a dependency may have just changed it
            bar.set_postfix_str(j.key, refresh=True)
            if text and state != "done":
                log(f"{j.key}: {_VERBS[state]}")
            out[j.key] = j.run(log=log, progress=False, retrain=retrain)
            count[state] = count.get(state, 0) + 1
            bar.update(1)
    if jobs:
        log("runs: " + ", ".join(f"{n} {_DONE[s]}" for s, n in count.items()))
    return out


_VERBS = {"new": "training", "unfinished": "resuming", "changed": "training again (retrain)",
          "reevaluate": "evaluating again (only the evaluation changed)", "done": "reused"}
_DONE = {"new": "trained", "unfinished": "resumed", "changed": "trained again", "reevaluate": "evaluated again",
         "done": "reused"}


def jobs_of(P: dict, notebook: str) -> list[Job]:
    """The jobs of `notebook` under the parameters that notebook gets in P's study (P: a notebook's
    NotebookParams; a plain dict is used as it is)."""
    of = getattr(P, "of", None)
    return notebook_jobs(notebook, of(notebook) if of is not None else P)


def finished_runs(P: dict) -> dict[str, dict[int, Path]]:
    """The teacher and the students of every seed (the runs notebooks 02 and 03 write, named by the
    plan) that are finished and carry per-image results (the ones tables and intervals can use)."""
    from .runs import RunDir

    runs = by_label(jobs_of(P, N2) + jobs_of(P, N3))
    out: dict[str, dict[int, Path]] = {}
    for label, by_seed in runs.items():
        done = {s: p for s, p in by_seed.items() if RunDir(p).finished() and RunDir(p).per_image.is_file()}
        if done:
            out[label] = done
    return out


def external_teacher_dir(P: dict) -> Path | None:
    """Where notebook 02 records its evaluation of an external teacher_checkpoint (None without one)."""
    if not P.get("teacher_checkpoint"):
        return None
    return seed_root(P, seeds_of(P)[0]) / EXTERNAL_TEACHER_RUN


def evaluate_external_teacher(P: dict) -> dict[int, Path]:
    """Notebook 02 with an external teacher: evaluated once, on the first seed's test split, into
    external_teacher_dir (metrics.json and per_image.npz); {seed: that directory}."""
    from .config import TrainConfig
    from .engine import prepare_data
    from .evaluate import evaluate_per_image, save_per_image, save_table
    from .models import model_from_checkpoint

    seed = seeds_of(P)[0]
    out = external_teacher_dir(P)
    cfg = config(P, seed, EXTERNAL_TEACHER_RUN, {"name": P["teacher_method"]}, model__arch=P["teacher_arch"],
                 model__channels=None)  # the checkpoint's own size
    ds = prepare_data(TrainConfig.from_dict(cfg))
    model, _ = model_from_checkpoint(P["teacher_checkpoint"], P["device"], arch=P["teacher_arch"],
                                     num_classes=ds.num_classes)
    table, correct = evaluate_per_image(model, ds.test_x, ds.test_y, cfg["attack"]["test_attacks"], classes=ds.classes,
                                        eps=cfg["attack"]["eps"], pgd_alpha=cfg["attack"]["eval_alpha"],
                                        device=P["device"], progress=False)
    save_per_image(out / "per_image.npz", ds.test_y, correct)
    save_table(table, out / "metrics.json")
    return {seed: out}


HARD_WORDS = "highest validation robust error of the reference PGD-AT run"  # the study's one definition


def hard_classes(P: dict) -> tuple[list[str], list[str], str] | None:
    """The study's hard classes, one definition for every notebook and figure: the `n_hard` classes with
    the highest robust error on the validation split of notebook 01's reference PGD-AT run of the first
    seed. Returns (hard classes, every class from hardest to easiest, the definition in words), or None
    when that run is not finished (a study without notebook 01)."""
    from . import smoothness
    from .runs import RunDir

    from .presets import StudyError

    seed = seeds_of(P)[0]
    run = seed_root(P, seed) / REFERENCE_RUN  # named by the run root and the seed only
    if not RunDir(run).finished():
        return None
    of = getattr(P, "of", None)
    try:  # n_hard is notebook 01's; a change that notebook 01 refuses (its PGD-20) leaves this one's value
        n = int((of(N1) if of is not None else P).get("n_hard", 3))
    except (StudyError, PlanError):
        n = int(P.get("n_hard", 3))
    order = smoothness.ranking(*smoothness.class_error(run))
    return order[:n], order, f"hard: the {n} classes with the {HARD_WORDS} (seed {seed})"


def explorer_run(P: dict) -> Path:
    """Notebook 05's run: `run` when given, else the study's ABSLD student of the first seed."""
    from .methods.absld import ABSLD

    if P.get("run"):
        return Path(P["run"])
    return seed_root(P, seeds_of(P)[0]) / student_run(ABSLD.name)


def by_label(jobs: list[Job]) -> dict[str, dict[int, Path]]:
    """{label: {seed: run directory}}: how the tables group runs."""
    out: dict[str, dict[int, Path]] = {}
    for j in jobs:
        out.setdefault(j.label, {})[j.seed] = j.run_dir
    return out
