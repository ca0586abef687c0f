"""precision: auto picks bf16 where the device computes it natively and fp32 elsewhere; the choice is
recorded in the run and shown when it starts; explicit settings are kept."""
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
