"""What a newcomer meets first (part of the README issue): `absld train` ends with the run's class-wise
summary, `absld eval` can fetch its dataset, the help lists the presets that exist."""
import subprocess
import sys

import yaml

from absld_core.presets import known_presets
from train_helpers import tiny

CLI = [sys.executable, "-m", "absld_core.cli"]


def test_absld_train_ends_with_the_runs_class_wise_summary(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny("first", "pgd_at", tmp_path / "runs", optim__epochs=1)))
    r = subprocess.run(CLI + ["train", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("first (pgd_at), test set, fair_best.pt:")
    for attack in ("clean", "pgd5"):
        row = next(ln for ln in lines if ln.strip().startswith(attack))
        assert " avg " in row and " worst " in row and "(class " in row and " nsd " in row
    assert lines[-1] == f"run: {tmp_path / 'runs' / 'first'}"


def test_absld_eval_offers_download_and_the_missing_files_say_so(tmp_path):
    help_text = subprocess.run(CLI + ["eval", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--download" in help_text
    r = subprocess.run(CLI + ["eval", "--checkpoint", str(tmp_path / "x.pt"), "--dataset", "cifar10", "--root",
                              str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "absld eval: --download" in r.stderr, r.stderr


def test_the_study_help_lists_every_preset_in_presets():
    help_text = " ".join(subprocess.run(CLI + ["study", "--help"], capture_output=True, text=True,
                                        timeout=60).stdout.split())
    for name in known_presets():
        assert name in help_text, name
    assert "digits-paper" in known_presets()


def test_ctrl_c_is_one_line_and_says_the_command_continues(monkeypatch, capsys):
    from absld_core import cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_study", interrupted)   # the parser binds the command when main builds it
    assert cli.main(["study", "--preset", "smoke"]) == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("stopped (Ctrl-C)") and "continues" in err[0]


def test_the_rehearsal_counts_progress_and_reports_the_time_over_every_call(tmp_path, monkeypatch):
    """A rehearsal stopped and run again reports the time of both calls; the cost table says what it
    counts while it counts."""
    import time

    from absld_core import rehearse as R
    from absld_core import study

    monkeypatch.setattr(R, "step_cost", lambda *a, **k: {"flops_per_image": 1e6, "state_bytes": 10,
                                                        "saved_bytes_per_image": 10})
    outcomes = iter([1, 0])

    def run_study(*a, **k):
        time.sleep(1.1)
        return next(outcomes)
    monkeypatch.setattr(study, "run_study", run_study)
    first, second = [], []
    assert R.rehearse("smoke", out_root=tmp_path, log=first.append) == 1
    assert any(line.startswith("  counting one training step of") for line in first)
    assert first[-1].startswith("rehearsal FAILED in")
    assert R.rehearse("smoke", out_root=tmp_path, log=second.append) == 0
    import re
    m = re.match(r"rehearsal passed in (\d+) s over 2 calls \(this one (\d+) s\)", second[-1])
    assert m and int(m.group(1)) >= 2 and int(m.group(1)) > int(m.group(2)), second[-1]
    assert not (tmp_path / "rehearse" / "rehearsal_time.json").exists()   # a passed rehearsal starts afresh


def test_a_run_stopped_on_purpose_ends_by_saying_how_to_continue(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny("part", "pgd_at", tmp_path / "runs", optim__epochs=2, stop_after=1)))
    r = subprocess.run(CLI + ["train", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == ["stopped after epoch 1 (continue with --resume)",
                                             f"run: {tmp_path / 'runs' / 'part'}"]


def test_the_study_names_the_committed_figures_it_changed(tmp_path):
    """`make study` on another kind of CPU draws other figures (weights depend on the CPU's kernels and
    precision): the study says which committed files differ instead of leaving a silently dirty clone."""
    import subprocess

    from absld_core.study import tracked_changes

    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    figs = tmp_path / "figures" / "smoke"
    figs.mkdir(parents=True)
    (figs / "summary.md").write_text("a\n")
    (figs / "04_heatmap.png").write_bytes(b"png")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "figures")
    assert tracked_changes(figs) == []
    (figs / "04_heatmap.png").write_bytes(b"other png")
    (figs / "new.png").write_bytes(b"untracked")  # a new file is not a change to the committed ones
    assert tracked_changes(figs) == ["04_heatmap.png"]
    import tempfile

    with tempfile.TemporaryDirectory() as plain:  # outside any git checkout: nothing, and no error
        assert tracked_changes(plain) == []
