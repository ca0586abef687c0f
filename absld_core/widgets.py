"""The temperature explorer: sliders that replay the ABSLD rule on a run's recorded class risks and
show the resulting schedules and soft labels; a button starts a short fine-tune with that schedule.

With interactive=False (papermill) it renders the same figures for the given settings, saves them and
returns, never waiting for a person.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import plots
from .replay import ReplaySettings, effective, replay, risks_from_history, soft_labels, travel_text
from .runs import load_run, write_text_atomic


class Explorer:
    """Everything the explorer needs from one ABSLD run (history, teacher, a few test images)."""

    def __init__(self, run_dir: str | Path, n_images: int = 4, device: str = "cpu"):
        from .engine import load_teacher, prepare_data
        from .config import TrainConfig

        rec = load_run(run_dir)
        self.run_dir = Path(run_dir)
        self.history = rec["history"]
        self.risk_adv, self.risk_nat = risks_from_history(self.history)
        self.cfg = TrainConfig.from_dict(rec["config"])  # from_dict sets the recorded "resolved" aside
        self.classes = rec["config"]["resolved"]["classes"]
        ds = prepare_data(self.cfg)
        # the images: test images of the hardest and easiest classes by the adversarial risk over the run
        order = np.argsort(-self.risk_adv.mean(axis=0))
        picks = [int(c) for c in np.concatenate([order[: (n_images + 1) // 2], order[::-1][: n_images // 2]])]
        self.roles = [f"hard #{i + 1}" for i in range((n_images + 1) // 2)] + [f"easy #{i + 1}" for i in range(n_images // 2)]
        idx = [int(torch.nonzero(ds.test_y == c)[0]) for c in picks]
        self.images = ds.test_x[idx].float() / 255
        self.labels = ds.test_y[idx]
        teacher = load_teacher(self.cfg, ds.num_classes, torch.device(device), ds.image_shape[0])
        with torch.no_grad():
            self.teacher_logits = teacher(self.images.to(device)).cpu()
        m = self.cfg.method.options
        from .schedule import eta_factors, milestone_epochs
        E = len(self.risk_adv)
        factors = tuple(eta_factors(self.cfg.optim, m.eta_follows_lr)[:E])
        self.recorded = ReplaySettings(eta=m.eta, tau_min=m.tau_min, tau_max=m.tau_max,
                                       tau_init_adv=float(np.mean(m.tau_init_adv)), tau_init_nat=float(np.mean(m.tau_init_nat)),
                                       decay_epochs=tuple(milestone_epochs(self.cfg.optim)) if m.eta_follows_lr else (),
                                       coupled=m.coupled_temperatures, eta_factors=factors)

    def schedules(self, s: ReplaySettings) -> tuple[np.ndarray, np.ndarray]:
        ta, tn = replay(self.risk_adv, self.risk_nat, s)
        return effective(ta, tn, s.coupled)

    def render(self, s: ReplaySettings, epoch: int | None = None):
        ta, tn = self.schedules(s)
        e = len(ta) - 1 if epoch is None else int(np.clip(epoch, 0, len(ta) - 1))
        fig1 = plots.schedule_plot(ta, tn, self.classes, title="Replayed temperatures",
                                   note=f"These settings: {travel_text(s, len(ta) - 1)}.")
        for ax in fig1.axes:
            ax.axvline(e, color="k", lw=1, ls=":")
        probs = soft_labels(self.teacher_logits, self.labels, ta[e])
        fig2 = plots.soft_label_plot(self.images.numpy(), probs, self.labels.tolist(), self.classes,
                                     temperatures=[float(ta[e][int(c)]) for c in self.labels], roles=self.roles,
                                     title=f"Adversarial soft labels at epoch {e} (eta={s.eta:g}, "
                                           f"tau in [{s.tau_min:g}, {s.tau_max:g}]{', coupled' if s.coupled else ''})")
        return fig1, fig2

    def finetune(self, s: ReplaySettings, epochs: int = 1, name: str | None = None, retrain: bool = True,
                 progress: bool = True) -> Path:
        """A short ABSLD fine-tune of the run's student, from its last weights and lr, with the
        temperatures the replayed schedule ends at. A fine-tune with the same settings that is already
        finished is reused; one with other settings replaces it only with retrain=True."""
        from .experiments import run_or_resume

        ta, tn = self.schedules(s)
        cfg = self.cfg.to_dict(keep_callables=True)
        cfg["name"] = name or f"{self.cfg.name}-finetune"
        cfg["overwrite"], cfg["resume"], cfg["stop_after"], cfg["progress"] = False, False, None, progress
        cfg["model"]["init_checkpoint"] = str(self.run_dir / "last.pt")
        # the schedule's end state, held fixed (a one-row table); already the product when coupled
        cfg["method"].update(temperature_schedule="table", tau_table_adv=[[float(t) for t in ta[-1]]],
                             tau_table_nat=[[float(t) for t in tn[-1]]], coupled_temperatures=False)
        cfg["optim"].update(epochs=epochs, milestones=(), schedule="constant",
                            lr=float(self.history["lr"].iloc[-1]))
        return run_or_resume(cfg, retrain=retrain)


def temperature_explorer(run_dir: str | Path, settings: ReplaySettings | None = None, *, epoch: int | None = None,
                         interactive: bool = True, figure_dir: str | Path | None = None,
                         finetune_epochs: int = 0, device: str = "cpu", retrain: bool = False):
    """Show the explorer (interactive) or render, show and save its figures for `settings` (papermill).

    Returns the Explorer, and in interactive mode also the widget box (else the fine-tune's run, or None)."""
    from IPython.display import display

    from .study import batch_mode

    ex = Explorer(run_dir, device=device)
    s = settings or ex.recorded
    if not interactive:
        fig1, fig2 = ex.render(s, epoch)
        display(fig1, fig2)  # the executed copy shows both figures
        if figure_dir is not None:
            plots.save(fig1, Path(figure_dir) / "explorer_schedule.png")
            plots.save(fig2, Path(figure_dir) / "explorer_soft_labels.png")
            write_text_atomic(Path(figure_dir) / "explorer_settings.json", json.dumps(asdict(s), indent=1))
        result = None
        if finetune_epochs > 0:
            result = ex.finetune(s, finetune_epochs, retrain=retrain, progress=not batch_mode())
        return ex, result

    import ipywidgets as W
    import matplotlib.pyplot as plt

    E = len(ex.risk_adv)
    style = {"description_width": "150px"}
    lay = W.Layout(width="460px")
    w = {
        "eta": W.FloatSlider(value=s.eta, min=0.0, max=1.0, step=0.01, description="eta", style=style, layout=lay),
        "bounds": W.FloatRangeSlider(value=(s.tau_min, s.tau_max), min=0.1, max=10.0, step=0.1,
                                     description="tau bounds", style=style, layout=lay),
        "tau_init_adv": W.FloatSlider(value=s.tau_init_adv, min=0.1, max=5.0, step=0.05,
                                      description="initial tau (adv)", style=style, layout=lay),
        "tau_init_nat": W.FloatSlider(value=s.tau_init_nat, min=0.1, max=5.0, step=0.05,
                                      description="initial tau (nat)", style=style, layout=lay),
        "decay": W.Text(value="" if s.eta_factors is not None else ",".join(map(str, s.decay_epochs)),
                        description="eta x0.1 after epochs", placeholder="the run's lr schedule",
                        style=style, layout=lay),
        "coupled": W.Checkbox(value=s.coupled, description="couple adv and nat (release quirk)"),
        "epoch": W.IntSlider(value=E if epoch is None else epoch, min=0, max=E, description="soft labels at epoch",
                             style=style, layout=lay),
    }
    out, status, budget = W.Output(), W.HTML(), W.HTML()
    button = W.Button(description="Fine-tune 1 epoch with this schedule", button_style="primary",
                      layout=W.Layout(width="320px"))

    def current() -> ReplaySettings:
        text = w["decay"].value.replace(" ", "")
        decay = tuple(int(t) for t in text.split(",") if t.strip().isdigit())
        lo, hi = w["bounds"].value
        return ReplaySettings(eta=w["eta"].value, tau_min=lo, tau_max=hi if hi > lo else lo + 0.1,
                              tau_init_adv=w["tau_init_adv"].value, tau_init_nat=w["tau_init_nat"].value,
                              decay_epochs=decay, coupled=w["coupled"].value,
                              eta_factors=s.eta_factors if not text else None)

    def redraw(_=None):
        budget.value = f"<b>Budget:</b> {travel_text(current(), E)}. Recorded run: {travel_text(ex.recorded, E)}."
        with out:
            out.clear_output(wait=True)
            fig1, fig2 = ex.render(current(), w["epoch"].value)
            display(fig1, fig2)
            plt.close(fig1)
            plt.close(fig2)

    def on_click(_):
        status.value = "<i>fine-tuning...</i>"
        path = ex.finetune(current(), 1)
        status.value = f"<b>done:</b> {path}"

    for widget in w.values():
        widget.observe(redraw, names="value")
    button.on_click(on_click)
    box = W.VBox([W.HBox([W.VBox(list(w.values())[:4]), W.VBox(list(w.values())[4:])]), budget, W.HBox([button, status]), out])
    display(box)
    redraw()
    return ex, box


__all__ = ["Explorer", "temperature_explorer", "ReplaySettings"]
