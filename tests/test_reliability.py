"""Hostile files and bad input: no code runs from data files, no folder is lost, no run is corrupted by a
second writer or a kill, no number is silently wrong, and every bad input gets one clear line."""
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from absld_core import attacks as A
from absld_core import train
from absld_core.cli import main as cli_main
from absld_core.config import ConfigError, TrainConfig, load_config
from absld_core.data import DatasetError, load_dataset
from absld_core.engine import NonFiniteLossError
from absld_core.evaluate import evaluate
from absld_core.models import CheckpointError, build_model, model_from_checkpoint, save_checkpoint
from absld_core.runs import RunDir, RunExistsError, RunLockedError
from test_data import _write_cifar10, _write_imagefolder
from train_helpers import tiny

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ security
class _Exploit:
    """A pickle that calls open(path, 'w') (creating a file) while it is loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_cifar_pickle_cannot_run_code(tmp_path):
    d = _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(d / "data_batch_2", "wb") as f:
        pickle.dump({"data": _Exploit(marker), "labels": [0] * 20}, f)
    with pytest.warns(UserWarning, match="not byte-identical"), \
            pytest.raises(DatasetError, match=r"data_batch_2 is corrupted or not a CIFAR python pickle.*refers to (io|builtins).open"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()
    # the same file through plain pickle would have created it: the test's exploit is real
    with open(d / "data_batch_2", "rb") as f:
        pickle.load(f)["data"].close()
    assert marker.exists()


def test_cifar_pickles_of_every_protocol_still_load(tmp_path):
    for proto in (2, 4, 5):
        root = tmp_path / f"p{proto}"
        d = _write_cifar10(root)
        raw = pickle.load(open(d / "test_batch", "rb"))
        with open(d / "test_batch", "wb") as f:
            pickle.dump(raw, f, protocol=proto)
        ds = load_dataset("cifar10", root=root, verify=False)
        assert torch.equal(ds.test_x.reshape(10, -1), torch.from_numpy(raw["data"]))


# ------------------------------------------------------------------------------------------ folders
def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    mydata = tmp_path / "mydata"
    (mydata / "train").mkdir(parents=True)
    (mydata / "test").mkdir()
    (mydata / "notes.txt").write_text("mine")
    cfg = tiny("mydata", "natural", tmp_path, optim__epochs=1, overwrite=True)
    with pytest.raises(RunExistsError, match=r"not a run directory of this project: it holds notes.txt, test/, train/"):
        train(cfg)
    assert (mydata / "notes.txt").read_text() == "mine" and (mydata / "train").is_dir()
    with pytest.raises(RunExistsError, match="not a run directory"):
        train({**cfg, "overwrite": False, "resume": True})
    assert sorted(p.name for p in mydata.iterdir()) == ["notes.txt", "test", "train"]
    run = train(tiny("real", "natural", tmp_path, optim__epochs=1))
    (run / "mine.txt").write_text("a file of the user's in a run directory")
    with pytest.raises(RunExistsError, match="mine.txt"):
        train(tiny("real", "natural", tmp_path, optim__epochs=1, overwrite=True))
    assert (run / "mine.txt").is_file() and (run / "metrics.json").is_file()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom absld_core.runs import RunDir\n"
                               f"lock = RunDir({str(run)!r}).lock()\nprint('locked', flush=True)\ntime.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"being written by another process \(pid {holder.pid}\)"):
            train(tiny("busy", "natural", tmp_path, optim__epochs=1))
        assert not (run / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert RunDir(train(tiny("busy", "natural", tmp_path, optim__epochs=1))).finished()  # free again


def test_resume_with_another_configuration_is_refused(tmp_path):
    cfg = tiny("r", "pgd_at", tmp_path, optim__epochs=2, stop_after=1)
    train(cfg)
    with pytest.raises(ConfigError, match=r"cannot resume .* method.name differ"):
        train({**cfg, "resume": True, "stop_after": None, "method": {**cfg["method"], "name": "trades"}})
    with pytest.raises(ConfigError, match=r"data.augment"):
        train({**cfg, "resume": True, "stop_after": None, "data": {**cfg["data"], "augment": False}})
    assert RunDir(tmp_path / "r").status()["state"] == "stopped"
    # fields that cannot change the results may differ
    assert RunDir(train({**cfg, "resume": True, "stop_after": None, "progress": True})).finished()


def test_a_killed_study_never_leaves_an_unfinished_copy_taken_as_done(tmp_path, monkeypatch):
    import papermill as pm

    from absld_core import study

    preset = tmp_path / "one.yaml"
    preset.write_text(yaml.safe_dump({"notebooks": ["05_temperature_explorer"], "parameters": {}}))
    calls = []

    def finished(src, dst, **kw):
        calls.append("run")
        Path(dst).write_text("complete")

    monkeypatch.setattr(pm, "execute_notebook", finished)
    assert study.run_study(str(preset), out_root=tmp_path, log=lambda m: None) == 0
    copy = tmp_path / "runs" / "one" / "notebooks" / "05_temperature_explorer.ipynb"
    assert copy.read_text() == "complete"

    def killed(src, dst, **kw):
        Path(dst).write_text("half")
        raise KeyboardInterrupt  # the study is stopped in the middle of the notebook

    monkeypatch.setattr(pm, "execute_notebook", killed)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(str(preset), force=True, out_root=tmp_path, log=lambda m: None)
    assert copy.read_text() == "complete"  # the earlier executed copy is untouched
    monkeypatch.setattr(pm, "execute_notebook", finished)
    log = []
    assert study.run_study(str(preset), out_root=tmp_path, log=log.append) == 0
    assert any("running (the earlier run did not finish" in line for line in log), log
    assert copy.read_text() == "complete" and calls == ["run", "run"]


def _plain_tar(tmp_path):
    folder = _write_imagefolder(tmp_path / "imgs", n=4)
    tar = tmp_path / "imgs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(folder, arcname="imgs")
    return tar


def test_a_truncated_tar_is_refused_and_never_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ABSLD_CACHE", str(cache))
    whole = _plain_tar(tmp_path)
    assert len(load_dataset("imagefolder", root=whole, cache=False).train_y) == 12
    with tarfile.open(whole) as t:
        members = t.getmembers()
    data = whole.read_bytes()
    cuts = {"at a member boundary": members[-3].offset, "inside a member": members[-2].offset_data + 100,
            "inside a header": members[-2].offset + 200}
    for where, at in cuts.items():
        cut = tmp_path / f"cut-{at}.tar"
        cut.write_bytes(data[:at])
        with pytest.raises(DatasetError, match="truncated"):
            load_dataset("imagefolder", root=cut)
    assert not cache.exists() or not list(cache.glob("*.npz"))


def test_a_corrupted_gzip_archive_is_one_clear_error(tmp_path):
    folder = _write_imagefolder(tmp_path / "imgs", n=20, size=16)
    tgz = tmp_path / "imgs.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(folder, arcname="imgs")
    whole = tgz.read_bytes()
    # the deflate stream itself (zlib.error), and the middle of the archive (a broken header or block)
    for start, fill in ((10, b"\xff" * 64), (len(whole) // 2, bytes(64))):
        data = bytearray(whole)
        data[start:start + 64] = fill
        tgz.write_bytes(bytes(data))
        with pytest.raises(DatasetError, match=r"archive .*imgs.tar.gz is (corrupted|truncated or corrupted)"):
            load_dataset("imagefolder", root=tgz, cache=False)


# ------------------------------------------------------------------------------------------ numbers
def test_images_outside_zero_one_or_not_finite_are_refused(trained_digits_model, digits):
    m = trained_digits_model
    x, y = digits.test_x[:32].float() / 255, digits.test_y[:32]
    with pytest.raises(ValueError, match=r"pixels in \[0, 255\]\? divide by 255"):
        evaluate(m, x * 255, y, ["clean"], progress=False)
    with pytest.raises(ValueError, match=r"pixels in \[0, 255\]\? divide by 255"):
        A.pgd(m, x * 255, y, 8 / 255, 2 / 255, 3)
    bad = x.clone()
    bad[::2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="contain 16 NaN or infinite value"):
        evaluate(m, bad, y, ["clean"], progress=False)
    with pytest.raises(ValueError, match="NaN or infinite"):
        A.fgsm(m, bad, y, 8 / 255)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], found values from -0.5"):
        A.pgd_kl(m, x - 0.5, torch.full((32, 10), 0.1), 8 / 255, 2 / 255, 2)


def test_a_label_outside_the_models_classes_is_refused(trained_digits_model, digits):
    y = digits.test_y[:8].clone()
    y[3] = 12
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\] for 10 classes; found labels from \d+ to 12"):
        evaluate(trained_digits_model, digits.test_x[:8], y, ["clean"], progress=False)


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    m = build_model("small_cnn", 10, width=4)
    with torch.no_grad():
        m.classifier.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", m, meta={"arch": "small_cnn", "num_classes": 10, "width": 4})
    with pytest.raises(CheckpointError, match="NaN or infinite weights in classifier.weight"):
        model_from_checkpoint(tmp_path / "nan.pt")


@pytest.mark.parametrize("optim, message", [
    ({"gamma": -1}, r"optim.gamma=-1 is invalid: must lie in \(0, 1\]"),
    ({"lr": 1e6}, r"optim.lr=1000000.0 is invalid: must lie in \(0, 10.0\]"),
    ({"momentum": 1.5}, r"optim.momentum=1.5 is invalid"),
    ({"weight_decay": -0.1}, "optim.weight_decay=-0.1 is invalid"),
    ({"epochs": 4, "warmup_epochs": 4}, "optim.warmup_epochs=4 is invalid: fewer than optim.epochs=4"),
    ({"epochs": 10, "schedule": "milestones", "milestones": [5, 3]}, "increasing epochs without repeats"),
])
def test_every_optimiser_field_is_validated(optim, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({"optim": optim})


def test_a_diverging_loss_stops_the_run(tmp_path):
    cfg = tiny("div", "natural", tmp_path, optim__epochs=2, max_loss=1e-3)
    with pytest.raises(NonFiniteLossError, match=r"diverging loss \(above max_loss=0.001\).*epoch 1, batch 1 of "
                                                 r"\d+; no checkpoint was written yet"):
        train(cfg)
    assert RunDir(tmp_path / "div").status()["state"] == "failed"


def test_numbers_are_read_as_people_write_them(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\nattack:\n  eps: 3.1e-2\n")
    cfg = load_config(f, ["optim.momentum=9e-1", "attack.test_attacks=clean,pgd5", "optim.schedule=milestones",
                          "optim.milestones=3,6", "optim.epochs=8"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.attack.eps, cfg.optim.momentum) == (1e-3, 5e-4, 0.031, 0.9)
    assert cfg.attack.test_attacks == ("clean", "pgd5") and cfg.optim.milestones == (3, 6)
    from absld_core.study import load_preset

    assert load_preset("smoke", ["lr=1e-3"])["parameters"]["lr"] == 1e-3


# ------------------------------------------------------------------------------------------ one clear line
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return train(tiny("small", "natural", tmp_path_factory.mktemp("small"), optim__epochs=1,
                      data={"dataset": "digits", "val_per_class": 2, "test_per_class": 5}))


def _cli(capsys, *argv):
    rc = cli_main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def _one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_training_usage_errors_are_one_line(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny("u", "natural", tmp_path, optim__epochs=1)))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim:\n  lr: [0.1\n")
    cases = [(["--set", "device=cuda"], "no CUDA device"), (["--set", "model.width=-4"], "model.width=-4 is invalid"),
             (["--set", "model.width=abc"], "model.width='abc' is invalid"),
             (["--set", "model.channels=16"], "model.channels=16 is invalid: null for small_cnn (channels sets the size "
                                             "of resnet18 and preact_resnet18")]
    if torch.cuda.is_available():
        cases = cases[1:]
    for extra, message in cases:
        rc, err = _cli(capsys, "train", "--config", str(f), *extra)
        assert rc == 2 and message in _one_line(err), (extra, err)
    rc, err = _cli(capsys, "train", "--config", str(bad_yaml))
    assert rc == 2 and "is not valid YAML at line 3" in _one_line(err)


def test_a_diverged_run_is_one_line_and_exit_code_1(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny("d", "natural", tmp_path, optim__epochs=2, max_loss=1e-3)))
    rc, err = _cli(capsys, "train", "--config", str(f))
    assert rc == 1 and "no checkpoint was written yet" in _one_line(err)
    rc, err = _cli(capsys, "train", "--config", str(f), "--overwrite", "--debug")
    assert rc == 1 and "Traceback" in err  # --debug keeps the traceback


def test_eval_errors_are_one_line_and_come_before_the_work(small_run, tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    rc, err = _cli(capsys, "eval", "--checkpoint", str(empty), "--dataset", "digits")
    assert rc == 2 and "is an empty file" in _one_line(err)
    # --out is checked before the dataset is even looked for
    rc, err = _cli(capsys, "eval", "--checkpoint", str(small_run), "--dataset", "cifar10", "--root",
                   str(tmp_path / "nowhere"), "--out", "x.txt")
    assert rc == 2 and "written as .json or .csv" in _one_line(err)
    if not torch.cuda.is_available():
        rc, err = _cli(capsys, "eval", "--checkpoint", str(small_run), "--dataset", "digits", "--device", "cuda")
        assert rc == 2 and "no CUDA device" in _one_line(err) and "checkpoint" not in err
    gray = build_model("small_cnn", 10, in_channels=3, width=4)
    save_checkpoint(tmp_path / "rgb.pt", gray, meta={"arch": "small_cnn", "num_classes": 10, "in_channels": 3,
                                                     "width": 4})
    rc, err = _cli(capsys, "eval", "--checkpoint", str(tmp_path / "rgb.pt"), "--dataset", "digits")
    assert rc == 2 and "takes images with 3 channel(s) but the data has 1" in _one_line(err)


def test_eval_accepts_a_run_directory(small_run, tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = cli_main(["eval", "--checkpoint", str(small_run), "--dataset", "digits", "--attacks", "clean",
                   "--per-class", "5", "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["rows"]["clean"]["n"] > 0


def test_eval_rebuilds_a_bare_resnet_state_dict_of_other_channels(tmp_path, capsys):
    """--channels says a ResNet-18 state dict's first-stage channels (it records none); a wrong count is
    one line naming the mismatched weights, a non-positive one is refused before any work."""
    torch.manual_seed(0)
    torch.save(build_model("resnet18", 10, in_channels=1, channels=8).state_dict(), tmp_path / "r.pt")
    out = tmp_path / "t.json"
    rc = cli_main(["eval", "--checkpoint", str(tmp_path / "r.pt"), "--dataset", "digits", "--model", "resnet18",
                   "--channels", "8", "--attacks", "clean", "--per-class", "2", "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["rows"]["clean"]["n"] == 20
    capsys.readouterr()  # its progress bar
    rc, err = _cli(capsys, "eval", "--checkpoint", str(tmp_path / "r.pt"), "--dataset", "digits", "--model",
                   "resnet18", "--attacks", "clean")  # the default, 64 channels, does not fit
    assert rc == 2 and "shape mismatches" in _one_line(err)
    rc, err = _cli(capsys, "eval", "--checkpoint", str(tmp_path / "r.pt"), "--dataset", "digits", "--channels", "0")
    assert rc == 2 and "--channels 0: must be positive" in _one_line(err)
