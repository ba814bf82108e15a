#!/usr/bin/env bash
# The CUDA evidence of docs/scale.md ("Mixed precision") and docs/results.md ("GUNN-15 on 3
# CIFAR-10 classes"), on one GPU, inside a wall-clock budget (BUDGET_S, seconds from the
# start of this script):
#   1. the pipeline's CUDA + fp16 + DistributedDataParallel path, under torchrun (1 process,
#      NCCL): ResNet-20 fine-tuned one epoch on CIFAR-10 (JPEG);
#   2. python scripts/bench.py train on the GPU: ResNet-20 images/s in fp32,
#      bf16 + channels-last and fp16 + channels-last, and ResNet-20 trained ACC_EPOCHS epochs
#      from scratch in each (test accuracy);
#   3. experiment=gunn15_cifar3 (the seed's setting: Adam 1e-3 constant, batch 50) for as many
#      of its 100 epochs as the time left allows (the epoch time is measured first; the
#      number run is printed and is in the run's config).
# Everything lands in EVIDENCE (default outputs/gpu_evidence): logs, bench JSON, the GUNN run's
# metrics. Data: dataset.root as usual ($RSNET_DATA or ../shared/data).
#   BUDGET_S=540 bash scripts/evidence/gpu_evidence.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-3600}
ACC_EPOCHS=${ACC_EPOCHS:-10}
PY=${PYTHON:-python3}
EV=${EVIDENCE:-outputs/gpu_evidence}
mkdir -p "$EV"
export PYTHONUNBUFFERED=1
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$EV/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$EV/gpu.txt"

echo "== 1. torchrun (NCCL) + fp16 pipeline smoke, $(left) s left"
timeout 150 $PY -m torch.distributed.run --standalone --nproc_per_node=1 scripts/run.py \
    train.device=cuda train.precision=fp16 train.epochs=1 dataset.num_classes=null progress=false \
    hydra.run.dir="$EV/runs/ddp_fp16" > "$EV/ddp_fp16.log" 2>&1
echo "exit $?"; tail -4 "$EV/ddp_fp16.log"

echo "== 2. bench train on the GPU, $(left) s left"
timeout $(( $(left) / 3 )) $PY scripts/bench.py train --device cuda --modes fp32 bf16+cl fp16+cl \
    --models resnet20 --steps 60 --accuracy-epochs "$ACC_EPOCHS" \
    --out "$EV/train_cuda.json" > "$EV/bench.log" 2>&1
echo "exit $?"; tail -12 "$EV/bench.log"

echo "== 3. GUNN-15, 3 classes, $(left) s left"
EPOCH_S=$($PY - <<'EOF'
import time, torch
from rsnet.models.gunn import gunn_cifar
m = gunn_cifar(num_classes=3).cuda().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.randn(50, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 3, (50,), device="cuda")
def step():
    with torch.autocast("cuda", torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(10): step()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(30): step()
torch.cuda.synchronize()
per_step = (time.perf_counter() - t) / 30
print(f"{per_step * 270 * 1.25:.1f}")  # 270 steps per epoch, + 25 % for validation and logging
EOF
)
EPOCHS=$($PY -c "print(max(1, min(100, int(($(left) - 90) / $EPOCH_S))))")
echo "estimated ${EPOCH_S} s per epoch: running $EPOCHS of the seed's 100 epochs"
timeout $(( $(left) - 10 )) $PY scripts/run.py experiment=gunn15_cifar3 train.epochs="$EPOCHS" \
    progress=false hydra.run.dir="$EV/runs/gunn15_cifar3" > "$EV/gunn.log" 2>&1
echo "exit $?"; tail -5 "$EV/gunn.log"
