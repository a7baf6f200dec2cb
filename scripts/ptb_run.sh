#!/usr/bin/env bash
# Run one PTB experiment to the end, one epoch per invocation of `python -m sw_ref experiment`
# (each invocation resumes from <out>/last.pt, trains one epoch, evaluates best.pt with the float,
# quantized and integer models and records the entry), so results/ptb.json is current after
# every epoch and an interrupted run resumes where its last checkpoint left it.
#   usage: scripts/ptb_run.sh <out-dir> <experiment args...>   (PTB path: $HWRNN_PTB or --data)
# Example (the W4A4@450 run of docs/ptb_results.md):
#   HWRNN_PTB=../shared/data/ptb nohup setsid scripts/ptb_run.sh runs/W4A4_h450 \
#       --wbits 4 --abits 4 --hidden 450 > runs/W4A4_h450.log 2>&1 &
set -euo pipefail
root=$(realpath "$(dirname "$0")/..")
out=$(realpath -m --relative-to="$root" "$1"); shift   # recorded relative to the repository
cd "$root"
py=${PYTHON:-.venv/bin/python}
results=${RESULTS:-results/ptb.json}
batches=${EPOCH_BATCHES:-1328}   # one PTB epoch at batch 20 x bptt 35
mkdir -p "$out"
# RESUME_POINT=<file>: a committed resume point (python -m sw_ref resume-point) starts an empty run directory
if [ -n "${RESUME_POINT:-}" ] && [ ! -e "$out/last.pt" ]; then
    "$py" -m sw_ref resume-point unpack "$RESUME_POINT" --out "$out"
fi
# NICE=n lowers the run's priority (default 0: a run on the critical path keeps the cores); with the
# kernel's autogroup scheduling (on by default), nice only ranks processes inside one
# session: give this session's group the same niceness so the run yields to interactive work
echo "${NICE:-0}" > /proc/self/autogroup 2>/dev/null || true
# torch's OpenMP threads sleep instead of spinning between parallel regions: beside one other busy
# process on 2 cores, a 2-thread W4A2 H450 run took 1735 ms/batch spinning, 414 ms/batch passive
# (and 241-252 ms/batch either way alone)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
while :; do
    nice -n "${NICE:-0}" "$py" -m sw_ref experiment --out "$out" --results "$results" \
        --epochs 40 --lr 20 --optimizer sgd --dropout 0.3 --threads 1 --min-lr 0.05 \
        --max-batches "$batches" "$@"
    name=$("$py" - "$results" "$out" <<'PY'
import json, os, sys
entries = json.load(open(sys.argv[1]))["runs"].values()
run = os.path.abspath(sys.argv[2])
print(next((e["name"] for e in entries if os.path.abspath(e["run_dir"]) == run and e["finished"]), ""))
PY
)
    [ -n "$name" ] && { echo "ptb_run: $name finished"; exit 0; }
done
