"""What `bash bench/gpu/run.sh` carries to the GPU machine, and whether it fits in the device tool's 64 MiB:
the working tree (git's tracked files and the untracked ones it does not ignore) plus the carried folders
bench/gpu/wheels (wheels the machine lacks) and bench/gpu/carry (the CIFAR-10 JPEG copy).

    python bench/gpu/carry.py            # prints the sizes; exit 1 when over the limit
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ("bench/gpu/wheels", "bench/gpu/carry")
LIMIT = 64 * 2 ** 20


def tree_files() -> list[Path]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split("\0") if f and (ROOT / f).is_file()]


def sizes() -> dict[str, int]:
    out = {"working tree": sum(f.stat().st_size for f in tree_files())}
    for c in CARRY:
        out[c] = sum(f.stat().st_size for f in (ROOT / c).rglob("*") if f.is_file()) if (ROOT / c).is_dir() else 0
    return out


def main() -> int:
    s = sizes()
    for k, v in s.items():
        print(f"carry: {k:20s} {v / 2 ** 20:7.1f} MiB")
    total = sum(s.values())
    print(f"carry: {'total':20s} {total / 2 ** 20:7.1f} MiB of the 64 MiB limit"
          + ("" if total <= LIMIT else "  -- OVER THE LIMIT"))
    return 0 if total <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
