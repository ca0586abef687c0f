"""The engine: resumable and recorded runs, protected run directories, validated configs."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from absld_core import train
from absld_core.cli import main as cli_main
from absld_core.config import ConfigError, TrainConfig, load_config
from absld_core.engine import NonFiniteLossError
from absld_core.methods import registry
from absld_core.models import load_checkpoint
from absld_core.runs import RunDir, RunExistsError
from absld_core.schedule import lr_at, lr_factor, milestone_epochs
from train_helpers import tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train(tiny("teacher", "natural", tmp_path_factory.mktemp("t"), optim__epochs=2))


def test_resumed_run_equals_uninterrupted_run(teacher, tmp_path):
    method = {"name": "absld", "teacher": {"checkpoint": str(teacher)}, "eta": 0.3}
    full = train(tiny("full", "absld", tmp_path, method=method, optim__epochs=3))
    part = tiny("part", "absld", tmp_path, method=method, optim__epochs=3, stop_after=1)
    train(part)
    assert RunDir(tmp_path / "part").status()["state"] == "stopped"
    assert len(RunDir(tmp_path / "part").history()) == 1
    resumed = train({**part, "stop_after": None, "resume": True})
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(resumed / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["method"]["tau_adv"], b["method"]["tau_adv"])
    assert torch.equal(a["method"]["tau_nat"], b["method"]["tau_nat"])
    ha, hb = RunDir(full).history(), RunDir(resumed).history()
    assert [r["epoch"] for r in hb] == [1, 2, 3]
    assert [r["tau_adv"] for r in ha] == [r["tau_adv"] for r in hb]
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_killed_run_resumes_and_finishes(tmp_path):
    cfg = tiny("killed", "pgd_at", tmp_path, optim__epochs=4, optim__batch_size=4,
               data__options={"num_classes": 4, "train_per_class": 60, "test_per_class": 4, "image_size": 8},
               attack__steps=6)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run = RunDir(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "absld_core.cli", "train", "--config", str(cfg_file)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not run.last.is_file():
            time.sleep(0.05)
        assert run.last.is_file(), "the first epoch never finished"
        time.sleep(0.3)  # now inside epoch 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done_before = load_checkpoint(run.last)["epoch"]
    # status.json still says running (a SIGKILL records nothing); read, it is "interrupted": no process holds the lock
    assert json.loads(run.status_file.read_text())["state"] == "running"
    assert done_before < 4 and run.status()["state"] == "interrupted"
    assert cli_main(["train", "--config", str(cfg_file), "--resume"]) == 0
    assert run.finished()
    assert [r["epoch"] for r in run.history()] == [1, 2, 3, 4]
    assert load_checkpoint(run.last)["epoch"] == 4


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = tiny("r", "natural", tmp_path, optim__epochs=1)
    run = train(cfg)
    stamp = (run / "metrics.json").stat().st_mtime_ns
    with pytest.raises(RunExistsError, match="already holds a finished run"):
        train(cfg)
    assert train({**cfg, "resume": True}) == run  # finished: nothing to do
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    train({**cfg, "overwrite": True})
    assert (run / "metrics.json").stat().st_mtime_ns != stamp


def test_non_finite_loss_names_epoch_and_batch_and_keeps_checkpoint(tmp_path, monkeypatch):
    base = registry.get("natural")

    class Exploding(base):
        def step(self, x, y, ctx):
            out = super().step(x, y, ctx)
            self.calls = getattr(self, "calls", 0) + 1
            if ctx.epoch == 2 and self.calls >= 6:
                out.loss = out.loss * float("nan")
            return out

    monkeypatch.setitem(registry._METHODS, "natural", Exploding)
    cfg = tiny("nan", "natural", tmp_path, optim__epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 1 of 5"):
        train(cfg)
    run = RunDir(tmp_path / "nan")
    assert load_checkpoint(run.last)["epoch"] == 1
    assert run.status()["state"] == "failed" and "epoch 2" in run.status()["error"]
    assert run.status()["last_checkpoint_epoch"] == 1


@pytest.mark.parametrize("override, message", [
    ({"method": {"name": "mart"}}, "method.name='mart' is invalid: known methods: natural, pgd_at"),
    ({"method": {"name": "absld"}}, "distils from a teacher: set method.teacher.checkpoint"),
    ({"attack": {"eps": 8}}, r"attack.eps=8 is invalid: must lie in \(0, 1\]"),
    ({"attack": {"eps": 0}}, r"attack.eps=0 is invalid"),
    ({"method": {"name": "absld", "teacher": {"checkpoint": "t"}, "tau_min": 5, "tau_max": 1}}, "are inverted"),
    ({"method": {"name": "pgd_at", "eta": 0.1}}, "method.eta; allowed in the options of method 'pgd_at': label_smoothing"),
    ({"optim": {"epochs": 10, "schedule": "milestones", "milestones": [5, 12]}},
     r"milestone 12 must be an integer in \[1, 9\]"),
    ({"optim": {"batch_size": 0}}, "optim.batch_size=0 is invalid: must be an integer >= 1"),
    ({"optim": {"schedule": "cosine"}}, "optim.schedule='cosine' is invalid: one of paper300, ham120"),
    ({"model": {"arch": "vgg"}}, "model.arch='vgg' is invalid: known models"),
    ({"data": {"dataset": "mnist"}}, "data.dataset='mnist' is invalid"),
    ({"optim": {"lr": 0.1, "momentun": 0.9}}, r"unknown field\(s\) optim.momentun"),
    ({"precision": "fp16"}, "precision='fp16' is invalid: one of auto, fp32, bf16"),
    ({"attack": {"test_attacks": ["pgdx"]}}, "unknown attack 'pgdx'"),
])
def test_config_errors_name_field_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(override)


def test_yaml_config_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"name": "x", "optim": {"lr": 0.1}}))
    cfg = load_config(f, ["optim.lr=0.05", "method.name=trades", "method.beta=3", "attack.eps=0.03"])
    assert cfg.optim.lr == 0.05 and cfg.method.name == "trades" and cfg.method.options.beta == 3
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(f, ["optim.lr"])


def test_missing_teacher_is_reported(tmp_path):
    cfg = tiny("s", "rslad", tmp_path, method={"name": "rslad", "teacher": {"checkpoint": str(tmp_path / "none")}})
    with pytest.raises(FileNotFoundError, match="teacher.checkpoint=.* does not exist"):
        train(cfg)


def test_lr_schedules():
    p = TrainConfig.from_dict({"optim": {"epochs": 300, "lr": 0.1}}).optim
    assert milestone_epochs(p) == [215, 260, 285]
    assert lr_factor(p, 215) == 1.0 and lr_factor(p, 216) == pytest.approx(0.1) and lr_factor(p, 300) == pytest.approx(1e-3)
    h = TrainConfig.from_dict({"optim": {"epochs": 120, "schedule": "ham120"}}).optim
    # the HAM release: the first epochs at /10, /100, /200 are 60, 90 and 110 of 120 (1-based)
    assert [lr_factor(h, e) for e in (59, 60, 89, 90, 109, 110, 120)] == [1.0, 0.1, 0.1, 0.01, 0.01, 0.005, 0.005]
    assert milestone_epochs(h) == [59, 89, 109]
    w = TrainConfig.from_dict({"optim": {"epochs": 4, "schedule": "constant", "warmup_epochs": 1}}).optim
    assert lr_at(w, 1, 0, 4) == pytest.approx(0.1 / 4) and lr_at(w, 1, 3, 4) == pytest.approx(0.1)


def test_cli_train_with_overrides(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny("cli", "natural", tmp_path)))
    assert cli_main(["train", "--config", str(f), "--set", "optim.epochs=1", "--set", "optim.lr=0.02"]) == 0
    cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert cfg["optim"]["epochs"] == 1 and cfg["optim"]["lr"] == 0.02
    assert cli_main(["train", "--config", str(f), "--set", "optim.batch_size=-1"]) == 2
    assert "optim.batch_size=-1 is invalid" in capsys.readouterr().err


def test_run_or_resume_reuses_retrains_and_ignores_fields_added_later(tmp_path):
    from absld_core.experiments import run_or_resume

    cfg = tiny("r", "natural", tmp_path, optim__epochs=1)
    run = run_or_resume(cfg, log=lambda m: None)
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert run_or_resume(cfg, log=lambda m: None) == run
    # a config.json written before model.norm and attack.kl_init_std existed: still the same run
    saved = json.loads((run / "config.json").read_text())
    del saved["model"]["norm"], saved["attack"]["kl_init_std"]
    (run / "config.json").write_text(json.dumps(saved))
    run_or_resume(cfg, log=lambda m: None)
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    said = []
    run_or_resume({**cfg, "optim": {**cfg["optim"], "lr": 0.01}}, log=said.append)
    assert said and "configuration changed (optim.lr)" in said[0]
    assert (run / "metrics.json").stat().st_mtime_ns != stamp


def test_cli_eval_names_a_class_count_mismatch(tmp_path, capsys):
    run = train(tiny("e", "natural", tmp_path, optim__epochs=1))  # 4 synthetic classes
    assert cli_main(["eval", "--checkpoint", str(run / "last.pt"), "--dataset", "digits", "--attacks", "clean"]) == 2
    assert "(for digits) predicts 4 classes but the data has 10" in capsys.readouterr().err


def test_external_teacher_state_dict_takes_its_class_count_from_the_data(tmp_path):
    from absld_core.models import build_model

    t = build_model("small_cnn", 4, width=4)
    torch.save(t.state_dict(), tmp_path / "bare.pt")  # no meta, as a released teacher
    run = train(tiny("s", "rslad", tmp_path, optim__epochs=1,
                     method={"name": "rslad", "teacher": {"checkpoint": str(tmp_path / "bare.pt"),
                                                          "arch": "small_cnn", "width": 4}}))
    assert RunDir(run).finished()


def test_autoattack_options_reach_the_final_evaluation(tmp_path, monkeypatch):
    """attack.aa_iters / aa_queries become AutoAttack's n_iter / n_queries in the final evaluation;
    unset, AutoAttack keeps its standard options; a non-positive value is refused on construction."""
    import absld_core.engine as engine
    from absld_core.config import AttackConfig, ConfigError
    from train_helpers import tiny

    assert AttackConfig().aa_options() is None
    assert AttackConfig(aa_iters=7).aa_options() == {"n_iter": 7}
    with pytest.raises(ConfigError, match="aa_queries"):
        AttackConfig(aa_queries=0)
    seen = []
    real = engine.evaluate_per_image

    def spy(*args, **kwargs):
        seen.append(kwargs.get("aa_opts"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_per_image", spy)
    engine.train(tiny("aa", "pgd_at", tmp_path, optim__epochs=1, attack__aa_iters=3, attack__aa_queries=11))
    assert seen == [{"n_iter": 3, "n_queries": 11}]


def test_a_run_records_its_thread_count_and_code_and_trains_with_the_count_it_asks_for(tmp_path):
    """resolved records intra_op_threads (and torch, the code hash, the commit, the method's file); a
    run with `threads` trains with that count and gives the process its own count back."""
    import json

    import torch

    from absld_core import provenance, train
    from train_helpers import tiny

    before = torch.get_num_threads()
    run = train(tiny("threads", "pgd_at", tmp_path, threads=1, optim__epochs=1))
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["intra_op_threads"] == 1 and torch.get_num_threads() == before
    assert resolved["torch"] == torch.__version__ and resolved["code_hash"] == provenance.code_hash()
    assert resolved["method_source"]["module"] == "absld_core.methods.pgd_at"
    assert resolved["method_source"]["file"].endswith("pgd_at.py") and len(resolved["method_source"]["sha256"]) == 16
    run = train(tiny("default", "pgd_at", tmp_path, optim__epochs=1))
    assert json.loads((run / "config.json").read_text())["resolved"]["intra_op_threads"] == before
