"""TensorBoard for every run: the event files, read back with tensorboard's own reader, hold exactly the
values of history.jsonl (as float32, TensorBoard's scalar type), one event per tag and epoch, also
after a stop, a kill and a resume; the final class-wise table as text; tracking can be switched off."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from absld_core import train  # noqa: E402
from absld_core.config import ConfigError, TrainConfig  # noqa: E402
from absld_core.runs import RunDir  # noqa: E402
from absld_core.trackers import scalars  # noqa: E402
from absld_core.trackers.tensorboard import event_files  # noqa: E402
from train_helpers import tiny  # noqa: E402


def read_events(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
    """Every scalar event of the run's event files ({tag: [(step, value), ...]} in file order) and the
    text summaries, through tensorboard's event file loader (no de-duplication)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out, texts = defaultdict(list), {}
    for f in event_files(run_dir):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:  # the loader gives scalars as float tensors (its data compat)
                if v.metadata.plugin_data.plugin_name == "scalars":
                    out[v.tag].append((event.step, float(np.float32(v.tensor.float_val[0]))))
                elif v.metadata.plugin_data.plugin_name == "text":
                    texts[v.tag] = v.tensor.string_val[0].decode()
    return dict(out), texts


def expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    run = RunDir(run_dir)
    classes = json.loads(run.config.read_text())["resolved"]["classes"]
    out = defaultdict(list)
    for record in run.history():
        for tag, v in scalars(record, classes).items():
            out[tag].append((record["epoch"], float(np.float32(v))))
    return dict(out)


def assert_events_match_history(run_dir: Path):
    got, texts = read_events(run_dir)
    want = expected(run_dir)
    assert set(got) == set(want)
    for tag in want:
        assert got[tag] == want[tag], tag   # exactly: same steps, once each, same float32 values
    return got, texts


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train(tiny("t", "natural", tmp_path_factory.mktemp("teacher"), optim__epochs=2, trackers=[]))


def _absld(tmp_path, teacher, **over):
    over.setdefault("optim__epochs", 4)
    return tiny("absld", "absld", tmp_path, method={"name": "absld", "teacher": {"checkpoint": str(teacher)}, "eta": 0.3},
                **over)


def test_an_absld_run_writes_what_its_history_holds(tmp_path, teacher):
    run = train(_absld(tmp_path, teacher))
    got, texts = assert_events_match_history(run)
    for tag in ("train/loss", "train/lr", "train/eta", "tau_adv/class0", "tau_nat/class3", "class_risk_adv/class1",
                "val_pgd3/avg", "val_pgd3/worst", "val_pgd3_class/class2", "val_clean/avg", "val_clean/nsd"):
        assert [s for s, _ in got[tag]] == [1, 2, 3, 4], tag
    assert "pgd5" in texts["final/class_wise/text_summary"] and "worst_class" in texts["final/class_wise/text_summary"]
    assert json.loads((run / "config.json").read_text())["resolved"]["trackers"] == ["tensorboard"]


def test_a_ham_run_writes_its_kept_fraction(tmp_path):
    run = train(tiny("ham", "ham", tmp_path, optim__epochs=3, method={"name": "ham", "ham_early_steps": 2,
                                                                     "ham_start_epoch": 2}))
    got, _ = assert_events_match_history(run)
    assert [s for s, _ in got["train/kept_fraction"]] == [1, 2, 3]
    assert got["train/kept_fraction"][0][1] == 1.0


def test_a_stopped_and_resumed_run_continues_its_curves(tmp_path, teacher):
    cfg = _absld(tmp_path, teacher, stop_after=2)
    train(cfg)
    assert [s for s, _ in read_events(tmp_path / "absld")[0]["train/loss"]] == [1, 2]
    run = train({**cfg, "stop_after": None, "resume": True})
    got, _ = assert_events_match_history(run)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4]


def test_a_killed_and_resumed_run_has_no_step_missing_or_repeated(tmp_path, teacher):
    cfg = _absld(tmp_path, teacher, optim__epochs=8)
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from absld_core import train
        train(json.loads({json.dumps(json.dumps(cfg))}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    hist = tmp_path / "absld" / "history.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if hist.is_file() and len(hist.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    run = train({**cfg, "resume": True})
    got, _ = assert_events_match_history(run)
    assert [s for s, _ in got["train/loss"]] == list(range(1, 9))


def test_tracking_off_writes_no_event_file_and_is_no_training_change(tmp_path, teacher):
    from absld_core.experiments import run_state

    cfg = _absld(tmp_path, teacher, optim__epochs=2, trackers=[])
    run = train(cfg)
    assert event_files(run) == [] and json.loads((run / "config.json").read_text())["trackers"] == []
    assert run_state({**cfg, "trackers": ["tensorboard"]})[0] == "done"  # reused, not trained again
    with pytest.raises(ConfigError, match="trackers=\\['wandb'\\] is invalid: a list of trackers from tensorboard"):
        TrainConfig.from_dict({**cfg, "trackers": ["wandb"]})
