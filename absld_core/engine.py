"""The one training engine: every teacher and student method runs through `train(config)`.

    run_dir = train({"name": "my-run", "method": {"name": NAME, "teacher": {"checkpoint": "runs/t"}}})

Per epoch: the method's steps, class-wise risks (vectorised), the method's bookkeeping (temperatures),
one line in history.jsonl, a class-wise validation evaluation every `eval_every` epochs that keeps the
best (Avg PGD) and fair-best (Avg + Worst PGD) checkpoints, and last.pt for resuming. At the end the
chosen checkpoint is evaluated class-wise on the test set into metrics.json.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attacks import model_mode
from .checks import check_device  # noqa: F401  (engine.check_device: where callers have found it)
from .config import ConfigError, TrainConfig, config_changes, normalised
from .data import BatchIterator, Dataset, load_dataset
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, init_from_env
from .evaluate import evaluate, evaluate_per_image, format_table, load_table, save_per_image, save_table
from .methods import EpochStart, EpochStats, Method, StepContext, StepOutput, build_method
from .models import (build_model, check_fits, load_checkpoint, load_state_dict, model_from_checkpoint,
                     save_checkpoint)
from .models.checkpoint import atomic_torch_save
from . import provenance, trackers
from .precision import Precision, for_resume as precision_for_resume, resolve as resolve_precision
from .runs import RunDir, RunExistsError, RunLockedError, write_json_atomic
from .schedule import lr_at, milestone_epochs, next_lr_factor

__all__ = ["train", "NonFiniteLossError", "RunExistsError", "RunLockedError", "prepare_data", "load_teacher",
           "MultiView", "check_device", "Session", "make_session", "reevaluate"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite, or grew past `max_loss`; the run directory keeps the last good
    checkpoint."""


class MultiView(nn.Module):
    """forward(*batches) -> one logits tensor per batch, in a single module call, so that methods with
    two training passes (adversarial and clean) work under DistributedDataParallel."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *xs):
        return tuple(self.model(x) for x in xs)


# ---------------------------------------------------------------------------------------- setup
def prepare_data(cfg: TrainConfig) -> Dataset:
    d = cfg.data
    ds = load_dataset(d.dataset, d.root, **d.options)
    if d.train_per_class:
        ds = ds.train_subset(d.train_per_class, seed=d.split_seed)
    if d.val_per_class:
        ds = ds.split_validation(d.val_per_class, seed=d.split_seed)
    if d.test_per_class:
        tx, ty = ds.test_subset(d.test_per_class, seed=d.split_seed)
        ds.test_x, ds.test_y = tx, ty
    return ds


def model_meta(cfg: TrainConfig, ds: Dataset) -> dict:
    m = cfg.model
    return {"arch": m.arch, "num_classes": ds.num_classes, "in_channels": ds.image_shape[0], "width": m.width,
            "channels": m.channels, "depth": m.depth, "norm": m.norm, "mean": list(m.mean) if m.mean else None,
            "std": list(m.std) if m.std else None,
            "classes": ds.classes, "method": cfg.method.name, "run": cfg.name}


def build_student(cfg: TrainConfig, ds: Dataset) -> nn.Module:
    m = cfg.model
    kw = {"mean": m.mean, "std": m.std, "depth": m.depth, "norm": m.norm}
    for k in ("width", "channels"):
        if getattr(m, k) is not None:
            kw[k] = getattr(m, k)
    return build_model(m.arch, ds.num_classes, ds.image_shape[0], **kw)


def load_teacher(cfg: TrainConfig, num_classes: int, device: torch.device, in_channels: int) -> nn.Module:
    """The frozen teacher from a checkpoint file or a run directory (its fair_best, best or last)."""
    t = cfg.method.teacher
    path = Path(t.checkpoint)
    if path.is_dir():
        found = RunDir(path).checkpoint_or_last(t.which)
        if found is None:
            raise FileNotFoundError(f"method.teacher.checkpoint={str(path)!r} is a directory without "
                                    f"{t.which}.pt or last.pt; train the teacher first or name a checkpoint file")
        path = found
    elif not path.is_file():
        raise FileNotFoundError(f"method.teacher.checkpoint={str(path)!r} does not exist")
    teacher, meta = model_from_checkpoint(path, device, defaults={"num_classes": num_classes, "in_channels": in_channels},
                                          arch=t.arch, width=t.width, depth=t.depth)
    check_fits(meta, num_classes, in_channels, f"teacher {path}")
    teacher.eval().requires_grad_(False)
    return teacher


def make_optimizer(model: nn.Module, optim, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum and weight decay; the fused CUDA kernel where this torch has one."""
    fused = device.type == "cuda" and "fused" in inspect.signature(torch.optim.SGD).parameters
    return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay, **({"fused": True} if fused else {}))


def _rng_state(device: torch.device) -> dict:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def _set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


def _restore_rng(ck: dict, info: DistInfo, device: torch.device, seed: int) -> None:
    """Each process continues its own random stream. A checkpoint from another number of processes
    has no stream for some ranks: those are seeded afresh (from seed, rank and epoch), so that no two
    processes draw the same attack starts."""
    states = ck.get("rng_per_rank") or [ck["rng"]]
    if len(states) == info.world_size:
        _set_rng_state(states[info.rank], device)
    elif info.rank == 0:
        _set_rng_state(states[0], device)
    else:
        torch.manual_seed(seed + info.rank + 1_000_003 * int(ck["epoch"]))


def _refuse_foreign(run: RunDir) -> None:
    """Never train into (and never delete) a directory that holds anything but this project's run files."""
    foreign = run.foreign_entries()
    if foreign:
        raise RunExistsError(f"{run.path} is not a run directory of this project: it holds "
                             f"{', '.join(foreign[:8])}{' ...' if len(foreign) > 8 else ''}; nothing was changed "
                             f"there. Choose another name or out_dir")


def _check_out_dir(cfg: TrainConfig) -> None:
    """The run's folder can be made: the nearest existing ancestor is a folder (not a file, not a
    dangling or looping symbolic link)."""
    p = Path(cfg.run_dir)
    try:
        for a in (p, *p.parents):
            if a.is_symlink() and not a.exists():
                raise ConfigError(f"out_dir={cfg.out_dir!r}: {a} is a symbolic link that leads nowhere (or to "
                                  f"itself); point out_dir at a folder")
            if a.exists():
                if not a.is_dir():
                    raise ConfigError(f"out_dir={cfg.out_dir!r}: {a} is a file, not a folder; choose another out_dir")
                return
    except OSError as e:
        raise ConfigError(f"out_dir={cfg.out_dir!r} cannot be used: {e.strerror} ({e.filename})") from None


def _prepare_run_dir(cfg: TrainConfig, run: RunDir, info: DistInfo) -> bool:
    """Returns True when the run should resume from last.pt; raises when the directory is taken.
    A fresh start in a directory of an unfinished attempt clears that attempt's record first."""
    if not run.exists():
        return False
    if cfg.overwrite:
        if info.is_main:
            run.clear()
        barrier(info)
        return False
    if cfg.resume:
        if run.last.is_file():
            _refuse_changed_config(cfg, run)
            return True
        if info.is_main:  # killed before its first checkpoint: nothing to resume, start again cleanly
            run.clear()
        barrier(info)
        return False
    what = "a finished run" if run.finished() else "an unfinished run"
    raise RunExistsError(f"{run.path} already holds {what}; pass resume=True to continue it (or use it as it is) "
                         f"or overwrite=True to start again")


def _refuse_changed_config(cfg: TrainConfig, run: RunDir) -> None:
    """A resume continues the run that was started: every field that can change its results must agree."""
    if not run.config.is_file():
        return
    changed = config_changes(normalised(run.read_config()), cfg.to_json())
    if changed:
        raise ConfigError(f"cannot resume {run.path} with another configuration: {', '.join(changed[:10])} "
                          f"differ from the run's config.json. Resume with the recorded values (absld train "
                          f"--config {run.config} --resume), or start a new run (another name, or overwrite)")


# ---------------------------------------------------------------------------------------- training
def train(config, *, info: DistInfo | None = None) -> Path:
    """Train one run described by `config` (dict or TrainConfig); returns the run directory."""
    cfg = TrainConfig.from_dict(config)
    check_device(cfg.device)
    info = info or init_from_env(cfg.device)
    device = torch.device(cfg.device if not (info.enabled and cfg.device.startswith("cuda"))
                          else f"cuda:{info.local_rank}")
    _check_out_dir(cfg)
    run = RunDir(cfg.run_dir)
    _refuse_foreign(run)
    if cfg.resume and run.finished() and run.last.is_file():
        _refuse_changed_config(cfg, run)   # reading a finished run takes no lock (read-only storage works)
        return run.path
    lock = run.lock() if info.is_main else None  # one writer per run directory, for the whole run
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)  # the run's own count (recorded), restored afterwards
    try:
        return _train(cfg, run, info, device)
    finally:
        torch.set_num_threads(threads)
        if lock is not None:
            lock.release()


class Session:
    """Everything one run trains with, set up once: the student (and its forward: compiled, MultiView,
    DDP), the method, the teacher, the optimiser, the precision contexts and the data. `epoch(e)` trains
    one epoch and returns its history record and statistics; `train` runs a whole run with it, and the
    rehearsal's cost count and the training benchmark time its epochs the same way.

        session = make_session(cfg, ds, device)
        record, stats = session.epoch(1, loader)     # loader: a BatchIterator (default: the training set)
    """

    def __init__(self, cfg: TrainConfig, ds, device: torch.device, model: nn.Module, method: Method,
                 teacher: nn.Module | None, opt, info: DistInfo, prec, loader=None, wrap=None):
        self.cfg, self.ds, self.device, self.model, self.method = cfg, ds, device, model, method
        self.teacher, self.opt, self.info, self.prec, self.loader, self._wrap = teacher, opt, info, prec, loader, wrap
        self.autocast, self.attack_dtype = prec.contexts(device)
        self._net = self._fwd = None

    def _forward(self):
        """compile, MultiView and DDP around the student, made at the first epoch (after a resume has
        loaded its weights into the plain module)."""
        if self._fwd is None:
            self._net = torch.compile(self.model) if self.cfg.compile else self.model
            fwd: nn.Module = MultiView(self._net)
            if self.info.enabled:
                from torch.nn.parallel import DistributedDataParallel as DDP
                fwd = DDP(fwd, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                          broadcast_buffers=False)
            self._fwd = self._wrap(fwd) if self._wrap is not None else fwd
        return self._net, self._fwd

    def epoch(self, epoch: int, loader=None) -> tuple[dict, EpochStats]:
        """Train 1-based `epoch` over `loader` (default: the session's training loader)."""
        net, fwd = self._forward()
        return _train_epoch(self, epoch, net, fwd, loader if loader is not None else self.loader)


_LOAD = object()


def make_session(cfg: TrainConfig, ds, device: torch.device, *, model: nn.Module | None = None,
                 teacher=_LOAD, info: DistInfo | None = None, loader=None, wrap=None,
                 prec: Precision | None = None) -> Session:
    """A Session for `cfg` on data `ds` (a Dataset, or anything with num_classes, image_shape, val_x,
    val_y): the student (built from cfg unless given), the method, the teacher (loaded from
    cfg.method.teacher unless given; None for none) and the optimiser, in the run's precision and memory
    format (prec, or the one cfg resolves to on `device`). wrap(forward) may wrap the training forward
    (the rehearsal counts what it saves)."""
    info = info or DistInfo()
    prec = prec or resolve_precision(cfg, device)
    mf = torch.channels_last if prec.channels_last else torch.contiguous_format
    model = (model if model is not None else build_student(cfg, ds)).to(device, memory_format=mf)
    method: Method = build_method(cfg.method, ds.num_classes, device, cfg)
    if teacher is _LOAD:
        teacher = load_teacher(cfg, ds.num_classes, device, ds.image_shape[0]) if method.needs_teacher else None
    if teacher is not None:
        teacher = teacher.to(memory_format=mf)
    opt = make_optimizer(model, cfg.optim, device)
    return Session(cfg, ds, device, model, method, teacher, opt, info, prec, loader, wrap)


def _train(cfg: TrainConfig, run: RunDir, info: DistInfo, device: torch.device) -> Path:
    resume = _prepare_run_dir(cfg, run, info)
    if resume and run.finished():
        return run.path
    barrier(info)
    torch.manual_seed(cfg.seed + info.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels

    prec, differs = precision_for_resume(cfg, device, run.read_config(), str(run.config)) if resume else (None, None)
    ds = prepare_data(cfg)
    meta = model_meta(cfg, ds)
    session = make_session(cfg, ds, device, info=info, prec=prec)
    model, method, opt, prec = session.model, session.method, session.opt, session.prec
    mf = torch.channels_last if prec.channels_last else torch.contiguous_format
    session.loader = loader = BatchIterator(ds.train_x, ds.train_y, cfg.optim.batch_size, shuffle=True,
                                            augment=cfg.data.augment, pad=cfg.data.pad, seed=cfg.seed, device=device,
                                            memory_format=mf, rank=info.rank, world_size=info.world_size,
                                            drop_last=info.enabled)
    if len(loader) == 0:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} leaves no batch for {len(ds.train_y)} "
                         f"training images over {info.world_size} process(es)")

    start, best = 1, {"best": -1.0, "fair_best": -1.0}
    if cfg.model.init_checkpoint and not resume:
        init = Path(cfg.model.init_checkpoint)
        if not init.is_file():
            raise FileNotFoundError(f"model.init_checkpoint={str(init)!r} does not exist")
        load_state_dict(model, load_checkpoint(init, device)["model"], source=str(init))
    if resume:
        ck = load_checkpoint(run.last, device)
        load_state_dict(model, ck["model"], source=str(run.last))
        opt.load_state_dict(ck["optimizer"])
        method.load_state_dict(ck["method"])
        _restore_rng(ck, info, device, cfg.seed)
        start, best = int(ck["epoch"]) + 1, dict(ck["best"])
        if info.is_main:
            run.truncate_history(int(ck["epoch"]), json.loads(ck["record"]) if ck.get("record") else None)
    watchers = _trackers(cfg, run, ds) if info.is_main else []
    if info.is_main:
        write_json_atomic(run.config, {**cfg.to_dict(), "resolved": {
                                       "trackers": [t.name for t in watchers], "num_classes": ds.num_classes,
                                       "classes": ds.classes, "image_shape": list(ds.image_shape),
                                       "train_size": len(ds.train_y), "world_size": info.world_size,
                                       "method": method.resolved(), "precision": prec.as_record(),
                                       **provenance.record(method)}})
        run.set_status("running", epoch=start - 1)
        if differs:
            print(f"{cfg.name}: {differs}", flush=True)
        if cfg.progress:
            print(f"{cfg.name}: {prec.describe()}, {torch.get_num_threads()} thread(s)", flush=True)
    if resume:
        for t in watchers:  # the curves again from the (truncated) history: none missing, none repeated
            t.restart(run.history())

    try:
        for epoch in range(start, cfg.optim.epochs + 1):
            record, stats = session.epoch(epoch)
            if info.is_main and validates(cfg, epoch, method):
                record["val"] = stats.val = _validate(cfg, model, ds, device, run, meta, epoch, best)
                record.update(method.after_validation(stats))
                _save_averaged(method, run, meta, epoch)
            rng = all_gather_objects(_rng_state(device), info)  # every process's stream, for an exact resume
            if info.is_main:
                # last.pt holds its epoch's history record too: whichever of the two writes a kill
                # interrupts, a resume makes history.jsonl agree with the checkpoint
                run.append_history(record)
                atomic_torch_save({"model": model.state_dict(), "meta": meta, "optimizer": opt.state_dict(),
                                   "method": method.state_dict(), "rng": rng[0], "rng_per_rank": rng,
                                   "epoch": epoch, "best": best, "record": json.dumps(record)}, run.last)
                run.set_status("running", epoch=epoch)
                for t in watchers:
                    t.epoch(record)
            barrier(info)
            if cfg.stop_after is not None and epoch >= cfg.stop_after and epoch < cfg.optim.epochs:
                if info.is_main:
                    run.set_status("stopped", epoch=epoch)
                return run.path
        if info.is_main:
            _final_eval(cfg, ds, device, run, averaged=method.averaged_weights() is not None)
            for t in watchers:
                t.final("\n".join("    " + line for line in format_table(load_table(run.metrics)).splitlines()))
        barrier(info)
    except BaseException as e:
        if info.is_main:
            # status.json's epoch is written right after each last.pt, so it names that checkpoint's epoch
            try:
                done = run.status().get("epoch") if run.last.is_file() else None
                if isinstance(e, (KeyboardInterrupt, SystemExit)):   # Ctrl-C, or SIGTERM from a sweep
                    run.set_status("stopped", reason="interrupted", last_checkpoint_epoch=done)
                else:
                    run.set_status("failed", error=f"{type(e).__name__}: {e}", last_checkpoint_epoch=done)
            except (OSError, ValueError):
                pass   # a full or read-only disk cannot record the failure; the error itself says what happened
        raise
    finally:
        for t in watchers:
            t.close()
    return run.path


def _trackers(cfg: TrainConfig, run: RunDir, ds) -> list:
    """The run's trackers; one whose package is missing is left out with a warning (and the run's
    resolved.trackers says which ran)."""
    out = []
    for name in cfg.trackers:
        try:
            out += trackers.build([name], run.path, ds.classes, cfg.name)
        except trackers.TrackerError as e:
            import warnings
            warnings.warn(f"{cfg.name}: {e}; training without it", stacklevel=3)
    return out


def validates(cfg: TrainConfig, epoch: int, method: Method | None = None) -> bool:
    """Validation (and checkpoint selection) after `epoch`: every eval_every epochs, at the end, and,
    as the ABSLD and RSLAD releases do, after every epoch from the last one at the first lr (epoch 215
    of 300: `epoch >= 215`) on (and every epoch for a method
    whose after_validation hook needs it)."""
    if epoch % cfg.eval_every == 0 or epoch == cfg.optim.epochs or (method is not None and method.validate_every_epoch):
        return True
    decays = milestone_epochs(cfg.optim)
    return cfg.eval_every_epoch_after_decay and bool(decays) and epoch >= decays[0]


class EpochTotals:
    """An epoch's sums, kept on the device so that a step never waits for the host: class risks and
    correct counts (adversarial and clean), class counts, early dropping's kept examples and the loss."""

    def __init__(self, C: int, device: torch.device):
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.risk_adv, self.risk_nat, self.count = z(C), z(C), z(C)
        self.correct_adv, self.correct_nat = z(C), z(C)
        self.kept, self.loss_sum, self.n_loss = z(()), z(()), z(())
        self.has_adv = self.has_nat = self.has_kept = False

    def tensors(self):
        return (self.risk_adv, self.risk_nat, self.count, self.correct_adv, self.correct_nat, self.kept,
                self.loss_sum, self.n_loss)

    def add(self, out: StepOutput, y: torch.Tensor) -> None:
        """One batch: its class counts (the whole batch), and the class risks and correct counts of the
        logits the step returned (a dropped sample adds nothing: zero risk)."""
        self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        if out.kept is not None:
            self.kept += out.kept.sum()
            self.has_kept = True
        if out.loss is None:
            return
        n = len(out.labels) if out.labels is not None else len(y)  # the samples the loss is a mean over
        self.loss_sum += out.loss.detach().double() * (out.loss_scale if out.loss_scale is not None else n)
        self.n_loss += n
        for z, risk, correct, kind in ((out.adv_logits, self.risk_adv, self.correct_adv, "adv"),
                                       (out.nat_logits, self.risk_nat, self.correct_nat, "nat")):
            if z is not None:
                z = z.detach().float()
                risk.index_add_(0, out.labels, F.cross_entropy(z, out.labels, reduction="none").double())
                correct.index_add_(0, out.labels, (z.argmax(1) == out.labels).double())
                setattr(self, f"has_{kind}", True)


def zero_loss_fn(raw: nn.Module, fwd):
    """For a process with nothing to learn from its share of a batch (HAM under DDP): a zero loss through
    one eval-mode pass, so that it joins the gradient all-reduce without moving BatchNorm statistics."""
    def zero_loss(x):
        with model_mode(raw, train=False):
            (z,) = fwd(x[:1])
        return z.float().sum() * 0.0
    return zero_loss


def train_step(method: Method, x: torch.Tensor, y: torch.Tensor, ctx: StepContext, opt, totals: EpochTotals,
               check=None) -> tuple[StepOutput, float | None]:
    """One training step, top to bottom: the method's loss for the batch, backward, the optimiser step,
    the device-side bookkeeping. Nothing here waits for the device except, when check is given, the one
    read of the loss value, which check(value) may refuse (raise) before any weight moves; the value is
    returned (with the step's output) for the progress bar. A loss of None: no process learns from this
    batch, so none steps."""
    out = method.step(x, y, ctx)
    value = None
    if check is not None and out.loss is not None:
        value = out.loss.item()
        check(value)
    if out.loss is not None:
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        method.after_step(x, y, ctx)
    totals.add(out, y)
    return out, value


def _train_epoch(session: Session, epoch: int, net, fwd, loader) -> tuple[dict, EpochStats]:
    cfg, ds, model, method, opt, device, info = (session.cfg, session.ds, session.model, session.method, session.opt,
                                                 session.device, session.info)
    teacher, autocast, attack_dtype = session.teacher, session.autocast, session.attack_dtype
    C = ds.num_classes
    loader.set_epoch(epoch)
    method.before_epoch(EpochStart(epoch, model, ds.val_x, ds.val_y, device, cfg.attack.eps, cfg.attack.alpha))
    model.train()
    nb = len(loader)
    totals = EpochTotals(C, device)
    # the finite-loss check reads the loss on the host; on a GPU only every 25th batch (and the last)
    check_every = 1 if device.type == "cpu" else 25
    ctx = StepContext(raw=net, forward=fwd, eps=cfg.attack.eps, alpha=cfg.attack.alpha, steps=cfg.attack.steps,
                      epoch=epoch, num_classes=C, teacher=teacher, autocast=autocast, attack_dtype=attack_dtype,
                      kl_init_std=cfg.attack.kl_init_std, world_size=info.world_size,
                      sum_all=_sum_all(info, device), zero_loss=zero_loss_fn(net, fwd))
    bar = tqdm(total=nb, desc=f"{cfg.name} {epoch}/{cfg.optim.epochs}", disable=not (cfg.progress and info.is_main),
               leave=False)
    t0, seen = time.perf_counter(), 0
    lr = cfg.optim.lr
    for b, (x, y) in enumerate(loader):
        lr = lr_at(cfg.optim, epoch, b, nb)
        for g in opt.param_groups:
            g["lr"] = lr
        check = (lambda v, b=b: _check_loss(v, cfg, epoch, b, nb)) if b % check_every == 0 or b == nb - 1 else None
        _, value = train_step(method, x, y, ctx, opt, totals, check)
        seen += len(y)
        if value is not None and cfg.progress and info.is_main and (b % max(10, check_every) == 0 or b == nb - 1):
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.update(1)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    for t in totals.tensors():
        all_reduce_sum(t, info)
    denom = totals.count.clamp_min(1)
    per_class = lambda t, has: (t / denom).cpu() if has else None  # noqa: E731
    r_adv, r_nat = per_class(totals.risk_adv, totals.has_adv), per_class(totals.risk_nat, totals.has_nat)
    stats = EpochStats(epoch, r_adv if r_adv is not None else torch.zeros(C),
                       r_nat if r_nat is not None else torch.zeros(C),
                       acc_adv=per_class(totals.correct_adv, totals.has_adv),
                       acc_nat=per_class(totals.correct_nat, totals.has_nat),
                       lr_factor=next_lr_factor(cfg.optim, epoch), model=model,
                       reduce=lambda t: all_reduce_sum(t, info), class_count=totals.count.cpu())
    extra = method.after_epoch(stats)
    total = float(totals.count.sum())
    record = {"epoch": epoch, "lr": lr, "loss": float(totals.loss_sum / totals.n_loss.clamp_min(1)),
              "seconds": seconds, "images_per_second": total / seconds if seconds > 0 else None, "samples": total}
    if r_adv is not None:
        record["class_risk_adv"] = r_adv.tolist()
    if r_nat is not None:
        record["class_risk_nat"] = r_nat.tolist()
    if totals.has_kept:
        record["kept_fraction"] = float(totals.kept) / total
    record.update(extra)
    return record, stats


def _sum_all(info: DistInfo, device: torch.device):
    """A Python number summed over the processes (one all-reduce and one host read under DDP)."""
    if not info.enabled:
        return lambda v: v

    def total(v):
        t = torch.tensor(float(v), dtype=torch.float64, device=device)
        return all_reduce_sum(t, info).item()
    return total


def _check_loss(value: float, cfg: TrainConfig, epoch: int, b: int, nb: int) -> None:
    if math.isfinite(value) and abs(value) <= cfg.max_loss:
        return
    what = "non-finite loss" if not math.isfinite(value) else f"diverging loss (above max_loss={cfg.max_loss:g})"
    kept = (f"the run keeps its last good checkpoint (epoch {epoch - 1}); lower optim.lr or check the inputs, "
            f"then resume" if epoch > 1 else "no checkpoint was written yet (it failed in epoch 1); lower optim.lr "
                                             "or check the inputs, then start again")
    raise NonFiniteLossError(f"{what} ({value:.4g}) at epoch {epoch}, batch {b + 1} of {nb}; {kept}")


def _validate(cfg, model, ds, device, run, meta, epoch, best) -> dict:
    """Class-wise evaluation on the validation split (selection='test': on the test set, as the releases
    do); keeps best.pt and fair_best.pt."""
    x, y = (ds.test_x, ds.test_y) if cfg.selection == "test" else (ds.val_x, ds.val_y)
    if x is None:
        return {}
    df = evaluate(model, x, y, cfg.attack.val_attacks, classes=ds.classes, eps=cfg.attack.eps,
                  pgd_alpha=cfg.attack.eval_alpha, device=device, progress=False)
    robust = [a for a in df.index if a != "clean"]
    key = robust[-1] if robust else "clean"
    avg, worst = float(df.loc[key, "avg"]), float(df.loc[key, "worst"])
    scores = {"best": avg, "fair_best": avg + worst}
    for which, score in scores.items():
        if score > best[which]:
            best[which] = score
            save_checkpoint(run.checkpoint(which), model, meta={**meta, "epoch": epoch, "selected_by": key,
                                                                "selected_on": cfg.selection, "score": score})
    return {a: {"avg": float(df.loc[a, "avg"]), "worst": float(df.loc[a, "worst"]),
                "worst_class": str(df.loc[a, "worst_class"]), "nsd": float(df.loc[a, "nsd"]),
                "class_acc": [float(df.loc[a, c]) for c in ds.classes]} for a in df.index}


def _save_averaged(method: Method, run: RunDir, meta: dict, epoch: int) -> None:
    """A method that averages weights (CFA's FAWA) has them evaluated: averaged.pt, kept up to date."""
    avg = method.averaged_weights()
    if avg is not None:
        atomic_torch_save({"model": avg, "meta": {**meta, "epoch": epoch, "averaged": True}}, run.checkpoint("averaged"))


def _final_eval(cfg, ds, device, run: RunDir, averaged: bool) -> None:
    """The chosen checkpoint (the averaged weights of a method that averages) evaluated class-wise on
    the test set: per_image.npz, then metrics.json and metrics.csv (whose presence means finished)."""
    path = run.checkpoint_or_last("averaged" if averaged else cfg.final_checkpoint)
    model, ck_meta = model_from_checkpoint(path, device)
    ck_epoch = ck_meta.get("epoch", cfg.optim.epochs if path == run.last else None)
    df, correct = evaluate_per_image(
        model, ds.test_x, ds.test_y, cfg.attack.test_attacks, classes=ds.classes, eps=cfg.attack.eps,
        pgd_alpha=cfg.attack.eval_alpha, device=device, progress=cfg.progress,
        aa_opts=cfg.attack.aa_options())
    save_per_image(run.per_image, ds.test_y, correct)  # before metrics.json, whose presence means finished
    df.attrs.update({"checkpoint": path.name, "checkpoint_epoch": ck_epoch, "run": cfg.name,
                     "method": cfg.method.name, "test_size": len(ds.test_y), "selection": cfg.selection})
    save_table(df, run.metrics)
    save_table(df, run.path / "metrics.csv")
    run.set_status("finished", epoch=cfg.optim.epochs)


def reevaluate(config, changed: list[str] | None = None) -> Path:
    """Evaluate a finished run again under `config`, which differs from the run's config.json only in
    evaluation fields (config.EVALUATION_FIELDS: the test attacks, AutoAttack's budget, the final
    checkpoint): no weight moves. The new per_image.npz, metrics and config.json replace the old ones
    one file at a time, atomically, config.json last, so an interrupted re-evaluation is done again
    by the next reuse and never leaves a run that looks finished with another configuration."""
    from .config import EVALUATION_FIELDS

    cfg = TrainConfig.from_dict(config)
    device = check_device(cfg.device)
    run = RunDir(cfg.run_dir)
    if not run.finished():
        raise RunExistsError(f"{run.path} is not a finished run; only a finished run can be evaluated again")
    saved = run.read_config()
    changed = config_changes(normalised(saved), cfg.to_json()) if changed is None else changed
    training = [c for c in changed if c not in EVALUATION_FIELDS]
    if training:
        raise ConfigError(f"{run.path}: {', '.join(training)} change(s) training, not only the evaluation; "
                          f"train the run again instead")
    with run.lock():
        ds = prepare_data(cfg)
        _final_eval(cfg, ds, device, run, averaged=run.checkpoint("averaged").is_file())
        write_json_atomic(run.config, {**cfg.to_dict(), "resolved": {
            **saved.get("resolved", {}), "reevaluated": {"changed": changed, **provenance.record()}}})
    return run.path
