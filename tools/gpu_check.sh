#!/usr/bin/env bash
# The GPU-node check (issue 3): build the COVID-scale sample on all cores, then measure the
# loader against its references and ResNet-18 bf16 training fed by it. Writes JSON/logs to $OUT
# (or ./gpu-check). Needs torch with CUDA; the other packages come from .whl/ when present.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi -L; echo "cores: $(nproc)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
W=$(nproc)
T0=$(date +%s%N)
python3 tools/make_sample_dataset.py /tmp/gc --full --workers "$W" || exit 1
T1=$(date +%s%N)
python3 -m shardgen build /tmp/gc/COVID-19_Radiography_Dataset /tmp/gc-out --progress false | tee "$OUT/build.txt" || exit 1
T2=$(date +%s%N)
echo "generate $(( (T1 - T0) / 1000000 )) ms, build $(( (T2 - T1) / 1000000 )) ms (21,165 images, $W cores)" | tee -a "$OUT/build.txt"
timeout 200 python3 tools/bench_loader.py --source /tmp/gc-out --workers "$W" --seconds 8 --rounds 1 --pin \
  --json "$OUT/bench_loader.json" 2>&1 | tee "$OUT/bench_loader.txt"
timeout 120 python3 tools/train_ddp.py /tmp/gc-out --model resnet18 --synthetic --epochs 1 --steps 60 --batch_size 256 \
  --device cuda 2>&1 | tee "$OUT/train_synthetic.txt"
timeout 200 torchrun --standalone --nproc_per_node=1 tools/train_ddp.py /tmp/gc-out --model resnet18 --epochs 3 \
  --batch_size 256 --workers "$((W - 1))" --device cuda --sync 2>&1 | tee "$OUT/train_loader.txt"
echo done
