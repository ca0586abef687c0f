"""Who measured what, where: a record of the machine for every benchmark result."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone

import torch

from absld_core.precision import cpu_bf16_flags, cpu_info


def machine_info() -> dict:
    cpu = cpu_info().get("model name", platform.processor() or "")
    info = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_bf16_flags": cpu_bf16_flags()}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True, check=False).stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    return info
