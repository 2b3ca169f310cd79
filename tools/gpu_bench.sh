#!/usr/bin/env bash
# The GPU-node measurements of docs/benchmarks.md in one run (issue 13): generate the
# 21,165-image COVID-sized set, build it at 256x256, run tools/bench_loader.py (ceiling,
# make_loader, decoded cache on/off by epoch, stock webdataset, PNG files, 1 and 2 ranks
# on the node) and tools/train_ddp.py with ResNet-18 and ResNet-50 in bf16, channels_last:
# the model on resident data (--synthetic), fed by make_loader (decoded cache on and off),
# and with --sync (waiting = GPU idle time).
#
# Usage:  bash tools/gpu_bench.sh OUTDIR [FRACTION] [TRAIN_EXTRA...]
#   OUTDIR      where the log and the JSON results go
#   FRACTION    share of each class to generate (default 1.0: 21,165 images)
#   TRAIN_EXTRA extra train_ddp.py arguments (a CPU dry run uses: --steps 2 --batch_size 8)
# Each step has its own time limit, so one hang costs that step only. Runs with the
# python3 on PATH; set PY to use another. PARTS (bench_loader's --only list) and SYNC=0
# (skip the --sync runs) make a shorter run.
set -u
OUT=${1:?usage: gpu_bench.sh OUTDIR [FRACTION] [TRAIN_EXTRA...]}
FRACTION=${2:-1.0}
shift $(( $# >= 2 ? 2 : 1 ))
PY=${PY:-python3}
PARTS=${PARTS:-ceiling,make_loader,epochs,webdataset,files,node}
SYNC=${SYNC:-1}
W=$(mktemp -d /tmp/gpu-bench.XXXX)
CPUS=$(nproc)
LW=$(( CPUS > 1 ? CPUS - 1 : 1 ))   # loader workers for training: one core left for the training process
mkdir -p "$OUT"
step() {  # step NAME SECONDS CMD...: run with a time limit, log its wall time and exit status
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s)"
    timeout -k 5 "$limit" "$@"
    echo "=== $name: rc $? in $(( SECONDS - t0 )) s"
}
echo "cpus $CPUS, loader workers $LW; $(date -u)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$PY" -c "import torch, PIL, numpy; print('torch', torch.__version__, 'pillow', PIL.__version__, 'numpy', numpy.__version__)"
df -h /dev/shm | tail -1
PIN=$("$PY" -c "import torch; print('--pin' if torch.cuda.is_available() else '')")

step generate 120 "$PY" tools/make_sample_dataset.py "$W/src" --full --fraction "$FRACTION" --workers "$CPUS"
step build 90 "$PY" -m shardgen build "$W/src/COVID-19_Radiography_Dataset" "$W/b256" --size 256 \
    --workers "$CPUS" --shard_size 100 --progress false
step loader 240 "$PY" tools/bench_loader.py --source "$W/b256" --workers "$CPUS" --batch_size 256 $PIN \
    --only "$PARTS" --rounds 1 --seconds 5 --work "$W/bench" \
    --json "$OUT/loader.json"
step codec 60 "$PY" tools/bench_png.py --images 200 --rounds 3
for model in resnet18 resnet50; do
    common=("$W/b256" --model "$model" --workers "$LW" --batch_size 256 --epochs 3 --eval_split "" "$@")
    step "$model synthetic" 90 "$PY" tools/train_ddp.py "${common[@]}" --synthetic
    step "$model cache on" 90 "$PY" tools/train_ddp.py "${common[@]}" --decoded_cache "$W/decoded-$model"
    [ "$SYNC" = 1 ] && step "$model cache on, --sync" 90 "$PY" tools/train_ddp.py "${common[@]}" --decoded_cache "$W/decoded-$model" --sync
    step "$model cache off" 90 "$PY" tools/train_ddp.py "${common[@]}" --decoded_cache none
done
rm -rf "$W"
