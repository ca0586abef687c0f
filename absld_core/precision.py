"""Which numeric precision a run trains in: `precision: auto` picks bf16 where the device computes it
natively, fp32 elsewhere.

    p = resolve(cfg, device)        # Precision(train='bf16', attack='bf16', channels_last=True, reason=...)
    autocast, attack_dtype = p.contexts(device)

Native bf16: a CPU whose /proc/cpuinfo flags name avx512_bf16 or amx_bf16 (on others bf16 is emulated and
slower than fp32), or a CUDA GPU of compute capability 8.0 or newer. Under bf16 the training passes run in
autocast (the teacher's forward pass for the soft labels included; its logits are taken to fp32 before the
temperatures divide them) and so do the training-time attack passes (10 of the 12 passes of an ABSLD step:
bf16 pays only when they use it too). Evaluation attacks always run in fp32 (the engine never passes them a dtype).
A resumed run continues in the precision it recorded when it started, not in the one this machine's `auto`
would pick (for_resume), and mix_note says when one study's runs would train in more than one.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """This CPU's first `model name` and `vendor_id` (absent keys are left out) and the set of its `flags`,
    read from /proc/cpuinfo (empty where it is absent)."""
    info: dict = {"flags": set()}
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags":
            info["flags"].update(value.split())
        elif key in ("model name", "vendor_id"):
            info.setdefault(key, value.strip())
    return info


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The native-bf16 flags this CPU reports (empty where /proc/cpuinfo is absent or has none)."""
    flags = cpu_info(cpuinfo)["flags"]
    return [f for f in BF16_CPU_FLAGS if f in flags]


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, the reason in words)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        ok = major >= 8
        return ok, f"CUDA compute capability {major}.{minor} ({'>=' if ok else '<'} 8.0)"
    flags = cpu_bf16_flags()
    return (True, f"CPU with {', '.join(flags)}") if flags else (False, "CPU without native bf16 (no avx512_bf16 or amx_bf16)")


@dataclass(frozen=True)
class Precision:
    """The resolved choice: dtype of the training passes and of the training attacks, memory format."""
    train: str          # 'fp32' or 'bf16'
    attack: str         # 'fp32' or 'bf16'
    channels_last: bool
    reason: str

    def contexts(self, device: torch.device):
        """(context factory for the training passes, dtype for the training attack passes or None)."""
        autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if self.train == "bf16"
                    else contextlib.nullcontext)
        return autocast, (torch.bfloat16 if self.attack == "bf16" else None)

    def as_record(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"training passes {self.train}, training attacks {self.attack}, "
                f"channels_last {'on' if self.channels_last else 'off'} ({self.reason})")


def resolve(cfg, device: torch.device) -> Precision:
    """The precision of a TrainConfig on `device`. precision: auto -> bf16 where native, else fp32;
    attack.amp_dtype: None follows the training precision, 'fp32' or 'bf16' is taken as given;
    channels_last: None -> on with bf16 (where it helped on both CPU and GPU), else as given."""
    if cfg.precision == "auto":
        native, why = native_bf16(device)
        train = "bf16" if native else "fp32"
        reason = f"auto: {why}"
    else:
        train, reason = cfg.precision, "set in the config"
    attack = cfg.attack.amp_dtype or train
    channels_last = cfg.channels_last if cfg.channels_last is not None else train == "bf16"
    return Precision(train, attack, bool(channels_last), reason)


def from_record(record, source: str = "the run's config.json") -> Precision | None:
    """The Precision a run recorded when it started (its config.json's resolved.precision); None for a
    run that recorded none. A record that is not one is refused, naming what is wrong."""
    if record is None:
        return None
    allowed = ("fp32", "bf16")
    if (not isinstance(record, dict) or record.get("train") not in allowed or record.get("attack") not in allowed
            or not isinstance(record.get("channels_last"), bool)):
        raise ValueError(f"{source}: resolved.precision={record!r} is not a precision record; allowed: train and "
                         f"attack each one of {', '.join(allowed)}, channels_last true or false")
    return Precision(record["train"], record["attack"], record["channels_last"], str(record.get("reason", "")))


def started_in(config: dict, source: str = "the run's config.json") -> Precision | None:
    """The Precision a run's config.json recorded when it started (its resolved.precision), or None."""
    resolved = config.get("resolved")
    return from_record(resolved.get("precision") if isinstance(resolved, dict) else None, source)


def for_resume(cfg, device: torch.device, config: dict, source: str = "the run's config.json") -> tuple[Precision, str | None]:
    """The precision a resumed run continues in: the one its config.json recorded when it started, whatever
    this machine's `auto` would pick (half a run in fp32 and half in bf16 is neither, and the resume would
    not be exact), and a sentence saying so when the two differ (None when they agree or it recorded none)."""
    started = started_in(config, source)
    here = resolve(cfg, device)
    if started is None:
        return here, None
    if _same(started, here):
        return started, None
    return started, (f"resuming in the precision the run started in ({started.describe()}); on this machine "
                     f"precision={cfg.precision!r} gives {here.describe()}")


def _same(a: Precision, b: Precision) -> bool:
    return (a.train, a.attack, a.channels_last) == (b.train, b.attack, b.channels_last)


def mix_note(started: dict[str, str], planned: dict[str, str]) -> str | None:
    """A sentence when the runs of one study train in more than one precision: started maps a run that
    has trained (all or part) to the training precision it recorded, planned a run still to train to the
    one it gets on this machine. None when every run has the same one."""
    every = {**started, **planned}
    kinds = sorted(set(every.values()))
    if len(kinds) < 2:
        return None
    counts = ", ".join(f"{sum(v == k for v in every.values())} in {k}" for k in kinds)
    said = f"the study's runs mix precisions ({counts})"
    if planned:
        said += (f": the started ones trained in {' and '.join(sorted(set(started.values())))}, the "
                 f"{len(planned)} still to train get {' and '.join(sorted(set(planned.values())))} on this machine")
    return (said + ". Runs of one study should share one: finish it on the kind of machine it started on, "
            "or fix `precision` in the preset (fp32 or bf16) and train it again")
