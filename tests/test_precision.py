"""precision: auto picks bf16 where the device computes it natively and fp32 elsewhere; the choice is
recorded in the run and shown when it starts; explicit settings are kept."""
import contextlib
import json

import pytest
import torch

from absld_core import precision, train
from absld_core.config import TrainConfig
from train_helpers import tiny

CPU = torch.device("cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert precision.cpu_bf16_flags(info) == ["avx512_bf16", "amx_bf16"]
    info.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert precision.cpu_bf16_flags(info) == []
    assert precision.cpu_bf16_flags(tmp_path / "absent") == []


@pytest.mark.parametrize("flags, cfg, expect", [
    (["avx512_bf16"], {}, ("bf16", "bf16", True)),
    (["amx_bf16"], {}, ("bf16", "bf16", True)),
    ([], {}, ("fp32", "fp32", False)),
    (["avx512_bf16"], {"precision": "fp32"}, ("fp32", "fp32", False)),
    ([], {"precision": "bf16"}, ("bf16", "bf16", True)),
    (["avx512_bf16"], {"attack": {"amp_dtype": "fp32"}}, ("bf16", "fp32", True)),
    (["avx512_bf16"], {"channels_last": False}, ("bf16", "bf16", False)),
    ([], {"channels_last": True}, ("fp32", "fp32", True)),
])
def test_auto_resolves_from_the_hardware_and_keeps_explicit_choices(monkeypatch, flags, cfg, expect):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: flags)
    p = precision.resolve(TrainConfig.from_dict(cfg), CPU)
    assert (p.train, p.attack, p.channels_last) == expect
    autocast, attack_dtype = p.contexts(CPU)
    assert attack_dtype == (torch.bfloat16 if expect[1] == "bf16" else None)
    with autocast():
        z = torch.nn.Linear(4, 2)(torch.rand(3, 4))
    assert z.dtype == (torch.bfloat16 if expect[0] == "bf16" else torch.float32)


def test_the_default_is_auto_and_the_run_records_and_shows_its_choice(monkeypatch, tmp_path, capsys):
    assert TrainConfig().precision == "auto" and TrainConfig().channels_last is None
    for flags, chosen in (([], "fp32"), (["avx512_bf16"], "bf16")):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a, f=flags: f)
        run = train(tiny(f"p{chosen}", "natural", tmp_path, optim__epochs=1, precision="auto", progress=True))
        rec = json.loads((run / "config.json").read_text())
        assert rec["precision"] == "auto"
        assert rec["resolved"]["precision"]["train"] == rec["resolved"]["precision"]["attack"] == chosen
        assert f"training passes {chosen}, training attacks {chosen}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["rslad", "absld", "absld_ham"])
def test_the_teachers_soft_label_pass_follows_the_training_precision(name):
    """Under bf16 training the teacher's forward (a training pass, the soft labels) runs in autocast; in
    fp32 it stays fp32; the soft labels themselves come back fp32 either way."""
    from absld_core.config import MethodConfig
    from absld_core.engine import MultiView
    from absld_core.methods import StepContext, build_method
    from absld_core.models import build_model

    torch.manual_seed(0)
    student, teacher = build_model("small_cnn", num_classes=3, width=4), build_model("small_cnn", num_classes=3, width=4)
    teacher.eval().requires_grad_(False)
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    m = build_method(MethodConfig.from_dict({"name": name, "teacher": {"checkpoint": "x"}}), 3, CPU)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for autocast, expect in ((lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.bfloat16),
                             (contextlib.nullcontext, torch.float32)):
        seen.clear()
        ctx = StepContext(raw=student, forward=MultiView(student), eps=8 / 255, alpha=2 / 255, steps=1, epoch=1,
                          num_classes=3, teacher=teacher, autocast=autocast)
        p_adv, p_nat = m.teacher_targets(x, y, ctx)
        assert seen == [expect]
        assert p_adv.dtype == p_nat.dtype == torch.float32
        assert torch.allclose(p_adv.sum(1), torch.ones(4))
