"""TensorBoard: event files in the run directory itself, so that `tensorboard --logdir runs/<preset>`
names each run by its place in the plan (s0/student-absld). Needs the `tensorboard` package."""
from __future__ import annotations

from pathlib import Path

from . import Tracker, TrackerError, register, scalars

EVENT_PREFIX = "events.out.tfevents."


def event_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob(EVENT_PREFIX + "*"))


@register("tensorboard")
class TensorBoard(Tracker):
    def __init__(self, run_dir, classes, run_name):
        super().__init__(run_dir, classes, run_name)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TrackerError(f"trackers=['tensorboard'] needs the tensorboard package ({e}); pip install "
                               f"tensorboard, or set trackers: [] to train without it") from None
        self._Writer = SummaryWriter
        self._w = None

    def _writer(self):
        if self._w is None:
            self._w = self._Writer(log_dir=str(self.run_dir), flush_secs=30)
        return self._w

    def epoch(self, record: dict) -> None:
        w = self._writer()
        for tag, v in scalars(record, self.classes).items():
            w.add_scalar(tag, v, global_step=int(record["epoch"]))
        w.flush()

    def restart(self, history: list[dict]) -> None:
        self.close()
        for f in event_files(self.run_dir):
            f.unlink()
        for record in history:
            w = self._writer()
            for tag, v in scalars(record, self.classes).items():
                w.add_scalar(tag, v, global_step=int(record["epoch"]))
        if self._w is not None:
            self._w.flush()

    def final(self, table_markdown: str) -> None:
        w = self._writer()
        w.add_text("final/class_wise", table_markdown)
        w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None
