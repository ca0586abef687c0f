"""What can only be checked on a GPU (`pytest -m cuda`; skipped, with the reason, without CUDA): bf16
training and attacks against fp32, channels_last against the default layout, a compiled step against
eager, a training step with no host-device sync (torch.cuda.set_sync_debug_mode("error")), AutoAttack
on CUDA, and DDP with NCCL at world size 1. bench/gpu/run.sh runs them on a lent GPU.

Tolerances: one epoch of a tiny run from the same weights and data; bf16 rounds to 8 bits of mantissa,
so its losses may differ from fp32 by a few percent (stated per test), while layouts and compilation
change only the order of float32 reductions."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from absld_core import train
from absld_core.runs import RunDir
from train_helpers import tiny

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (these run on a lent GPU)")]
ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, name, method="pgd_at", **over):
    over.setdefault("optim__epochs", 2)
    return tiny(name, method, tmp_path, device="cuda", trackers=[], **over)


def _losses(run) -> list[float]:
    return [h["loss"] for h in RunDir(run).history()]


def _acc(run, attack) -> float:
    return json.loads((Path(run) / "metrics.json").read_text())["rows"][attack]["avg"]


def test_bf16_training_and_attacks_stay_close_to_fp32(tmp_path):
    fp32 = train(_cfg(tmp_path, "fp32", precision="fp32"))
    bf16 = train(_cfg(tmp_path, "bf16", precision="bf16"))
    for a, b in zip(_losses(fp32), _losses(bf16)):
        assert abs(a - b) <= 0.05 * abs(a) + 0.02, (a, b)       # within 5% (+0.02) per epoch
    assert abs(_acc(fp32, "pgd5") - _acc(bf16, "pgd5")) <= 15.0   # robust accuracy (%) on 32 test images


def test_channels_last_matches_the_default_layout(tmp_path):
    a = train(_cfg(tmp_path, "nchw", precision="fp32", channels_last=False))
    b = train(_cfg(tmp_path, "nhwc", precision="fp32", channels_last=True))
    for x, y in zip(_losses(a), _losses(b)):
        assert abs(x - y) <= 1e-3 * abs(x) + 1e-4, (x, y)


def test_a_compiled_step_matches_eager(tmp_path):
    a = train(_cfg(tmp_path, "eager", precision="fp32"))
    b = train(_cfg(tmp_path, "compiled", precision="fp32", compile=True))
    for x, y in zip(_losses(a), _losses(b)):
        assert abs(x - y) <= 1e-3 * abs(x) + 1e-4, (x, y)


@pytest.mark.parametrize("method", ["pgd_at", "trades", "absld"])
def test_a_training_step_never_waits_for_the_host(tmp_path, method):
    """The engine's train_step under set_sync_debug_mode('error'): any host-device sync raises."""
    from absld_core.config import TrainConfig
    from absld_core.engine import EpochTotals, make_session, prepare_data, train_step, zero_loss_fn
    from absld_core.methods import StepContext

    opts = {}
    if method == "absld":
        teacher = train(_cfg(tmp_path, "teacher", "natural", optim__epochs=1))
        opts = {"method": {"name": "absld", "teacher": {"checkpoint": str(teacher)}}}
    cfg = TrainConfig.from_dict(_cfg(tmp_path, "sync", method, **opts))
    device = torch.device("cuda")
    ds = prepare_data(cfg)
    s = make_session(cfg, ds, device)
    net, fwd = s._forward()
    x = ds.train_x[:16].to(device).float() / 255
    y = ds.train_y[:16].to(device)
    ctx = StepContext(raw=net, forward=fwd, eps=cfg.attack.eps, alpha=cfg.attack.alpha, steps=cfg.attack.steps,
                      epoch=1, num_classes=ds.num_classes, teacher=s.teacher, autocast=s.autocast,
                      attack_dtype=s.attack_dtype, zero_loss=zero_loss_fn(net, fwd))
    totals = EpochTotals(ds.num_classes, device)
    train_step(s.method, x, y, ctx, s.opt, totals)  # warm-up (cuDNN and allocator first calls)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(s.method, x, y, ctx, s.opt, totals)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_autoattack_runs_on_cuda(tmp_path):
    pytest.importorskip("pyautoattack")
    run = train(_cfg(tmp_path, "aa", precision="fp32", attack__test_attacks=["clean", "aa:apgd-ce+apgd-t"],
                     attack__aa_iters=5))
    rows = json.loads((Path(run) / "metrics.json").read_text())["rows"]
    assert 0 <= rows["aa:apgd-ce+apgd-t"]["avg"] <= rows["clean"]["avg"]


DDP_SCRIPT = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from absld_core.engine import MultiView
from absld_core.models import build_model
dist.init_process_group("nccl")
torch.cuda.set_device(0)
model = build_model("small_cnn", 10, 3, width=8).cuda()
fwd = DDP(MultiView(model), device_ids=[0], broadcast_buffers=False)
x, y = torch.rand(8, 3, 32, 32, device="cuda"), torch.arange(8, device="cuda") % 10
(z,) = fwd(x)
torch.nn.functional.cross_entropy(z, y).backward()
t = torch.ones(3, device="cuda")
dist.all_reduce(t)
assert dist.get_backend() == "nccl" and dist.get_world_size() == 1 and t.tolist() == [1.0, 1.0, 1.0]
assert all(p.grad is not None for p in model.parameters())
dist.destroy_process_group()
print("nccl ok")
"""


def test_ddp_with_nccl_at_world_size_one(tmp_path):
    """The engine's MultiView under DistributedDataParallel on an NCCL process group of one GPU."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "1", str(script)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "nccl ok" in out.stdout, out.stderr[-3000:]
