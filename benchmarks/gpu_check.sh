#!/usr/bin/env bash
# The GPU checks, in one call of a lent machine (torch alone: no PyAV, librosa or faiss needed).
#
#   OUT=DIR bash benchmarks/gpu_check.sh          # on a CUDA machine: the paper configuration
#   OUT=DIR TINY=1 bash benchmarks/gpu_check.sh   # on CPU, tiny sizes: checks the script itself
#   PARTS="cluster joint" ...                     # only these parts (default: all, in order)
#   PROFILE_STEPS=N (cluster: kernel table of N steps), TP_STEPS_N=N (timed throughput steps),
#   LIMIT_COMPILE=S (seconds for the compile part, compilation included)
#
# 0. (cluster) benchmarks/cluster_loss.py at B = 512, K = 1M: the clustering head and L_clust.
# 1. benchmarks/train_throughput.py --config paper: the joint step (ResNet-50 f and g, B = 512,
#    K = 1M, bf16) against the bare backbones, with the issue-3 bars (ratio >= 0.9, >= 7,000
#    pairs/s); then the av stage (no L_AA) for comparison.
# 2. `coincide train --config paper` on a synthetic store (written by the store's own writer,
#    read through the real loader), every stage capped at a few hundred steps: killed with
#    SIGKILL once the first stage's checkpoint is on disk, started again, and checked to end
#    with every stage finished, as an uninterrupted run does.
# 3. (compile) The joint step again with optim.compile=true (torch.compile of the whole step).
# Parts: cluster, joint, av, coin, train, compile.
# Each part has its own time limit so that one slow part cannot eat the call. Logs go to $OUT.
set -u
OUT=${OUT:-/tmp/coincide-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d /tmp/coincide-gpu-XXXX)
t0=$(date +%s)
stamp() { echo "== $(($(date +%s) - t0)) s: $*"; }

if [ "${TINY:-0}" = 1 ]; then
  DEVICE=cpu; CONFIG=small; MEDIA=60; CLUSTER_SIZE=(--batch 16 --clusters 1000); TP_STEPS=(--steps 4 --warmup 1); AV_STEPS=(--steps 4 --warmup 1)
  TRAIN_SET=(--set curriculum.max_steps=30 --set curriculum.plateau.eval_every=10
             --set curriculum.plateau.min_steps=30 --set log.checkpoint_every=10 --set log.every=5)
  LIMIT_TP=300; LIMIT_TRAIN=600; LIMIT_COMPILE=1
else
  DEVICE=cuda; CONFIG=paper; MEDIA=1200; CLUSTER_SIZE=(); AV_STEPS=(--steps 100)
  TP_STEPS=(); [ -n "${TP_STEPS_N:-}" ] && TP_STEPS=(--steps "$TP_STEPS_N")
  n=${TRAIN_STEPS:-300}  # steps per stage
  TRAIN_SET=(--set curriculum.max_steps=$n --set curriculum.plateau.eval_every=$((n / 3))
             --set curriculum.plateau.min_steps=$n --set log.checkpoint_every=$((n / 2))
             --set log.every=$((n / 6)) --set eval.val_pairs=2048)
  LIMIT_TP=130; LIMIT_TRAIN=${LIMIT_TRAIN:-230}; LIMIT_COMPILE=${LIMIT_COMPILE:-110}
fi

want() { [[ " ${PARTS:-cluster joint av coin train compile} " == *" $1 "* ]]; }

stamp "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'cpus', os.cpu_count())"
} 2>&1 | tee "$OUT/machine.txt"

if want cluster; then
  stamp "0. clustering head + L_clust"
  timeout -s KILL "$LIMIT_TP" $PY benchmarks/cluster_loss.py --device "$DEVICE" "${CLUSTER_SIZE[@]}" \
    --profile "${PROFILE_STEPS:-0}" \
    2>&1 | tee "$OUT/cluster_loss.txt"
fi
for stage in joint av coin; do
  want "$stage" || continue
  stamp "1. throughput, $stage stage, --config $CONFIG"
  steps=("${TP_STEPS[@]}"); [ "$stage" != joint ] && steps=("${AV_STEPS[@]}")
  timeout -s KILL "$LIMIT_TP" $PY benchmarks/train_throughput.py --config "$CONFIG" \
    --device "$DEVICE" --stage "$stage" "${steps[@]}" 2>&1 | tee "$OUT/throughput_$stage.txt"
done

if want train; then
stamp "2. coincide train --config $CONFIG, killed after stage 1, resumed"
$PY - "$WORK/store" "$MEDIA" <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from train_throughput import write_synthetic_store
write_synthetic_store(Path(sys.argv[1]), int(sys.argv[2]))
print("synthetic store:", sys.argv[2], "media")
EOF
RUN="$WORK/run"
{ printf 'exec %q -m coincide.cli train %q --store %q --config %q --set device=%q' \
    "$PY" "$RUN" "$WORK/store" "$CONFIG" "$DEVICE"; printf ' %q' "${TRAIN_SET[@]}"; echo; } >"$WORK/train.sh"
setsid bash "$WORK/train.sh" >"$OUT/train_first.log" 2>&1 &
pid=$!
end=$(( $(date +%s) + LIMIT_TRAIN ))
until ls "$RUN"/checkpoints/stage1_*.pt >/dev/null 2>&1 || [ "$(date +%s)" -ge "$end" ]; do
  sleep 1
done
sleep 3  # into the second stage
kill -9 -- -"$pid" 2>/dev/null
wait "$pid"
stamp "killed (SIGKILL, exit $?) at: $(tail -c 400 "$OUT/train_first.log" | tr '\r' '\n' | grep . | tail -n 2)"
left=$(( end - $(date +%s) )); [ "$left" -lt 30 ] && left=30
timeout -s KILL "$left" bash "$WORK/train.sh" >"$OUT/train_resumed.log" 2>&1
echo "resumed run exit: $?"
tail -n 25 "$OUT/train_resumed.log"
$PY - "$RUN" <<'EOF' 2>&1 | tee "$OUT/train_check.txt"
import csv, json, sys
from pathlib import Path
run = Path(sys.argv[1])
state = json.loads((run / "state.json").read_text())
print("state.json:", json.dumps(state)[:600])
rows = list(csv.DictReader(open(run / "train_log.csv")))
print("train_log.csv rows:", len(rows), "columns:", list(rows[0])[:12] if rows else [])
steps = [(r.get("stage"), r.get("step"), r.get("split")) for r in rows]
print("duplicate (stage, step, split) rows:", len(steps) - len(set(steps)))
print("checkpoints:", sorted(p.name for p in (run / "checkpoints").iterdir()))
EOF
cp "$RUN/train_log.csv" "$OUT/" 2>/dev/null
fi

if want compile; then
  stamp "3. throughput, joint stage, torch.compile"
  timeout -s KILL "$LIMIT_COMPILE" $PY benchmarks/train_throughput.py --config "$CONFIG" \
    --device "$DEVICE" --set optim.compile=true "${TP_STEPS[@]}" 2>&1 | tee "$OUT/throughput_compile.txt"
fi
stamp "done"
rm -rf "$WORK"
