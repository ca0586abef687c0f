"""Reliability, second pass (part): inputs that used to be read silently as something else are refused
with one line naming the field, the value and what is allowed."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from absld_core import attacks as A
from absld_core.config import ConfigError, TrainConfig
from absld_core.data.download import DatasetError
from absld_core.data import sources


@pytest.mark.parametrize("over, field", [
    ({"data": {"augment": "false"}}, "data.augment"),
    ({"compile": "maybe"}, "compile"),
    ({"channels_last": 3}, "channels_last"),
    ({"progress": "no"}, "progress"),
    ({"resume": "no"}, "resume"),
    ({"eval_every_epoch_after_decay": 2}, "eval_every_epoch_after_decay"),
    ({"method": {"name": "cfa", "fawa": "no"}}, "method.fawa"),
    ({"method": {"name": "frl", "release_bn_passes": 1}}, "method.release_bn_passes"),
])
def test_a_boolean_is_true_or_false_or_refused(over, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: must be true or false"):
        TrainConfig.from_dict(over)


@pytest.mark.parametrize("which", ["fair-best", "worst", "best_fair"])
def test_the_teachers_checkpoint_name_is_checked(which):
    cfg = {"method": {"name": "absld", "teacher": {"checkpoint": "runs/t", "which": which}}}
    with pytest.raises(ConfigError, match=r"method\.teacher\.which=.* is invalid: one of fair_best, best, last, averaged"):
        TrainConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match=r"method\.teacher\.width=-4 is invalid"):
        TrainConfig.from_dict({"method": {"name": "absld", "teacher": {"checkpoint": "runs/t", "width": -4}}})


@pytest.mark.parametrize("over, field", [
    ({"method": "absld"}, "method"), ({"data": "digits"}, "data"), ({"attack": 0.03}, "attack"),
    ({"method": {"name": "absld", "teacher": "runs/run"}}, "method.teacher"), ({"data": {"options": [1, 2]}}, "data.options"),
])
def test_a_value_where_a_section_belongs_is_one_line(over, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: it is a section"):
        TrainConfig.from_dict(over)


def test_cifar_and_svhn_pixels_that_are_not_uint8_are_refused_with_dtype_and_range():
    floats = {"data": np.random.default_rng(0).random((2, 3072)).astype(np.float32), "labels": [0, 1]}
    with pytest.raises(DatasetError, match=r"float32 \(range 0\.0.*\.\.0\.9.*official files hold uint8"):
        sources._cifar_arrays([floats], "labels")
    wide = {"data": np.full((1, 3072), 300, dtype=np.int16), "labels": [0]}
    with pytest.raises(DatasetError, match=r"int16 \(range 300\.\.300\)"):
        sources._cifar_arrays([wide], "labels")
    ok = {"data": np.zeros((1, 3072), dtype=np.uint8), "labels": [3]}
    x, y = sources._cifar_arrays([ok], "labels")
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [3]


@pytest.mark.parametrize("tflops", ["-5", "nan", "0"])
def test_the_rehearsals_tflops_must_be_a_positive_number(tflops):
    r = subprocess.run([sys.executable, "-m", "absld_core.cli", "study", "--preset", "smoke", "--rehearse",
                        "--tflops", tflops], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--tflops" in lines[0] and "positive number" in lines[0], r.stderr


def test_pgd_kl_refuses_negative_probabilities_and_a_nan_radius():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(4, 3, 2, 2)
    bad = torch.tensor([[1.2, -0.2, 0.0]] * 4)
    with pytest.raises(ValueError, match="target_probs must be probabilities"):
        A.pgd_kl(model, x, bad, 0.03, 0.01, 2)
    eps = torch.full((4, 1, 1, 1), 0.03)
    eps[1] = float("nan")
    with pytest.raises(ValueError, match=r"per-sample eps must lie in \(0, 1\].*NaN"):
        A.pgd_kl(model, x, torch.full((4, 3), 1 / 3), eps, 0.01, 2)
    out = A.pgd_kl(model, x, torch.full((4, 3), 1 / 3), torch.full((4, 1, 1, 1), 0.03), 0.01, 2)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------ configs and presets
def test_resume_and_overwrite_together_are_refused():
    with pytest.raises(ConfigError, match="resume and overwrite together are refused"):
        TrainConfig.from_dict({"resume": True, "overwrite": True})


def test_a_radius_written_as_a_fraction_is_accepted_everywhere():
    from absld_core.config import apply_overrides, yaml_load
    assert yaml_load("8/255") == pytest.approx(8 / 255)
    cfg = TrainConfig.from_dict(apply_overrides({}, ["attack.eps=8/255", "attack.alpha=2/255"]))
    assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.alpha == pytest.approx(2 / 255)
    assert yaml_load("runs/teacher") == "runs/teacher"          # a path stays a path
    with pytest.raises(ConfigError, match="divides by zero"):
        yaml_load("8/0")


@pytest.mark.parametrize("seed", ["abc", 1.5, -1])
def test_the_seed_is_a_non_negative_integer(seed):
    with pytest.raises(ConfigError, match=r"^seed=.* is invalid: must be an integer >= 0"):
        TrainConfig.from_dict({"seed": seed})


def test_empty_attack_lists_are_refused_before_training():
    for field in ("test_attacks", "val_attacks"):
        with pytest.raises(ConfigError, match=rf"attack\.{field}=\(\) is invalid: a non-empty list"):
            TrainConfig.from_dict({"attack": {field: []}})


def test_synthetic_options_are_checked():
    from absld_core.data import load_dataset
    with pytest.raises(ValueError, match=r"data\.options\.image_size=0 is invalid: an integer >= 1"):
        load_dataset("synthetic", image_size=0)


@pytest.mark.parametrize("body, match", [
    ("parameters: [1, 2]\n", r"parameters: \[1, 2\] is invalid: a mapping"),
    ("notebooks: 03_students\n", r"notebooks: '03_students' is invalid: a list"),
    ("per_notebook: 03_students\n", r"per_notebook: '03_students' is invalid: a mapping"),
    ("per_notebook: {03_students: fast}\n", r"per_notebook\.03_students: 'fast' is invalid"),
])
def test_preset_sections_of_the_wrong_kind_are_one_line(tmp_path, body, match):
    from absld_core.presets import StudyError, load_preset
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(StudyError, match=match):
        load_preset(str(path))


@pytest.mark.parametrize("over, match", [("epochs=ten", "parameter epochs='ten' is invalid: an integer"),
                                         ('augment="false"', "parameter augment='false' is invalid: true or false"),
                                         ("lr=fast", "parameter lr='fast' is invalid: a number")])
def test_a_study_parameter_of_the_wrong_kind_is_named(over, match):
    from absld_core.presets import StudyError, load_preset, resolve_parameters
    with pytest.raises(StudyError, match=match):
        resolve_parameters(load_preset("smoke", [over]))


def test_the_study_refuses_up_front_what_would_fail_after_training(tmp_path):
    for over, match in ((["03_students.methods=nope"], "unknown"), (["test_attacks=clean,fgsm"], "must include pgd20")):
        r = subprocess.run([sys.executable, "-m", "absld_core.cli", "study", "--preset", "smoke", "--out", str(tmp_path),
                            *[a for o in over for a in ("--set", o)]], capture_output=True, text=True, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and match in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------- runs and disks
def _tiny(tmp_path, **over):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from train_helpers import tiny
    return tiny("r", "pgd_at", tmp_path, optim__epochs=1, **over)


def test_an_out_dir_that_is_a_file_or_a_link_loop_is_one_line(tmp_path):
    from absld_core import train
    (tmp_path / "afile").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(ConfigError, match=r"afile is a file, not a folder"):
        train(_tiny(tmp_path / "afile"))
    with pytest.raises(ConfigError, match=r"loop is a symbolic link that leads nowhere"):
        train(_tiny(tmp_path / "loop"))


def test_a_checkpoint_whose_meta_cannot_be_built_names_the_file(tmp_path):
    from absld_core.models import CheckpointError, build_model, model_from_checkpoint, save_checkpoint
    path = tmp_path / "bad.pt"
    save_checkpoint(path, build_model("small_cnn", 4, 3, width=4), meta={"arch": "small_cnn", "num_classes": 4,
                                                                         "in_channels": 3, "width": -4})
    with pytest.raises(CheckpointError, match=r"bad\.pt records a model that cannot be built \(width=-4 is invalid"):
        model_from_checkpoint(path)


def test_a_broken_run_record_names_its_file(tmp_path):
    from absld_core import train
    from absld_core.runs import RunDir, RunRecordError
    run = RunDir(train(_tiny(tmp_path)))
    run.status_file.write_text("{not json")
    with pytest.raises(RunRecordError, match=r"status\.json is not valid JSON"):
        run.status()
    run.history_file.write_text('{"epoch": 1}\n{broken\n')
    with pytest.raises(RunRecordError, match=r"history\.jsonl line 2 is not valid JSON"):
        run.history()


def test_a_finished_run_is_reused_without_taking_its_lock(tmp_path, monkeypatch):
    """Read-only storage: opening run.lock fails there; reading a finished run needs no lock."""
    import errno
    from absld_core import runs, train
    path = train(_tiny(tmp_path))

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path / "run.lock"))
    monkeypatch.setattr(runs.RunDir, "lock", read_only)
    assert train({**_tiny(tmp_path), "resume": True}) == path


def test_a_full_disk_is_one_line_and_says_what_to_do(tmp_path, monkeypatch, capsys):
    import errno
    import yaml
    from absld_core import cli, runs
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_tiny(tmp_path / "out")))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "r" / "history.jsonl"))
    real_set_status = runs.RunDir.set_status

    def set_status(self, state, **info):   # the full disk cannot take the failure's record either
        if state == "failed":
            full()
        real_set_status(self, state, **info)
    monkeypatch.setattr(runs.RunDir, "append_history", full)
    monkeypatch.setattr(runs.RunDir, "set_status", set_status)
    assert cli.main(["train", "--config", str(cfg)]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0]
    run = runs.RunDir(tmp_path / "out" / "r")
    assert run.status()["state"] == "interrupted"     # status.json says running; no process is writing it


def test_an_eval_out_folder_that_cannot_be_written_is_refused_before_evaluating(tmp_path, monkeypatch):
    from absld_core import cli
    from absld_core.cli import UsageError
    import os

    def args(out):
        return cli.build_parser().parse_args(["eval", "--checkpoint", "x.pt", "--dataset", "digits", "--out", out])
    with pytest.raises(UsageError, match=r"does not exist"):
        cli._eval(args(str(tmp_path / "no" / "t.json")))
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(UsageError, match=r"is not writable"):
        cli._eval(args(str(tmp_path / "t.json")))


# ---------------------------------------------------------------------------------------- datasets
def _corrupted(mode: str, error: type) -> bytes:
    """A tar archive (gz or xz) whose compressed stream is damaged so that tarfile's own extraction raises
    `error` (zlib.error, lzma.LZMAError) past the headers: found by damaging two bytes at a time."""
    import io
    import random
    import tarfile
    rnd = random.Random(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        data = "".join(rnd.choice("abcdefghijklmnop ") for _ in range(300000)).encode()
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    for off in range(600, len(raw) - 20, 97):
        b = bytearray(raw)
        b[off] ^= 0xFF
        b[off + 1] ^= 0xFF
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(b)), mode="r:*") as t:
                for m in t.getmembers():
                    t.extractfile(m).read()
        except error:
            return bytes(b)
        except Exception:
            continue
    pytest.skip(f"no damage found that makes tarfile raise {error.__name__}")


def test_corrupted_archives_are_one_line(tmp_path):
    import lzma
    import zlib
    from absld_core.data.download import _safe_extract
    for name, mode, error in (("cifar-10-python.tar.gz", "w:gz", zlib.error), ("images.tar.xz", "w:xz", lzma.LZMAError)):
        path = tmp_path / name
        path.write_bytes(_corrupted(mode, error))
        with pytest.raises(DatasetError, match=rf"archive .*{name} is corrupted \({error.__name__}"):
            _safe_extract(path, tmp_path / "out")
        with pytest.raises(DatasetError, match=rf"archive .*{name} is corrupted or not a tar archive"):
            list(sources._iter_tar(path))


def test_cifar_and_svhn_arrays_of_the_wrong_shape_name_the_file(tmp_path):
    from scipy.io import savemat
    bad = {"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}
    with pytest.raises(DatasetError, match=r"data_batch_1: 'data' has shape \(2, 100\)"):
        sources._cifar_arrays([bad], "labels", ["data_batch_1"])
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 5), dtype=np.uint8), "y": np.ones((5, 1))})
    with pytest.raises(DatasetError, match=r"train_32x32\.mat: 'X' has shape \(32, 32, 5\)"):
        sources._read_svhn_mat(tmp_path / "train_32x32.mat")


def test_an_image_folder_mixing_gray_and_rgba_says_which_option_converts_it(tmp_path):
    from PIL import Image
    for part in ("train", "test"):
        for c, mode in (("a", "L"), ("b", "RGBA")):
            (tmp_path / part / c).mkdir(parents=True)
            Image.new(mode, (8, 8)).save(tmp_path / part / c / "0.png")
    with pytest.raises(DatasetError, match=r"mix channel counts \[1, 3\].*data\.options\.mode=RGB"):
        sources.read_imagefolder(tmp_path, cache=False)


# -------------------------------------------------------------------------------------------- the API
from absld_core.checks import InputError  # noqa: E402
from absld_core import evaluate as E  # noqa: E402
from absld_core.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model("small_cnn", 4, 3, width=4).eval()


X, Y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4


@pytest.mark.parametrize("call, match", [
    (lambda m: E.evaluate(m, X, Y.float(), ["clean"]), r"labels must be an integer tensor"),
    (lambda m: E.evaluate(m, X.permute(0, 2, 3, 1), Y, ["clean"]), r"look channels-last"),
    (lambda m: E.evaluate(m, X, Y[:, None], ["clean"]), r"labels must be 1-D.*y\.squeeze\(1\)"),
    (lambda m: E.evaluate(m, X.reshape(8, -1), Y, ["clean"]), r"must be 4-D"),
    (lambda m: A.pgd(m, X, torch.full((8,), 7), 0.03, 0.01, 2), r"labels must lie in \[0, 3\]"),
    (lambda m: A.pgd(m, X, Y[:5], 0.03, 0.01, 2), r"8 images but 5 labels"),
    (lambda m: A.fgsm(m, X, Y.float(), 0.03), r"labels must be an integer tensor"),
    (lambda m: A.pgd_kl(m, X, torch.full((8, 3), 1 / 3), 0.03, 0.01, 2), r"3 columns but the model has 4 classes"),
    (lambda m: build_model("small_cnn", 4, width=-1), r"width=-1 is invalid"),
    (lambda m: build_model("wrn", 4, width=1.5), r"width=1\.5 is invalid"),
])
def test_library_calls_raise_the_projects_error_with_one_line(net, call, match):
    with pytest.raises(InputError, match=match):
        call(net)


def test_a_cuda_device_without_cuda_is_one_line_in_evaluate_and_record_per_image(net, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"device='cuda' but this machine has no CUDA device"):
        E.evaluate(net, X, Y, ["clean"], device="cuda")
    from absld_core.experiments import record_per_image
    with pytest.raises(ConfigError, match=r"device='cuda' but this machine has no CUDA device"):
        record_per_image(tmp_path, device="cuda")


def test_evaluate_reads_a_comma_list_of_attacks(net):
    df = E.evaluate(net, X, Y, "clean,pgd3", progress=False)
    assert list(df.index) == ["clean", "pgd3"]


# ------------------------------------------------------------------------------------------ sweeps
SWEEP_TINY = ["train_per_class=20", "val_per_class=4", "test_per_class=5", "steps=2", "width=4", "batch_size=32",
              "test_attacks=clean,pgd20", "val_attacks=clean,pgd5", "03_students.methods=pgd_at", "seeds=[0]"]


def test_a_run_another_process_trains_is_reported_as_being_trained_elsewhere(tmp_path):
    import json
    from absld_core import plan as P
    from absld_core.runs import RunLock
    from absld_core.sweep import sweep
    jobs = P.study_plan("smoke", SWEEP_TINY + ["epochs=2", f"run_root={tmp_path}/runs/smoke"], notebooks=("03_students",))
    (job,) = jobs
    held = RunLock(job.run_dir / "run.lock")        # another sweep's worker, as far as this sweep can tell
    try:
        result = sweep(jobs, workers=1, log_root=tmp_path / "logs", log=lambda *_: None)
    finally:
        held.release()
    out = result.outcomes[job.key]
    assert out.state == "elsewhere" and "another process holds its run.lock" in out.error
    assert "1 being trained elsewhere" in result.summary() and "0 failed" in result.summary()
    (record,) = list((tmp_path / "logs" / "sweeps").glob("*.json"))   # this sweep's own record
    assert json.loads(record.read_text())[job.key]["state"] == "elsewhere"


@pytest.mark.parametrize("signame,rc,group", [("SIGTERM", 143, False), ("SIGINT", 130, False), ("SIGINT", 130, True)])
def test_a_signal_to_the_sweep_stops_its_workers_and_records_them(tmp_path, signame, rc, group):
    """SIGINT sent to the sweep process alone (`kill -INT`, a process manager) used to print "stopped"
    and leave the workers training on their own; group=True is the terminal's Ctrl-C, which reaches the
    sweep and its workers at once."""
    import json
    import os
    import signal
    import time
    import yaml
    preset = tmp_path / "slow.yaml"
    preset.write_text(yaml.safe_dump({"parameters": {"dataset": "digits", "train_per_class": 20, "val_per_class": 4,
                                                     "test_per_class": 5, "steps": 2, "width": 4, "batch_size": 32,
                                                     "test_attacks": "clean,pgd20", "epochs": 400, "seeds": [0],
                                                     "lr_schedule": "constant", "methods": "pgd_at"},
                                      "notebooks": ["03_students"]}))
    # SIGINT at its default in the sweep, however this suite was started: a job started with `&` from a
    # script, or under nohup, inherits SIGINT ignored, and a sweep started so keeps ignoring it (a70f8a8)
    proc = subprocess.Popen([sys.executable, "-m", "absld_core.cli", "sweep", "--preset", str(preset), "--out",
                             str(tmp_path), "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=group,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "runs" / "slow" / "s0" / "student-pgd_at"
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "history.jsonl").is_file():
        time.sleep(0.5)
    assert (run / "history.jsonl").is_file(), "the worker never started training"
    worker = int((run / "run.lock").read_text().strip())
    if group:
        os.killpg(proc.pid, getattr(signal, signame))
    else:
        proc.send_signal(getattr(signal, signame))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == rc, out
    for _ in range(40):              # the worker is gone, not left running on its own
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"worker {worker} is still running after the sweep was stopped")
    last = json.loads((tmp_path / "runs" / "slow" / "sweep" / "logs" / "last_sweep.json").read_text())
    assert last["s0/student-pgd_at"]["state"] == "stopped" and signame in last["s0/student-pgd_at"]["error"]
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"


def test_a_worker_counts_only_the_first_stop_signal():
    """Ctrl-C reaches a worker and its sweep at once; the sweep's SIGTERM that follows must not cut
    short the worker's recording of its stop (it left status.json at "running")."""
    import signal
    from absld_core import sweep as S
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as e:
            S._stop_once(lambda: SystemExit(143))(signal.SIGTERM, None)
        assert e.value.code == 143
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])


@pytest.mark.parametrize("hours", ["-1", "0.001"])
def test_a_job_time_limit_under_a_minute_is_refused(tmp_path, hours):
    r = subprocess.run([sys.executable, "-m", "absld_core.cli", "sweep", "--preset", "smoke", "--out", str(tmp_path),
                        "--executor", "submitit", "--hours", hours], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "at least one minute" in lines[0], r.stderr


def test_submitit_without_slurm_refuses_slurm_options_and_says_what_it_would_do(tmp_path, monkeypatch):
    import types
    from absld_core.plan import PlanError
    from absld_core.sweep import _Submitit

    class Local:
        cluster = "local"

        def __init__(self, folder, cluster=None):
            self.params = {}

        def update_parameters(self, **kw):
            self.params.update(kw)
    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=Local))
    with pytest.raises(PlanError, match=r"found no Slurm here .* ignoring --partition, --gpus"):
        _Submitit(2, tmp_path, {"partition": "gpu", "gpus_per_node": 1})
    asked = _Submitit(2, tmp_path, {"cluster": "local", "partition": None})
    assert "every job on this machine" in asked.describe()
