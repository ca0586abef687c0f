"""The training step does not make the host wait for the device.

On a GPU a step that reads a device value on the host (.item(), bool(tensor), a boolean-mask index,
a blocking host-to-device copy) stalls the CPU until the GPU has caught up, once per batch. These
tests run the engine's per-batch functions on PyTorch's "meta" device, where tensors have shapes but
no values, under a dispatch mode that records every operation that would synchronise: a host read of
a value, a data-dependent shape (nonzero), and a copy between the host and the device. No GPU needed.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from absld_core.config import TrainConfig
from absld_core.data import BatchIterator, augment_batch
from absld_core.engine import EpochTotals, MultiView, train_step, zero_loss_fn
from absld_core.methods import EpochStats, StepContext, build_method, registry
from absld_core.methods.base import DeviceMirror
from absld_core.models import build_model

META = torch.device("meta")
HOST_READS = {"_local_scalar_dense", "is_nonzero", "item", "equal"}
DATA_DEPENDENT_SHAPES = {"nonzero", "masked_select", "unique", "_unique2"}


class SyncSpy(TorchDispatchMode):
    """Records the operations that would synchronise host and device; answers them with stand-ins
    (meta tensors have no values): 1 for a host read, half of the elements for nonzero."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        # a 0-dim host tensor next to device tensors is passed by value (no copy, no wait)
        devices = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if name in HOST_READS:
            self.events.append(f"host read ({name})")
            return 1
        if name in ("index", "index_put", "index_put_") and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            self.events.append(f"data-dependent shape (boolean mask {name})")
            fake = []
            for i in args[1]:  # a k-dim mask stands for k integer indices (half of its elements)
                if i is not None and i.dtype == torch.bool:
                    fake += [torch.zeros(i.numel() // 2, dtype=torch.long, device=i.device)] * i.dim()
                else:
                    fake.append(i)
            return func(args[0], fake, *args[2:], **kwargs)
        if name in DATA_DEPENDENT_SHAPES:
            self.events.append(f"data-dependent shape ({name})")
            if name == "nonzero":
                t = args[0]
                return torch.zeros(t.numel() // 2, t.dim(), dtype=torch.long, device=t.device)
        elif len(devices) > 1:
            self.events.append(f"mixed devices ({name}: {sorted(devices)})")
        elif name == "_to_copy" and kwargs.get("device") is not None:
            target = torch.device(kwargs["device"]).type
            if target != args[0].device.type:
                self.events.append(f"copy to {target} ({name})")
        return func(*args, **kwargs)


def _method_and_context(name: str, **method):
    teacher = {"checkpoint": "unused"} if registry.get(name).needs_teacher else None
    cfg = TrainConfig.from_dict({"name": "sync", "method": {"name": name, "teacher": teacher, **method}})
    torch.manual_seed(0)
    student = build_model("small_cnn", 10).to(META)
    teacher_net = build_model("small_cnn", 10).to(META).eval().requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx = StepContext(raw=student, forward=MultiView(student), eps=8 / 255, alpha=2 / 255, steps=3, epoch=1,
                      num_classes=10, teacher=teacher_net, zero_loss=zero_loss_fn(student, MultiView(student)))
    return build_method(cfg.method, 10, META), ctx, opt


def _run_step(method, ctx, opt, totals, x, y) -> list[str]:
    """The engine's per-batch work (method step, loss, backward, optimiser, bookkeeping), spied on."""
    with SyncSpy() as spy:
        train_step(method, x, y, ctx, opt, totals)
    return spy.events


def _batch(n=8):
    return torch.rand(n, 3, 32, 32, device=META), torch.arange(n, device=META) % 10


def test_the_spy_sees_what_synchronises():
    """The detector itself: each kind of synchronisation is reported, plain device work is not."""
    x = torch.rand(4, 3, device=META)
    with SyncSpy() as spy:
        (x * 2).sum()
    assert spy.events == []
    cases = [lambda: (x > 0).any().item(), lambda: x[x > 0], lambda: x[(x > 0).all(1)], lambda: x.nonzero(),
             lambda: x + torch.ones(3), lambda: x.to("cpu"), lambda: bool((x > 0).all()),
             lambda: x * torch.ones(4, 3).to(META), lambda: x.masked_select(x > 0)]
    for make in cases:
        with SyncSpy() as spy:
            try:
                make()
            except (RuntimeError, NotImplementedError):  # meta refuses some of these, after the spy saw them
                pass
        assert spy.events, make


def _drops_samples(name):
    return "ham_early_steps" in registry.option_names(name)


# every registered method without early dropping, and option variants that take other code paths
VARIANTS = [(n, {}) for n in registry.names() if not _drops_samples(n)] + [
    ("pgd_at", {"label_smoothing": 0.1}), ("absld", {"fair_reweight": True}),
    ("absld", {"temperature_schedule": "fixed", "tau_init_adv": [1.0] * 9 + [2.0]}),
    ("frl", {"variant": "reweight_remargin"}), ("cfa", {"base": "pgd_at"}), ("fat", {"tau": 2})]


@pytest.mark.parametrize("name,method", VARIANTS)
def test_steps_do_not_synchronise(name, method):
    m, ctx, opt = _method_and_context(name, **method)
    totals = EpochTotals(10, META)
    x, y = _batch()
    first = _run_step(m, ctx, opt, totals, x, y)
    # the only copies allowed: the temperatures (and class weights) going to the device once
    assert all(e.startswith("copy to meta") for e in first), first
    for _ in range(2):
        assert _run_step(m, ctx, opt, totals, x, y) == []


def test_new_temperatures_go_to_the_device_once_per_epoch():
    m, ctx, opt = _method_and_context("absld")
    totals = EpochTotals(10, META)
    x, y = _batch()
    _run_step(m, ctx, opt, totals, x, y)
    m.after_epoch(EpochStats(1, torch.linspace(0.5, 2.0, 10), torch.linspace(2.0, 0.5, 10)))
    after = _run_step(m, ctx, opt, totals, x, y)
    assert after == ["copy to meta (_to_copy)"] * 2, after
    assert _run_step(m, ctx, opt, totals, x, y) == []


@pytest.mark.parametrize("name", [n for n in registry.names() if _drops_samples(n)])
def test_ham_waits_only_for_the_hard_set_size(name):
    """Early dropping makes the batch shape depend on the data: exactly one wait per step."""
    m, ctx, opt = _method_and_context(name, ham_start_epoch=1)
    totals = EpochTotals(10, META)
    x, y = _batch()
    _run_step(m, ctx, opt, totals, x, y)
    assert _run_step(m, ctx, opt, totals, x, y) == ["data-dependent shape (nonzero)"]


def test_batches_come_from_the_device_without_waiting():
    it = BatchIterator(torch.zeros(64, 3, 32, 32, dtype=torch.uint8), torch.arange(64) % 10, 16, device=META)
    with SyncSpy() as spy:
        batches = iter(it)
        next(batches)  # the epoch's shuffled order goes to the device once
        assert spy.events == ["copy to meta (_to_copy)"]
        for _ in batches:
            pass
    assert spy.events == ["copy to meta (_to_copy)"]
    with SyncSpy() as spy:
        augment_batch(torch.rand(8, 3, 32, 32, device=META))
    assert spy.events == []


def test_device_mirror_copies_only_when_the_host_tensor_changes():
    t = torch.tensor([1.0, 2.0])
    mirror = DeviceMirror()

    def copies(tensor):
        with SyncSpy() as spy:
            out = mirror.get(tensor, META)
        assert out.shape == tensor.shape and out.device == META
        return len(spy.events)

    assert copies(t) == 1
    assert copies(t) == 0  # cached
    t[0] = 5.0
    assert copies(t) == 1  # an in-place edit is seen
    assert copies(torch.tensor([3.0, 4.0])) == 1  # so is a new tensor
