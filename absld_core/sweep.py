"""A study's trainings fanned out: local worker processes, or Slurm jobs through submitit.

    absld sweep --preset digits-paper                       # 2 workers x 1 thread on a 2-core machine
    absld sweep --preset paper --executor submitit --partition gpu --gpus 1 --cpus 8 --mem-gb 32 --hours 24

The jobs are `plan.study_plan`'s: each a run directory, started once every job it waits for is done.
A run directory is a job's whole state: a finished run with the same config is skipped, an unfinished
one (a killed worker, a preempted or timed-out Slurm job) resumes from its last.pt, a changed config
trains again. Every job writes its log to <run_root>/sweep/logs/<seed>/<run>.log (submitit: its own
stdout/stderr files beside it), and the sweep ends with a summary (done / failed / skipped / waiting,
seconds per run). Afterwards `absld study --preset NAME` renders the notebooks from the finished runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .plan import Job, PlanError
from .runs import write_json_atomic

EXECUTORS = ("local", "submitit")


@dataclass
class Outcome:
    key: str
    state: str                 # done, failed, skipped (already finished), waiting (a dependency failed)
    seconds: float = 0.0
    run_dir: str = ""
    log: str = ""
    error: str = ""


@dataclass
class SweepResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.state in ("done", "skipped") for o in self.outcomes.values())

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes.values())

    def summary(self) -> str:
        lines = [f"sweep: {self.count('done')} done, {self.count('failed')} failed, {self.count('skipped')} skipped "
                 f"(already finished), {self.count('elsewhere')} being trained elsewhere, {self.count('waiting')} "
                 f"not started (a dependency did not finish)"
                 + (f", {self.count('stopped')} stopped" if self.count("stopped") else "")]
        for o in self.outcomes.values():
            extra = f"{o.seconds:7.0f} s" if o.state == "done" else ""
            if o.state == "failed":
                extra = f"{o.error}; run {o.run_dir}, log {o.log}"
            elif o.state in ("waiting", "elsewhere", "stopped"):
                extra = o.error
            lines.append(f"  {o.state:8s} {o.key:32s} {extra}")
        return "\n".join(lines)


def log_path(log_root: Path, job: Job) -> Path:
    return Path(log_root) / f"{job.key}.log"


def _payload(job: Job, threads: int) -> dict:
    return {"key": job.key, "notebook": job.notebook, "seed": job.seed, "label": job.label,
            "config": {**job.config, "progress": False}, "deps": list(job.deps), "pair": job.pair,
            "threads": threads}


def run_payload(payload: dict) -> str:
    """Run one job described by `_payload` in this process (a worker's or a Slurm job's body)."""
    import torch

    threads = int(payload.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    job = Job(payload["key"], payload["notebook"], int(payload["seed"]), payload["label"], payload["config"],
              tuple(payload["deps"]), payload.get("pair"))
    return str(job.run())


# ------------------------------------------------------------------------------------ scheduling
def plan_threads(jobs: list[Job]) -> int | None:
    """The thread count the plan's runs train with (the study's `threads` parameter), None if unset."""
    counts = {j.config.get("threads") for j in jobs}
    if len(counts) > 1:
        raise PlanError(f"the plan's runs ask for different thread counts {sorted(counts, key=str)}; a study trains "
                        f"every run with one count (its threads parameter)")
    return next(iter(counts), None)


def plan_precisions(jobs: list[Job], states: dict[str, str] | None = None) -> str | None:
    """A sentence when the plan's runs would train in more than one precision (precision.mix_note): a
    started run keeps the one it recorded, a run still to train gets what its config resolves to on this
    machine (a CUDA run where this machine has no GPU is not counted). None when they agree."""
    import torch

    from .config import TrainConfig
    from .precision import mix_note, resolve, started_in
    from .runs import RunDir

    states = states or {j.key: j.status() for j in jobs}
    started, planned = {}, {}
    for j in jobs:
        run = RunDir(j.run_dir)
        if states[j.key] in ("done", "unfinished", "reevaluate") and run.config.is_file():
            rec = started_in(run.read_config(), str(run.config))
            if rec is not None:
                started[j.key] = rec.train
                continue
        device = torch.device(j.config.get("device") or "cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            continue
        planned[j.key] = resolve(TrainConfig.from_dict(j.config), device).train
    return mix_note(started, planned)


def preset_precisions(preset: str, overrides: list[str] | None, out_root: str | Path) -> str | None:
    """plan_precisions for a preset's runs under out_root (what `absld study` says before it renders).
    The plan is built first, so a bad preset or parameter is refused here before any work; None where
    out_root does not exist yet (nothing has trained there, and the study makes it)."""
    from contextlib import chdir

    from .plan import study_plan
    from .presets import given_preset

    jobs = study_plan(given_preset(preset), overrides)
    if not Path(out_root).is_dir():
        return None
    with chdir(out_root):   # the plan's run paths are relative to it
        return plan_precisions(jobs)


def sweep(jobs: list[Job], executor: str = "local", *, workers: int | None = None, threads: int | None = None,
          log_root: str | Path, slurm: dict | None = None, log=print, poll: float = 0.5) -> SweepResult:
    """Run the plan's unfinished jobs, each once its dependencies are done; never runs a job twice
    at the same time, never starts one whose dependency failed. threads: per worker; by default the
    study's `threads` parameter, which the runs record and train with (a different count is refused:
    bf16 on a CPU gives other weights with another count, and the notebooks would not reuse them)."""
    if executor not in EXECUTORS:
        raise PlanError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    wanted = plan_threads(jobs)
    if threads is None:
        threads = wanted or 1
    elif wanted is not None and threads != wanted:
        raise PlanError(f"--threads {threads} but the study's runs train with threads={wanted} (its `threads` "
                        f"parameter); set the parameter instead (--set threads={threads}, and the same for "
                        f"absld study) so that the runs record the count they trained with")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise PlanError(f"threads per worker must be an integer >= 1, got {threads!r}")
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) // threads)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PlanError(f"workers must be an integer >= 1, got {workers!r}")
    log_root = Path(log_root)
    result = SweepResult()
    pending: dict[str, Job] = {}
    states = {j.key: j.status() for j in jobs}
    for j in jobs:
        state = states[j.key]
        if state == "done":
            result.outcomes[j.key] = Outcome(j.key, "skipped", run_dir=str(j.run_dir))
        else:
            pending[j.key] = j
    backend = _Local(workers, threads, log_root) if executor == "local" else _Submitit(threads, log_root, slurm or {})
    log(f"sweep: {len(jobs)} runs in the plan, {len(pending)} to train ("
        + (f"local, {workers} workers x {threads} thread(s))" if executor == "local" else backend.describe() + ")"))
    mixed = plan_precisions(jobs, states)
    if mixed:
        log(f"sweep: {mixed}")
    running: dict[str, tuple[object, float]] = {}
    try:
        with _terminate_on_sigterm():
            _loop(jobs, pending, running, backend, result, log, poll)
    except (_Terminated, KeyboardInterrupt) as e:
        # SIGINT reaches only this process when it is sent to it alone (`kill -INT`, a process manager), not
        # to the terminal's whole group as Ctrl-C is: stop the workers either way, never leave them running
        signame = "SIGTERM" if isinstance(e, _Terminated) else "SIGINT"
        for key, (handle, t0) in running.items():
            backend.stop(handle)
            result.outcomes[key] = Outcome(key, "stopped", time.time() - t0, str(jobs_by_key(jobs)[key].run_dir),
                                           error=f"the sweep was stopped ({signame}); --resume-able from its last.pt")
        for key, job in pending.items():
            result.outcomes.setdefault(key, Outcome(key, "waiting", run_dir=str(job.run_dir),
                                                    error="not started: the sweep was stopped"))
        _record(result, log_root, log)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise SystemExit(143) from None
    _record(result, log_root, log)
    return result


class _Terminated(Exception):
    pass


@contextlib.contextmanager
def _terminate_on_sigterm():
    """SIGTERM (a scheduler ending the sweep, `kill`) becomes an exception in the loop, so that the
    workers are stopped with it instead of being left running on their own (SIGINT is Python's
    KeyboardInterrupt, handled the same way)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _record(result: SweepResult, log_root: Path, log) -> None:
    """This sweep's outcomes: sweeps/<time>-<pid>.json (one file per sweep, so that two sweeps at once
    each keep what they did) and last_sweep.json (the latest)."""
    log(result.summary())
    record = {k: vars(o) for k, o in result.outcomes.items()}
    write_json_atomic(log_root / "sweeps" / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json", record)
    write_json_atomic(log_root / "last_sweep.json", record)


def _loop(jobs, pending, running, backend, result, log, poll) -> None:
    waited_for = {d for j in jobs for d in j.deps}  # start the jobs others wait for (teachers, references) first
    pending = dict(sorted(pending.items(), key=lambda kv: kv[0] not in waited_for))
    while pending or running:
        for key, (handle, t0) in list(running.items()):
            finished, error = backend.poll(handle)
            if not finished:
                continue
            del running[key]
            job = jobs_by_key(jobs)[key]
            state = "elsewhere" if error == ELSEWHERE else "failed" if error else "done"
            out = Outcome(key, state, time.time() - t0, str(job.run_dir), str(backend.log_of(job, handle)),
                          "another process holds its run.lock (another sweep or notebook trains it)"
                          if state == "elsewhere" else error or "")
            result.outcomes[key] = out
            log(f"  {out.state:6s} {key} ({out.seconds:.0f} s)" + (f": {error}; log {out.log}" if error else ""))
        for key, job in list(pending.items()):
            failed = [d for d in job.deps
                      if result.outcomes.get(d) and result.outcomes[d].state in ("failed", "waiting", "elsewhere")]
            if failed:
                result.outcomes[key] = Outcome(key, "waiting", run_dir=str(job.run_dir),
                                               error=f"waits for {', '.join(failed)}, which did not finish")
                del pending[key]
                continue
            ready = all(result.outcomes.get(d) and result.outcomes[d].state in ("done", "skipped") for d in job.deps)
            if ready and backend.has_room(len(running)):
                log(f"  start  {key}")
                running[key] = (backend.start(job), time.time())
                del pending[key]
        if running:
            time.sleep(poll)


def jobs_by_key(jobs: list[Job]) -> dict[str, Job]:
    return {j.key: j for j in jobs}


class _Local:
    """Worker processes of `threads` threads each, at most `workers` at a time."""

    def __init__(self, workers: int, threads: int, log_root: Path):
        self.workers, self.threads, self.log_root = workers, threads, log_root

    def has_room(self, n_running: int) -> bool:
        return n_running < self.workers

    def start(self, job: Job):
        path = log_path(self.log_root, job)
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = path.with_suffix(".job.json")
        write_json_atomic(spec, _payload(job, self.threads))
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        f = open(path, "a")
        f.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {job.key} ({job.run_dir})\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "absld_core.sweep", str(spec)], stdout=f,
                                stderr=subprocess.STDOUT, env=env)
        return proc, f, path

    def poll(self, handle) -> tuple[bool, str | None]:
        proc, f, path = handle
        rc = proc.poll()
        if rc is None:
            return False, None
        f.close()
        if rc == 0:
            return True, None
        if rc == ELSEWHERE_EXIT:
            return True, ELSEWHERE
        tail = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()][-1:]
        why = f"exit status {rc}" if rc > 0 else f"killed by signal {-rc}"
        return True, why + (f" ({tail[0][:200]})" if tail and rc > 0 else "")

    def log_of(self, job: Job, handle) -> Path:
        return handle[2]

    def stop(self, handle) -> None:
        """SIGTERM to the worker (it ends its run through the failure path: status recorded, lock freed),
        then SIGKILL if it has not ended within a minute."""
        proc, f, _ = handle
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        f.close()


_FLAG = {"gpus_per_node": "gpus", "partition": "partition", "account": "account", "qos": "qos"}
ELSEWHERE, ELSEWHERE_EXIT = "elsewhere", 75   # a worker whose run another process holds (EX_TEMPFAIL)


class _Submitit:
    """One submitit job per run (Slurm; cluster='local' runs submitit's own local executor). A job is
    checkpointable: on preemption or timeout submitit requeues it, and it resumes from last.pt."""

    def __init__(self, threads: int, log_root: Path, slurm: dict):
        try:
            import submitit
        except ImportError as e:
            raise PlanError("the submitit executor needs submitit: pip install submitit") from e
        opts = dict(slurm)
        cluster = opts.pop("cluster", None)  # None: Slurm when sbatch is there; "local": submitit's local executor
        self.max_parallel = int(opts.pop("max_parallel", 0) or 0)
        self.folder = Path(log_root) / "submitit"
        self.executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=cluster)
        params = {"timeout_min": int(opts.pop("timeout_min", 60 * 24)), "cpus_per_task": int(opts.pop("cpus_per_task", threads)),
                  "name": "absld-study"}
        for k in ("gpus_per_node", "mem_gb"):
            if opts.get(k) is not None:
                params[k] = opts.pop(k)
        opts = {k: v for k, v in opts.items() if v is not None}
        slurm_only = {k: v for k, v in {**opts, **{k: params.get(k) for k in ("gpus_per_node",)}}.items()
                      if v is not None and k in ("partition", "account", "qos", "gpus_per_node")}
        if cluster is None and self.executor.cluster != "slurm" and slurm_only:
            raise PlanError(f"--executor submitit found no Slurm here (sbatch is not on PATH) and would run every job "
                            f"on this machine with its {self.executor.cluster} executor, ignoring "
                            f"{', '.join('--' + _FLAG.get(k, k) for k in slurm_only)}: load Slurm (module load slurm) "
                            f"on a login node, or ask for --executor submitit-local without them")
        if self.executor.cluster == "slurm":
            params.update({f"slurm_{k}": v for k, v in opts.items()})  # partition, account, qos, ...
            params["slurm_additional_parameters"] = {"requeue": True}
        self.executor.update_parameters(**params)
        self.threads = params["cpus_per_task"]

    def has_room(self, n_running: int) -> bool:
        return not self.max_parallel or n_running < self.max_parallel

    def start(self, job: Job):
        self.executor.update_parameters(name=f"absld-study-{job.key.replace('/', '-')}")
        return self.executor.submit(_Checkpointable(), _payload(job, self.threads))

    def poll(self, handle) -> tuple[bool, str | None]:
        if not handle.done():
            return False, None
        try:
            handle.result()
        except Exception as e:  # submitit re-raises the job's error (or says why the job died)
            return True, f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
        return True, None

    def log_of(self, job: Job, handle) -> Path:
        return Path(handle.paths.stderr)

    def describe(self) -> str:
        return ("one Slurm job each" if self.executor.cluster == "slurm"
                else f"submitit's {self.executor.cluster} executor: every job on this machine")

    def stop(self, handle) -> None:
        pass   # Slurm jobs are the scheduler's: they go on (scancel them to stop them)


def _checkpointable_base():
    try:
        from submitit.helpers import Checkpointable
        return Checkpointable
    except ImportError:
        return object


class _Checkpointable(_checkpointable_base()):
    """A submitit job body: runs the payload; on preemption or timeout it is requeued with the same
    payload (submitit's Checkpointable), and the run resumes from its last.pt."""

    def __call__(self, payload: dict) -> str:
        return run_payload(payload)


def _stop_once(exception):
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise exception()
    return handler


def main(argv: list[str]) -> int:
    from .runs import RunLockedError

    payload = json.loads(Path(argv[0]).read_text())
    # SIGTERM (the sweep stopping) and SIGINT (Ctrl-C) end the run through its normal failure path: status
    # recorded, lock freed. Only the first one counts: a terminal's Ctrl-C reaches this worker and the sweep
    # at once, and the sweep's SIGTERM must not cut short the worker's recording of its stop.
    signal.signal(signal.SIGTERM, _stop_once(lambda: SystemExit(143)))
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:   # started with SIGINT ignored (`nohup ... &`): kept
        signal.signal(signal.SIGINT, _stop_once(KeyboardInterrupt))
    try:
        print(run_payload(payload), flush=True)
    except RunLockedError as e:
        print(f"error: {e}", flush=True)
        return ELSEWHERE_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
