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


@pytest.mark.parametrize("started, here", [([], ["avx512_bf16"]), (["avx512_bf16"], [])])
def test_a_resumed_run_keeps_the_precision_it_started_in(monkeypatch, tmp_path, capsys, started, here):
    """A run stopped on one kind of CPU and resumed on another (auto picks the other precision there)
    continues in the one it started in, says so, records it unchanged, and ends with the same weights as
    a run that never stopped."""
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: started)
    kind = "bf16" if started else "fp32"
    full = train(tiny("full", "pgd_at", tmp_path, optim__epochs=2, precision="auto"))
    part = tiny("part", "pgd_at", tmp_path, optim__epochs=2, precision="auto", stop_after=1)
    train(part)
    capsys.readouterr()
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: here)
    resumed = train({**part, "stop_after": None, "resume": True})
    said = capsys.readouterr().out
    assert f"resuming in the precision the run started in (training passes {kind}" in said
    assert f"on this machine precision='auto' gives training passes {'fp32' if started else 'bf16'}" in said
    rec = json.loads((resumed / "config.json").read_text())["resolved"]["precision"]
    assert (rec["train"], rec["attack"]) == (kind, kind)
    a, b = torch.load(full / "last.pt", weights_only=True), torch.load(resumed / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_resume_on_the_same_kind_of_machine_says_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: [])
    part = tiny("part", "natural", tmp_path, optim__epochs=2, precision="auto", stop_after=1)
    train(part)
    train({**part, "stop_after": None, "resume": True})
    assert "resuming in the precision" not in capsys.readouterr().out


def test_a_precision_record_that_is_not_one_is_refused():
    assert precision.from_record(None) is None
    p = precision.from_record({"train": "bf16", "attack": "fp32", "channels_last": True, "reason": "r"})
    assert (p.train, p.attack, p.channels_last) == ("bf16", "fp32", True)
    for bad in ({"train": "fp16", "attack": "fp32", "channels_last": False}, {"train": "fp32"}, "fp32",
                {"train": "fp32", "attack": "fp32", "channels_last": "no"}):
        with pytest.raises(ValueError, match=r"run/config.json: resolved.precision=.* is not a precision record; "
                                             r"allowed: train and attack each one of fp32, bf16"):
            precision.from_record(bad, "run/config.json")


def test_the_mix_of_precisions_in_one_study_is_named():
    assert precision.mix_note({"a": "fp32"}, {"b": "fp32", "c": "fp32"}) is None
    assert precision.mix_note({}, {}) is None
    said = precision.mix_note({"a": "fp32", "b": "fp32"}, {"c": "bf16"})
    assert said.startswith("the study's runs mix precisions (1 in bf16, 2 in fp32): the started ones trained in "
                           "fp32, the 1 still to train get bf16 on this machine")
    assert "fix `precision` in the preset" in said
    assert precision.mix_note({"a": "fp32", "b": "bf16"}, {}).startswith(
        "the study's runs mix precisions (1 in bf16, 1 in fp32). Runs of one study")


def test_the_sweep_names_a_plan_whose_runs_would_mix_precisions(monkeypatch, tmp_path):
    """plan_precisions: a started run counts with the precision it recorded, a new one with the one
    auto gives on this machine; on a machine of the kind the study started on there is nothing to say."""
    from absld_core.plan import Job
    from absld_core.sweep import plan_precisions

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: [])
    cfgs = [tiny(f"r{i}", "natural", tmp_path, optim__epochs=1, precision="auto") for i in range(3)]
    train(cfgs[0])
    train({**cfgs[1], "optim": {**cfgs[1]["optim"], "epochs": 2}, "stop_after": 1})
    jobs = [Job(f"s0/r{i}", "nb", 0, f"r{i}", c) for i, c in enumerate(cfgs)]
    jobs[1] = Job("s0/r1", "nb", 0, "r1", {**cfgs[1], "optim": {**cfgs[1]["optim"], "epochs": 2}})
    states = {j.key: j.status() for j in jobs}
    assert states == {"s0/r0": "done", "s0/r1": "unfinished", "s0/r2": "new"}
    assert plan_precisions(jobs, states) is None
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: ["amx_bf16"])
    said = plan_precisions(jobs, states)
    assert said.startswith("the study's runs mix precisions (1 in bf16, 2 in fp32): the started ones trained in "
                           "fp32, the 1 still to train get bf16 on this machine")


def test_the_study_names_the_mix_of_its_plan(monkeypatch, tmp_path, capsys):
    """absld study (sweep.preset_precisions) on the smoke preset's real plan: one run started in bf16 on
    another machine, the rest to train here in fp32."""
    from absld_core.plan import study_plan
    from absld_core.runs import RunDir, write_json_atomic
    from absld_core.sweep import preset_precisions as precision_mix

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: [])
    assert precision_mix("smoke", None, tmp_path) is None
    monkeypatch.chdir(tmp_path)
    jobs = study_plan("smoke")
    job = next(j for j in jobs if j.pair is None)
    run = RunDir(job.run_dir)
    run.path.mkdir(parents=True)
    bf16 = {"train": "bf16", "attack": "bf16", "channels_last": True, "reason": "auto: CPU with avx512_bf16"}
    write_json_atomic(run.config, {**TrainConfig.from_dict(job.config).to_json(), "resolved": {"precision": bf16}})
    assert job.status() == "unfinished"
    monkeypatch.chdir("/")
    said = precision_mix("smoke", None, tmp_path)
    assert said.startswith(f"the study's runs mix precisions (1 in bf16, {len(jobs) - 1} in fp32): the started ones "
                           f"trained in bf16, the {len(jobs) - 1} still to train get fp32 on this machine")
    # absld study says it before it renders anything (the rendering itself is not this test's)
    import absld_core.study
    from absld_core.cli import main

    monkeypatch.setattr(absld_core.study, "run_study", lambda *a, **k: 0)
    assert main(["study", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    assert f"study: {said}" in capsys.readouterr().out
    # a study into a folder that does not exist yet: nothing trained there, and the study makes the folder
    assert precision_mix("smoke", None, tmp_path / "new") is None
    assert main(["study", "--preset", "smoke", "--out", str(tmp_path / "new")]) == 0


def test_the_study_check_reads_a_relative_preset_path_and_refuses_a_bad_preset_before_any_work(monkeypatch, tmp_path):
    """sweep.preset_precisions builds the plan once (the study's check of every run's config) from a
    preset path relative to where it was given, though it looks at the runs from inside --out; an unknown
    preset is refused even where --out does not exist yet."""
    import shutil

    from absld_core.presets import ROOT, StudyError, given_preset
    from absld_core.sweep import preset_precisions

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda *a: [])
    (tmp_path / "mine").mkdir()
    shutil.copy(ROOT / "presets" / "smoke.yaml", tmp_path / "mine" / "mysmoke.yaml")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    assert given_preset("mine/mysmoke.yaml") == str(tmp_path / "mine" / "mysmoke.yaml")
    assert given_preset("smoke") == "smoke"
    assert preset_precisions("mine/mysmoke.yaml", None, tmp_path / "out") is None
    with pytest.raises(StudyError, match="unknown preset 'mine/nothere.yaml'"):
        preset_precisions("mine/nothere.yaml", None, tmp_path / "missing")
