"""Command line: `absld train`, `absld eval`, `absld study`, `absld sweep`, `absld summary`, `absld methods`.

    absld train --config presets/train/teacher.yaml --set optim.epochs=5
    absld train --config presets/train/absld.yaml --set method.eta=0.2
    absld eval --checkpoint runs/x --dataset digits --attacks clean,fgsm,pgd20,cw,aa --eps 8/255
    absld study --preset smoke

Errors are one line on stderr: exit code 2 for a usage error (a bad parameter, path, config, dataset or
checkpoint), 1 for a run that failed (a diverged loss, a run directory held by another process).
--debug shows the traceback as well.
"""
from __future__ import annotations

import argparse
import sys
import errno
import traceback
from pathlib import Path

from .config import AttackConfig

DEFAULT_ATTACK = AttackConfig()   # the one place of the evaluation defaults (radius, step, attack list)


class UsageError(ValueError):
    """A command-line value that cannot work; the message says what was wrong and what is allowed."""


def _train(args) -> int:
    from .config import load_config
    from .engine import train

    cfg = load_config(args.config, args.set)
    if args.resume:
        cfg = cfg.replace(resume=True)
    if args.overwrite:
        cfg = cfg.replace(overwrite=True)
    run = train(cfg)
    print(run_summary(run))
    return 0


def run_summary(run: Path) -> str:
    """What a finished run ends with: per attack, Avg, Worst (and which class) and NSD on the test set,
    then where the run is."""
    from .evaluate import load_table
    from .runs import RunDir

    rd = RunDir(run)
    if not rd.finished():   # stopped on purpose (stop_after), resumable
        st = rd.status()
        return f"{st.get('state', 'unfinished')} after epoch {st.get('epoch', '?')} (continue with --resume)\nrun: {run}"
    df = load_table(rd.metrics)
    lines = [f"{df.attrs.get('run', Path(run).name)} ({df.attrs.get('method', '?')}), test set, "
             f"{df.attrs.get('checkpoint', '?')}:"]
    for attack, row in df.iterrows():
        lines.append(f"  {attack:<12s} avg {row['avg']:5.1f}  worst {row['worst']:5.1f} (class {row['worst_class']})"
                     f"  nsd {row['nsd']:.3f}")
    lines.append(f"run: {run}")
    return "\n".join(lines)


def _eval(args) -> int:
    import os

    from .data import load_dataset
    from .engine import check_device
    from .evaluate import evaluate, format_table, parse_attack, save_table
    from .models import check_fits, model_from_checkpoint

    # everything a user typed is checked before the (long) evaluation starts
    if args.out and Path(args.out).suffix not in (".json", ".csv"):
        raise UsageError(f"--out {args.out}: the table is written as .json or .csv; name a file ending in one")
    if args.out:
        folder = Path(args.out).resolve().parent
        if not folder.is_dir():
            raise UsageError(f"--out {args.out}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"--out {args.out}: the folder {folder} is not writable; give a folder you can write to")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not attacks:
        raise UsageError("--attacks names no attack; allowed: clean, fgsm, pgdN, cwN, aa, aa:<parts>")
    for a in attacks:
        parse_attack(a)
    for name in ("eps", "alpha", "batch_size", "per_class", "aa_iters", "num_classes", "width", "depth", "channels"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise UsageError(f"--{name.replace('_', '-')} {v}: must be positive")
    if not args.eps <= 1 or not args.alpha <= 1:
        raise UsageError(f"--eps {args.eps:g} / --alpha {args.alpha:g}: both are in [0, 1] pixel units "
                         f"(write 8/255, not 8)")
    device = check_device(args.device)
    checkpoint = _checkpoint_path(Path(args.checkpoint))
    ds = load_dataset(args.dataset, args.root, **({"download": True} if args.download else {}))
    model, meta = model_from_checkpoint(checkpoint, device, defaults={"num_classes": ds.num_classes,
                                                                      "in_channels": ds.image_shape[0]},
                                        arch=args.model, num_classes=args.num_classes, width=args.width,
                                        depth=args.depth, channels=args.channels)
    check_fits(meta, ds.num_classes, ds.image_shape[0], f"checkpoint {checkpoint} (for {args.dataset})")
    x, y = (ds.test_subset(args.per_class) if args.per_class else (ds.test_x, ds.test_y))
    aa_opts = {"n_iter": args.aa_iters} if args.aa_iters else {}
    df = evaluate(model, x, y, attacks, classes=ds.classes, eps=args.eps, pgd_alpha=args.alpha,
                  device=device, batch_size=args.batch_size, aa_opts=aa_opts)
    print(format_table(df))
    if args.out:
        save_table(df, args.out)
        print(f"saved {args.out}")
    return 0


def _checkpoint_path(path: Path) -> Path:
    """A checkpoint file, or a run directory: the checkpoint it evaluated (config.json's final_checkpoint,
    fair_best by default), else its last.pt."""
    if not path.is_dir():
        return path
    from .runs import RunDir

    run = RunDir(path)
    which = run.read_config().get("final_checkpoint", "fair_best") if run.config.is_file() else "fair_best"
    found = run.checkpoint_or_last(which)
    if found is not None:
        return found
    raise UsageError(f"--checkpoint {path} is a directory without {which}.pt or last.pt; name a checkpoint "
                     f"file or a run directory of a trained run")


def _study(args) -> int:
    from .study import run_study

    if args.rehearse:
        from .rehearse import rehearse

        return rehearse(args.preset, args.set, out_root=args.out, tflops=args.tflops)
    from .sweep import preset_precisions

    # every run's config is built (method names included) before any trains, then checked for a mix
    mixed = preset_precisions(args.preset, args.set, Path(args.out).resolve())
    if mixed:
        print(f"study: {mixed}")
    return run_study(args.preset, overrides=args.set, force=args.force, out_root=args.out)


def _sweep(args) -> int:
    """Every training of a preset: local workers or one submitit (Slurm) job per run."""
    import os

    from .plan import study_plan
    from .presets import given_preset
    from .sweep import plan_precisions, sweep

    overrides = list(args.set)
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seeds {args.seeds!r}: give a comma list of integers such as 0,1,2") from None
        overrides.append(f"seeds={seeds}")
    out = Path(args.out)
    if not out.is_dir():
        raise UsageError(f"--out {out} is not a folder")
    args.preset = given_preset(args.preset)   # a preset path is read from where it was given
    os.chdir(out)  # run_root and the teachers' paths are relative to it, as in `absld study --out`
    jobs = study_plan(args.preset, overrides)
    if args.list:
        states = {j.key: j.status() for j in jobs}
        for j in jobs:
            print(f"{states[j.key]:10s} {j.key:32s} after {', '.join(j.deps) or '-'}")
        _print_temperature_budgets(jobs)
        mixed = plan_precisions(jobs, states)
        if mixed:
            print(mixed)
        return 0
    if not (args.hours * 60 >= 1):
        raise UsageError(f"--hours {args.hours:g}: each job's time limit must be at least one minute (--hours 0.02)")
    slurm = {"cluster": "local" if args.executor == "submitit-local" else None, "partition": args.partition,
             "account": args.account, "qos": args.qos, "gpus_per_node": args.gpus, "mem_gb": args.mem_gb,
             "timeout_min": int(args.hours * 60), "max_parallel": args.max_parallel}
    if args.cpus:
        slurm["cpus_per_task"] = args.cpus
    log_root = (Path(jobs[0].config["out_dir"]).parent if jobs else Path("runs")) / "sweep" / "logs"
    res = sweep(jobs, "submitit" if args.executor.startswith("submitit") else "local", workers=args.workers,
                threads=args.threads, log_root=log_root, slurm=slurm)
    print(f"logs: {log_root}; render the tables and figures with: absld study --preset {args.preset}"
          + "".join(f" --set {o}" for o in overrides))
    return 0 if res.ok else 1


def _summary(args) -> int:
    from .report import summarise_preset

    md, csv = summarise_preset(args.preset, args.set, out_root=args.out)
    print(md.read_text())
    print(f"written: {md}, {csv}, {md.parent / 'per_seed.csv'}")
    return 0


def _print_temperature_budgets(jobs) -> None:
    """For each adaptive-temperature run of the plan's first seed: its updates and total travel against
    the paper's (schedule.describe_travel)."""
    from .config import OptimConfig
    from .schedule import describe_travel

    first = min((j.seed for j in jobs), default=0)
    for j in jobs:
        m = j.config.get("method", {})
        if j.seed == first and "eta" in m and j.pair is None:
            o = j.config["optim"]
            cfg = OptimConfig(epochs=int(o["epochs"]), schedule=o.get("schedule", "paper300"))
            print(f"temperatures of {j.label}: {describe_travel(cfg, float(m['eta']), m.get('eta_follows_lr', True))}")


def fraction(text: str) -> float:
    """A number, or a fraction as people write radii: 8/255."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (write 8/255 or 0.0314)") from None


def _methods(args) -> int:
    """The registered methods and their options (the registry is the only list)."""
    from dataclasses import MISSING, fields

    from .methods import registry

    for name in registry.names():
        cls = registry.get(name)
        tags = [t for t, on in (("needs a teacher", cls.needs_teacher), ("study student", cls.in_study)) if on]
        print(f"{name}  ({cls.__module__}){'  - ' + ', '.join(tags) if tags else ''}")
        for f in fields(cls.options_class):
            default = f.default if f.default is not MISSING else "(required)"
            print(f"    {f.name} = {default!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="absld", description="Adversarial robust fairness: ABSLD, RSLAD, HAM")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    t = sub.add_parser("train", help="train one run from a YAML config", parents=[common])
    t.add_argument("--config", required=True, help="YAML/JSON training config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. optim.lr=0.05 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start again, deleting the run's record (only a run "
                                                            "directory's own files are ever deleted)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="class-wise accuracy and robustness of a checkpoint", parents=[common])
    e.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run directory (its fair_best.pt)")
    e.add_argument("--dataset", required=True, help="cifar10, cifar100, svhn, imagefolder, digits, synthetic")
    e.add_argument("--root", default=None, help="dataset folder or archive")
    e.add_argument("--download", action="store_true", help="fetch the official dataset files into --root "
                   "(cifar10, cifar100, svhn; checked against their checksums)")
    e.add_argument("--attacks", default=",".join(DEFAULT_ATTACK.test_attacks),
                   help="comma list: clean,fgsm,pgdN,cwN,aa,aa:apgd-ce+... (default: %(default)s)")
    e.add_argument("--eps", type=fraction, default=DEFAULT_ATTACK.eps,
                   help="L-inf radius in [0,1] pixel units; 8/255 may be written as such (default 8/255)")
    e.add_argument("--alpha", type=fraction, default=DEFAULT_ATTACK.eval_alpha,
                   help="PGD/CW step in [0,1] pixel units (default %(default)s)")
    e.add_argument("--per-class", type=int, default=None, help="evaluate on a class-balanced test subset")
    e.add_argument("--aa-iters", type=int, default=None, help="AutoAttack iterations (fewer for CPU runs)")
    e.add_argument("--model", default=None, help="architecture, for checkpoints that do not record it")
    e.add_argument("--num-classes", type=int, default=None)
    e.add_argument("--width", type=int, default=None, help="WRN widen factor or small_cnn channels, for such checkpoints")
    e.add_argument("--depth", type=int, default=None)
    e.add_argument("--channels", type=int, default=None,
                   help="resnet18 / preact_resnet18 first-stage channels, for such checkpoints (default 64)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--out", default=None, help="save the table (.json or .csv)")
    e.set_defaults(func=_eval)

    s = sub.add_parser("study", help="run the notebooks of a preset with papermill", parents=[common])
    s.add_argument("--preset", default="smoke", help=f"{', '.join(_presets())}, or a path to a preset YAML")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset parameter")
    s.add_argument("--force", action="store_true", help="re-run notebooks even when nothing changed")
    s.add_argument("--out", default=".", help="where runs/ and figures/ go (default: here)")
    s.add_argument("--rehearse", action="store_true",
                   help="print the real run's cost, then run every notebook shrunk for a CPU (minutes) into "
                        "<out>/rehearse/: the preset's configuration and code paths, a few batches and epochs")
    s.add_argument("--tflops", type=float, default=100.0,
                   help="with --rehearse: assumed sustained TFLOP/s for the time estimate (default 100)")
    s.set_defaults(func=_study)

    w = sub.add_parser("sweep", help="train every run of a preset (local workers or Slurm via submitit)",
                       parents=[common])
    w.add_argument("--preset", default="smoke", help=f"{', '.join(_presets())}, or a path to a preset YAML")
    w.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset parameter")
    w.add_argument("--seeds", default=None, help="comma list of seeds (default: the preset's)")
    w.add_argument("--executor", default="local", choices=("local", "submitit", "submitit-local"),
                   help="local worker processes (default); submitit: one Slurm job per run; submitit-local: "
                        "submitit's local executor (testing)")
    w.add_argument("--workers", type=int, default=None, help="local: parallel workers (default: cores / threads)")
    w.add_argument("--threads", type=int, default=None, help="local: threads per worker (default: the study's "
                   "threads parameter, 1 unless the preset says otherwise)")
    w.add_argument("--partition", default=None, help="Slurm partition")
    w.add_argument("--account", default=None, help="Slurm account")
    w.add_argument("--qos", default=None, help="Slurm QOS")
    w.add_argument("--gpus", type=int, default=None, help="GPUs per job")
    w.add_argument("--cpus", type=int, default=None, help="CPUs per job (also the job's torch threads)")
    w.add_argument("--mem-gb", type=int, default=None, help="memory per job in GB")
    w.add_argument("--hours", type=float, default=24.0, help="time limit per job; a timed-out job is requeued "
                                                             "and resumes from last.pt (default 24)")
    w.add_argument("--max-parallel", type=int, default=0, help="submitit: at most this many jobs at once (0: no limit)")
    w.add_argument("--list", action="store_true", help="print the plan (each run, its state and dependencies)")
    w.add_argument("--out", default=".", help="where runs/ go (default: here), as for `absld study --out`")
    w.set_defaults(func=_sweep)

    r = sub.add_parser("summary", help="per_seed.csv and the summary with intervals from a preset's finished runs, "
                       "without the notebooks", parents=[common])
    r.add_argument("--preset", default="smoke", help="a preset name or a preset YAML")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset parameter")
    r.add_argument("--out", default=".", help="the study's root: runs/<preset> is read, figures/<preset> written")
    r.set_defaults(func=_summary)

    m = sub.add_parser("methods", help="list the registered training methods and their options", parents=[common])
    m.set_defaults(func=_methods)
    return p


def _presets() -> list[str]:
    """The presets in presets/ (the help lists what is there, not a list kept by hand)."""
    from .presets import known_presets
    return known_presets()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .methods import registry
    registry.absolute_plugin_paths()   # method files are found from here, whatever directory a command moves to
    from .config import ConfigError
    from .data import DatasetError
    from .engine import NonFiniteLossError
    from .models import CheckpointError
    from .runs import RunExistsError, RunLockedError
    from .plan import PlanError
    from .study import StudyError

    usage = (ConfigError, DatasetError, CheckpointError, RunExistsError, StudyError, PlanError, UsageError,
             FileNotFoundError, ValueError)
    try:
        return args.func(args)
    except (*usage, NonFiniteLossError, RunLockedError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, usage) else 1
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("stopped (Ctrl-C): finished epochs, runs and notebooks are kept; the same command continues "
              "from there", file=sys.stderr)
        return 130
    except OSError as e:   # the disk: full, read-only, not allowed
        if args.debug:
            traceback.print_exc()
        hint = {errno.ENOSPC: "free some space; finished epochs are kept, --resume continues from the last checkpoint",
                errno.EROFS: "the folder is on read-only storage: give --out (or out_dir) a writable folder",
                errno.EACCES: "no permission to write there: give a folder you can write to"}.get(e.errno, "")
        print(f"error: {e.strerror or e}: {e.filename or ''}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
