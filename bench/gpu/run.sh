#!/usr/bin/env bash
# The GPU check in one command (a lent H100/H200, at most 9 minutes; docs in README "When a GPU is lent").
#
#   bash bench/gpu/run.sh                # on the GPU machine, from the repository root; results in $OUT
#   bash bench/gpu/run.sh --rehearse     # the same stages on a CPU, tiny (tests/test_gpu_check.py runs it)
#
# Stages, each with its own time limit, each writing its results as it goes (a stage cut short keeps the
# ones before it): 1 set-up (wheels from bench/gpu/wheels, the CIFAR-10 JPEG copy, versions), 2 the CUDA
# tests (pytest -m cuda), 3 speed (bench/train_throughput.py: ResNet-18 with a WRN-34-10 teacher and
# MobileNetV2, eager and compiled), 4 a real comparison (presets/gpu-check.yaml through absld sweep, then
# absld summary). At the end at most 8 files are gathered in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
REHEARSE=0
[ "${1:-}" = "--rehearse" ] && REHEARSE=1
OUT="${OUT:-$PWD/gpu-out}"
WORK="${GPU_WORK:-/tmp/absld-gpu}"
mkdir -p "$OUT" "$WORK"
LOG="$OUT/run.log"
: > "$LOG"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ "$REHEARSE" = 1 ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ABSLD_CACHE="$WORK/cache"
T0=$(date +%s)
BUDGET="${GPU_BUDGET_S:-540}"          # the whole command: 9 minutes

say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
export REHEARSE PY WORK T0 BUDGET
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log its output, record its exit status
  local name=$1 limit=$2; shift 2
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  if [ "$limit" -le 5 ]; then say "stage $name: skipped (no time left)"; echo "$name skipped" >> "$WORK/stages.txt"; return; fi
  say "stage $name: up to $limit s"
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a bash of its own
    export -f "$1"
    timeout --signal=TERM --kill-after=10 "$limit" bash -c "$1" >> "$WORK/$name.log" 2>&1
  else
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >> "$WORK/$name.log" 2>&1
  fi
  local rc=$?
  [ $rc = 124 ] && say "stage $name: cut at its limit ($limit s); what it wrote is kept" || say "stage $name: exit $rc"
  echo "$name $rc" >> "$WORK/stages.txt"
}
: > "$WORK/stages.txt"

# ---------------------------------------------------------------- 1 set-up
setup() {
  if [ "$REHEARSE" = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    mkdir -p "$WORK/site"
    for whl in bench/gpu/wheels/*.whl; do   # only what the machine lacks: its own torch and CUDA stay
      [ -e "$whl" ] || continue
      mod=$(basename "$whl" | cut -d- -f1 | tr '[:upper:]' '[:lower:]')
      if "$PY" -c "import $mod" 2>/dev/null; then echo "have $mod"; else
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$whl" && echo "installed $whl"; fi
    done
    for pkg in bench/gpu/wheels/site/*/; do  # packages carried as code (pyautoattack without its example model)
      [ -d "$pkg" ] || continue
      mod=$(basename "$pkg")
      if "$PY" -c "import $mod" 2>/dev/null; then echo "have $mod"; else cp -r "$pkg" "$WORK/site/" && echo "carried $mod"; fi
    done
  fi
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
  local data=bench/gpu/carry/cifar10-jpeg.tar.gz
  if [ -f "$data" ]; then cp "$data" "$WORK/cifar10-jpeg.tar.gz"; echo "CIFAR-10 JPEG copy: $(du -h "$data" | cut -f1)";
  elif [ -f ../shared/data/cifar10-jpeg.tar.gz ]; then cp ../shared/data/cifar10-jpeg.tar.gz "$WORK/cifar10-jpeg.tar.gz";
  else echo "no CIFAR-10 JPEG copy carried (bench/gpu/carry/); the comparison uses a small synthetic folder"; fi
}
export PYTHONPATH="$WORK/site:$PYTHONPATH"
stage setup 90 setup

# ---------------------------------------------------------------- 2 the CUDA tests
stage cuda_tests 150 "$PY" -m pytest -q -rs -m cuda tests/test_cuda.py -p no:cacheprovider --junitxml="$WORK/cuda_tests.xml"

# ---------------------------------------------------------------- 3 speed
speed() {
  if [ "$REHEARSE" = 1 ]; then
    "$PY" bench/train_throughput.py --device cpu --student small_cnn --teacher small_cnn --methods absld \
      --steps 1 --warmup 0 --batch 8 --no-isolate --out "$WORK/speed_small_cnn_eager.json"
    return
  fi
  for compiled in "" "--compile"; do
    tag=$([ -n "$compiled" ] && echo compiled || echo eager)
    "$PY" bench/train_throughput.py --device cuda --student resnet18 --teacher wrn --teacher-width 10 \
      --methods absld,rslad,ham --steps 20 --warmup 5 --batch 128 $compiled --out "$WORK/speed_resnet18_$tag.json"
    "$PY" bench/train_throughput.py --device cuda --student mobilenet_v2 --teacher wrn --teacher-width 10 \
      --methods absld --steps 20 --warmup 5 --batch 128 $compiled --out "$WORK/speed_mobilenet_v2_$tag.json"
  done
}
stage speed 170 speed

# ---------------------------------------------------------------- 4 a real comparison
compare() {
  local over=()
  if [ -f "$WORK/cifar10-jpeg.tar.gz" ]; then over+=(--set "data_root=$WORK/cifar10-jpeg.tar.gz"); fi
  if [ "$REHEARSE" = 1 ]; then
    [ -f "$WORK/cifar10-jpeg.tar.gz" ] || over+=(--set "data_root=$("$PY" -c "
from absld_core.rehearse import write_imagefolder_fixture
print(write_imagefolder_fixture('$WORK/fixture', train_per_class=3, test_per_class=2))")")
    over+=(--set device=cpu --set epochs=1 --set train_per_class=3 --set val_per_class=1 --set test_per_class=2
           --set batch_size=10 --set arch=small_cnn --set width=4 --set steps=2 --set threads=1
           --set 02_teacher.teacher_epochs=1 --set 02_teacher.teacher_arch=small_cnn --set 02_teacher.teacher_width=4
           --set 03_students.ham_early_steps=1)
  fi
  "$PY" -m absld_core.cli sweep --preset gpu-check --out "$WORK" "${over[@]}" || true
  "$PY" -m absld_core.cli summary --preset gpu-check --out "$WORK" "${over[@]}"
}
stage comparison "$(( $(left) - 15 ))" compare
[ "$REHEARSE" = 1 ] && "$PY" bench/gpu/carry.py | tee -a "$LOG"

# ---------------------------------------------------------------- gather (at most 8 files)
say "gathering into $OUT"
cp "$WORK/stages.txt" "$OUT/stages.txt" 2>/dev/null
for name in setup cuda_tests speed comparison; do
  [ -f "$WORK/$name.log" ] && tail -c 200000 "$WORK/$name.log" > "$OUT/$name.log"
done
"$PY" - "$WORK" "$OUT" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
speed = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("speed_*.json"))}
(out / "speed.json").write_text(json.dumps(speed, indent=1))
fig = work / "figures" / "gpu-check"
parts = [(fig / f).read_text() for f in ("summary.md",) if (fig / f).is_file()]
if (fig / "per_seed.csv").is_file():
    parts.append("## per_seed.csv\n\n```\n" + (fig / "per_seed.csv").read_text() + "```\n")
(out / "comparison.md").write_text("\n".join(parts) or "(no finished comparison)\n")
EOF
say "done in $(( $(date +%s) - T0 )) s; files: $(ls "$OUT" | tr '\n' ' ')"
