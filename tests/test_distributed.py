"""Multi-process training with torchrun (gloo on CPU): 2 processes agree with 1 process over the same
global batch, and the fast path computes the same loss as the plain fp32 path."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from absld_core import train
from absld_core.config import TrainConfig
from absld_core.data import load_dataset
from absld_core.engine import MultiView, build_student, load_teacher
from absld_core.methods import StepContext, build_method
from absld_core.models import load_checkpoint
from absld_core.runs import RunDir
from train_helpers import tiny

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def _student_cfg(tmp_path, teacher, name):
    # no BatchNorm, no augmentation and a deterministic attack start: the only differences left
    # between 1 and 2 processes are the order of floating-point reductions
    return tiny(name, "absld", tmp_path, optim__epochs=2, optim__batch_size=16, data__augment=False,
                model__norm="none", attack__kl_init_std=0.0, eval_every=2,
                method={"name": "absld", "teacher": {"checkpoint": str(teacher)}, "eta": 0.3})


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_two_processes_agree_with_one(tmp_path):
    teacher = train(tiny("t", "natural", tmp_path, optim__epochs=2))
    single = train(_student_cfg(tmp_path, teacher, "single"))
    cfg = _student_cfg(tmp_path, teacher, "ddp")
    cfg["optim"]["batch_size"] = 8  # per process: 2 x 8 = the single run's 16
    f = tmp_path / "ddp.yaml"
    f.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "absld_core.cli", "train",
                          "--config", str(f)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(tmp_path / "ddp" / "last.pt")
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-4, rtol=1e-3), k
    assert torch.allclose(a["method"]["tau_adv"], b["method"]["tau_adv"], atol=1e-4)
    assert torch.allclose(a["method"]["tau_nat"], b["method"]["tau_nat"], atol=1e-4)
    assert not torch.allclose(a["method"]["tau_adv"], torch.ones(4))
    hs, hd = RunDir(single).history(), RunDir(tmp_path / "ddp").history()
    assert [r["samples"] for r in hs] == [r["samples"] for r in hd]
    assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(hs, hd))
    assert RunDir(tmp_path / "ddp").finished()
    # resume under torchrun: nothing left to do, and the run stays finished
    out = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "absld_core.cli", "train",
                          "--config", str(f), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_fast_path_matches_plain_fp32_loss(tmp_path):
    from absld_core import attacks as A

    teacher = train(tiny("t", "natural", tmp_path, optim__epochs=1))
    losses, advs = [], []
    for channels_last in (False, True):
        cfg = TrainConfig.from_dict(tiny("s", "absld", tmp_path, channels_last=channels_last,
                                         method={"name": "absld", "teacher": {"checkpoint": str(teacher)},
                                                 "tau_init_adv": [0.5, 1.0, 1.5, 2.0]}))
        ds = load_dataset("synthetic", **cfg.data.options)
        mf = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(0)
        model = build_student(cfg, ds).to(memory_format=mf)
        t = load_teacher(cfg, ds.num_classes, torch.device("cpu"), ds.image_shape[0]).to(memory_format=mf)
        method = build_method(cfg.method, ds.num_classes, torch.device("cpu"))
        x = (ds.train_x[:16].float() / 255).contiguous(memory_format=mf)
        y = ds.train_y[:16]
        # the loss of the training step from the same (0-step) adversarial start
        ctx = StepContext(raw=model, forward=MultiView(model), eps=8 / 255, alpha=2 / 255, steps=0, epoch=1,
                          num_classes=4, teacher=t)
        model.train()
        torch.manual_seed(1)
        losses.append(method.step(x, y, ctx).loss.item())
        # the attack itself, 3 steps from the same start
        p_adv, _ = method.teacher_targets(x, y, ctx)
        torch.manual_seed(2)
        advs.append(A.pgd_kl(model, x, p_adv, 8 / 255, 2 / 255, 3).contiguous())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # channels_last convolutions sum in another order; a gradient component near zero can flip its sign,
    # so a few pixels may take the other step, but nearly all must agree
    same = torch.isclose(advs[0], advs[1], atol=1e-6).float().mean().item()
    assert same > 0.98, same


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_two_process_run_stopped_and_resumed_equals_uninterrupted(tmp_path):
    """Each process's random stream (Gaussian attack starts) is saved and restored: a 2-process run
    stopped after epoch 1 and resumed ends with the same weights as one that never stopped."""
    teacher = train(tiny("t", "natural", tmp_path, optim__epochs=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(name, *extra):
        cfg = tiny(name, "absld", tmp_path, optim__epochs=2, optim__batch_size=8, model__norm="none",
                   attack__kl_init_std=0.05, method={"name": "absld", "teacher": {"checkpoint": str(teacher)}})
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(cfg))
        out = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "absld_core.cli", "train",
                              "--config", str(f), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return tmp_path / name

    whole = torchrun("whole")
    part = torchrun("part", "--set", "stop_after=1")
    assert RunDir(part).status()["state"] == "stopped"
    stopped = load_checkpoint(part / "last.pt")
    assert len(stopped["rng_per_rank"]) == 2
    assert not torch.equal(stopped["rng_per_rank"][0]["cpu"], stopped["rng_per_rank"][1]["cpu"])
    torchrun("part", "--resume", "--set", "stop_after=null")
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6, rtol=0), k
    assert torch.allclose(a["method"]["tau_adv"], b["method"]["tau_adv"], atol=1e-6)
    assert RunDir(part).finished()


def test_random_streams_when_the_number_of_processes_changes():
    from absld_core.distributed import DistInfo
    from absld_core.engine import _restore_rng, _rng_state

    cpu = torch.device("cpu")
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(_rng_state(cpu))
    ck = {"rng": states[0], "rng_per_rank": states, "epoch": 3}

    def draw(info, checkpoint):
        _restore_rng(checkpoint, info, cpu, seed=0)
        return torch.rand(4)

    def fresh(seed):
        torch.manual_seed(seed)
        return torch.rand(4)

    assert torch.equal(draw(DistInfo(1, 2), ck), fresh(2))  # same world size: each rank its own stream
    assert torch.equal(draw(DistInfo(0, 1), ck), fresh(1))  # fewer processes: rank 0 keeps its own
    old = {"rng": states[0], "epoch": 3}  # a one-process checkpoint resumed by three processes
    draws = [draw(DistInfo(r, 3), old) for r in range(3)]
    assert torch.equal(draws[0], fresh(1))
    assert not torch.equal(draws[1], draws[0]) and not torch.equal(draws[2], draws[1])
