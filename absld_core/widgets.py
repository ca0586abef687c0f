"""The temperature explorer: sliders that replay the ABSLD rule on a run's recorded class risks and
show the resulting schedules (over the run's own, drawn grey) and soft labels; a button starts a short
fine-tune with that schedule, shows its progress inside the widget and ends with a before/after
class-wise table with paired 95% intervals.

With interactive=False (papermill) it renders the same figures for the given settings, saves them,
runs the fine-tune when asked and shows the same table, never waiting for a person.
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

    def __init__(self, run_dir: str | Path, n_images: int = 4, device: str = "cpu",
                 class_order: list[str] | None = None, hard_words: str | None = None):
        from .engine import load_teacher, prepare_data
        from .config import TrainConfig

        rec = load_run(run_dir)
        self.run_dir = Path(run_dir)
        self.history = rec["history"]
        self.risk_adv, self.risk_nat = risks_from_history(self.history)
        self.cfg = TrainConfig.from_dict(rec["config"])  # from_dict sets the recorded "resolved" aside
        self.classes = rec["config"]["resolved"]["classes"]
        ds = prepare_data(self.cfg)
        # the images: test images of the hardest and easiest classes, by the study's definition (plan.hard_classes)
        # when it is given, else by this run's mean adversarial training risk, and the caption says which
        if class_order is not None:
            order = np.array([self.classes.index(c) for c in class_order])
            self.order_words = "the study's hardest and easiest classes" + (f" ({hard_words})" if hard_words else "")
        else:
            order = np.argsort(-self.risk_adv.mean(axis=0), kind="stable")
            self.order_words = "hardest and easiest by this run's mean adversarial training risk (no reference run)"
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
        top = max(float(self.recorded.tau_max), float(s.tau_max), 5.0) * 1.08  # fixed unless the bounds grow past it
        fig1 = plots.schedule_plot(ta, tn, self.classes, title="Replayed", recorded=self.schedules(self.recorded),
                                   ylim=(0, top), bounds=(s.tau_min, s.tau_max), marked_epoch=e,
                                   note=f"These settings: {travel_text(s, len(ta) - 1)}.")
        probs = soft_labels(self.teacher_logits, self.labels, ta[e])
        fig2 = plots.soft_label_plot(self.images.numpy(), probs, self.labels.tolist(), self.classes,
                                     temperatures=[float(ta[e][int(c)]) for c in self.labels], roles=self.roles,
                                     title=f"The teacher on clean test images at the adversarial temperature of the true "
                                           f"class, epoch {e} (eta={s.eta:g}, tau in [{s.tau_min:g}, {s.tau_max:g}]"
                                           f"{', coupled' if s.coupled else ''})\nimages: {self.order_words}")
        return fig1, fig2

    def soft_label_text(self, s: ReplaySettings, epoch: int | None = None) -> str:
        """What the soft-label figure shows, computed: per image the probability on its true class and,
        where the teacher is wrong, the class it favours (a sharper label makes a wrong teacher surer)."""
        ta, _ = self.schedules(s)
        e = len(ta) - 1 if epoch is None else int(np.clip(epoch, 0, len(ta) - 1))
        probs = soft_labels(self.teacher_logits, self.labels, ta[e])
        parts, wrong = [], []
        for i, (p, y) in enumerate(zip(probs, self.labels.tolist())):
            top = int(np.argmax(p))
            tau = float(ta[e][y])
            if top != y:
                wrong.append(i)
                parts.append(f"{self.roles[i]} (true {self.classes[y]}, tau {tau:.2f}): {p[y]:.2f} on the true class, "
                             f"**{p[top]:.2f} on {self.classes[top]}**")
            else:
                parts.append(f"{self.roles[i]} (true {self.classes[y]}, tau {tau:.2f}): {p[y]:.2f} on the true class")
        text = "Soft labels at epoch " + str(e) + ": " + "; ".join(parts) + "."
        if wrong:
            text += (" Where the teacher favours a wrong class, a sharper temperature (below 1) puts more mass on "
                     "that wrong class: sharpening a hard class's label also sharpens the teacher's mistakes.")
        return text

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

    def before_after(self, finetuned: str | Path, attack: str | None = None):
        """(table, attack): per class and for Avg / Worst / NSD the run's accuracy before the fine-tune,
        after it, and the paired difference after - before with its 95% interval (the same test images;
        one run each, so the interval covers the test images, not retraining)."""
        import pandas as pd

        from .evaluate import load_per_image
        from .intervals import paired_difference

        _, before = load_per_image(self.run_dir / "per_image.npz")
        _, after = load_per_image(Path(finetuned) / "per_image.npz")
        common = [a for a in before if a in after]
        attack = attack or ("pgd20" if "pgd20" in common else common[-1])
        d = paired_difference({0: finetuned}, {0: self.run_dir}, attack, names=("after", "before"),
                              classes=[str(c) for c in self.classes])
        t = d.table
        fmt = lambda m, v: f"{v:+.3f}" if m == "nsd" else f"{v:+.1f}"  # noqa: E731
        table = pd.DataFrame({"before": t["b"].astype(float).round(3), "after": t["a"].astype(float).round(3),
                              "after - before [95% CI]": [f"{fmt(m, r['diff'])} [{fmt(m, r['lo'])}, {fmt(m, r['hi'])}]"
                                                          for m, r in t.iterrows()]})
        table.index = ["Avg" if i == "avg" else "Worst" if i == "worst" else "NSD" if i == "nsd" else f"class {i}"
                       for i in t.index]
        return table, attack


def settings_notice(recorded: ReplaySettings, given: dict) -> str | None:
    """With use_recorded_settings the replay uses the run's own settings: name the given ones it ignores
    (those that differ from the run's), so a changed parameter is never silently without effect."""
    rec = asdict(recorded)
    ignored = {k: v for k, v in given.items() if k in rec and v is not None and
               (tuple(v) if isinstance(v, (list, tuple)) else v) != rec[k]}
    if not ignored:
        return None
    return ("use_recorded_settings=True: the replay uses the run's own " + ", ".join(f"{k}={rec[k]!r}" for k in ignored)
            + "; these parameters are not used: " + ", ".join(f"{k}={v!r}" for k, v in ignored.items())
            + " (set use_recorded_settings=False to replay them).")


def _table_html(ex: Explorer, path) -> str:
    table, attack = ex.before_after(path)
    from .vocab import attack_label

    return (f"<b>Fine-tuned run</b> {path}<br>{attack_label(attack)} on the test set, before and after; the paired "
            f"interval covers the test images, not retraining:" + table.to_html(classes="absld-table"))


def temperature_explorer(run_dir: str | Path, settings: ReplaySettings | None = None, *, epoch: int | None = None,
                         interactive: bool = True, figure_dir: str | Path | None = None,
                         finetune_epochs: int = 0, device: str = "cpu", retrain: bool = False,
                         class_order: list[str] | None = None, hard_words: str | None = None):
    """Show the explorer (interactive) or render, show and save its figures for `settings` (papermill).

    Returns the Explorer, and in interactive mode also the widget box (else the fine-tune's run, or None)."""
    from IPython.display import HTML, Markdown, display

    from .study import batch_mode

    ex = Explorer(run_dir, device=device, class_order=class_order, hard_words=hard_words)
    s = settings or ex.recorded
    if not interactive:
        fig1, fig2 = ex.render(s, epoch)
        display(fig1)  # the executed copy shows both figures, each with what to look at
        display(Markdown("Coloured: the replayed class temperatures; grey dashed: the run's own. "
                         + _schedule_text(ex, s)))
        display(fig2, Markdown(ex.soft_label_text(s, epoch)))
        if figure_dir is not None:
            plots.save(fig1, Path(figure_dir) / "explorer_schedule.png")
            plots.save(fig2, Path(figure_dir) / "explorer_soft_labels.png")
            write_text_atomic(Path(figure_dir) / "explorer_settings.json", json.dumps(asdict(s), indent=1))
        result = None
        if finetune_epochs > 0:
            print(f"fine-tuning {finetune_epochs} epoch(s) of {ex.run_dir.name} with the schedule's last temperatures")
            result = ex.finetune(s, finetune_epochs, retrain=retrain, progress=not batch_mode())
            display(HTML(_table_html(ex, result)))
        return ex, result

    import ipywidgets as W
    import matplotlib.pyplot as plt

    E = len(ex.risk_adv)
    style = {"description_width": "180px"}
    lay = W.Layout(width="520px")
    w = {  # eta on a log scale, 0.001 to 20: the study's own runs use 0.1 and, eta-scaled, 3.58 and 10.4
        "eta": W.FloatLogSlider(value=max(s.eta, 1e-3), base=10, min=-3, max=np.log10(20), step=0.02,
                                readout_format=".3g", description="eta (log scale)", style=style, layout=lay),
        "bounds": W.FloatRangeSlider(value=(s.tau_min, s.tau_max), min=0.1, max=10.0, step=0.1,
                                     description="tau bounds", style=style, layout=lay),
        "tau_init_adv": W.FloatSlider(value=s.tau_init_adv, min=0.1, max=5.0, step=0.05,
                                      description="initial tau (adv)", style=style, layout=lay),
        "tau_init_nat": W.FloatSlider(value=s.tau_init_nat, min=0.1, max=5.0, step=0.05,
                                      description="initial tau (nat)", style=style, layout=lay),
        "decay": W.Text(value="" if s.eta_factors is not None else ",".join(map(str, s.decay_epochs)),
                        description="eta x0.1 after epochs", placeholder="the run's lr schedule",
                        style=style, layout=lay),
        "coupled": W.Checkbox(value=s.coupled, description="couple adv and nat (release quirk)", indent=False,
                              layout=W.Layout(width="400px")),
        "epoch": W.IntSlider(value=E if epoch is None else epoch, min=0, max=E, description="soft labels at epoch",
                             style=style, layout=lay),
    }
    out, status, budget, work = W.Output(), W.HTML(), W.HTML(), W.Output()
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
        button.disabled = True
        status.value = "<i>fine-tuning 1 epoch: the progress bar below; then the before/after table</i>"
        work.clear_output()
        try:
            with work:  # the engine's progress bar renders inside the widget
                path = ex.finetune(current(), 1, progress=True)
            status.value = _table_html(ex, path)
        except Exception as e:  # shown where the person looks, not lost in a log
            status.value = f"<b>fine-tune failed:</b> {type(e).__name__}: {e}"
        finally:
            button.disabled = False

    for widget in w.values():
        widget.observe(redraw, names="value")
    button.on_click(on_click)
    box = W.VBox([W.HBox([W.VBox(list(w.values())[:4]), W.VBox(list(w.values())[4:])]), budget, button, work, status, out])
    display(box)
    redraw()
    return ex, box


def _schedule_text(ex: Explorer, s: ReplaySettings) -> str:
    """Where the replayed temperatures end: how many classes sit at each bound, and those of the images'
    hardest classes (the rule divides by max|g|, so every class moves by the full eta each epoch even
    when all the risks are near 0)."""
    from .findings import WHY_BOUNDS, at_bounds, bounds_phrase

    ta, tn = ex.schedules(s)
    out = [bounds_phrase(name, tau, s.tau_min, s.tau_max) for name, tau in (("adversarial", ta[-1]), ("clean", tn[-1]))]
    hard = [int(c) for c, r in zip(ex.labels.tolist(), ex.roles) if r.startswith("hard")]
    hard_t = ", ".join(f"{ex.classes[c]}: {ta[-1][c]:.2f} / {tn[-1][c]:.2f}" for c in hard)
    text = "At the last epoch, " + "; ".join(out) + f". The hard images' classes end at (adversarial / clean) {hard_t}."
    if any(sum(at_bounds(t[-1], s.tau_min, s.tau_max)).any() for t in (ta, tn)):
        text += " " + WHY_BOUNDS + "."
    return text


__all__ = ["Explorer", "temperature_explorer", "ReplaySettings", "settings_notice"]
