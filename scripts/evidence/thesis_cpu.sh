#!/usr/bin/env bash
# The thesis's experiments at CPU scale (docs/results.md): for googlenet_rs and mobilenet_v1
# on Tiny-ImageNet-200 at 64 px,
#   1. the 200-class baseline Psi, trained from scratch (BASE_EPOCHS epochs), released in
#      fp16 as checkpoints/<model>_tiny200_e<BASE_EPOCHS>.pt (the strong baselines of
#      scripts/evidence/baselines.sh are checkpoints/<model>_tiny200.pt);
#   2. Psi' sized by rs and by uniform scaling to the same budget (lambda = 0.045), trained
#      from scratch (EPOCHS epochs), with Psi evaluated on each subset, N = 5, 10, 15, 20;
#   3. Psi' (rs) carved out of Psi by L1 pruning and fine-tuned (FT_EPOCHS epochs);
#   4. Psi' (rs) for N = 10 with gradual magnitude pruning to 50 % and 75 % sparsity;
# all exported to int8, then the tables and plots (results/thesis_cpu/<model>/).
# Every run resumes from its run directory if killed. On 2 CPU cores, about 3 hours.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_EPOCHS=${BASE_EPOCHS:-4}
EPOCHS=${EPOCHS:-5}
FT_EPOCHS=${FT_EPOCHS:-3}
NS=${NS:-5,10,15,20}
MODELS=${MODELS:-"googlenet mobilenet"}
declare -A ARCH=([googlenet]=googlenet_rs [mobilenet]=mobilenet_v1)

for m in $MODELS; do
    cmd="python scripts/run.py experiment=${m}_tiny_baseline train.epochs=$BASE_EPOCHS progress=false"
    cmd+=" hydra.run.dir=outputs/runs/${m}_tiny_baseline/epochs$BASE_EPOCHS"
    $cmd
    python scripts/release_checkpoint.py outputs/runs/${m}_tiny_baseline/epochs$BASE_EPOCHS \
        ${ARCH[$m]}_tiny200_e$BASE_EPOCHS.pt --command "$cmd"
done
for m in $MODELS; do
    base=outputs/runs/${m}_tiny_baseline/epochs$BASE_EPOCHS/checkpoints/model.pt
    python scripts/run.py -m experiment=${m}_rs dataset.num_classes=$NS scaling=rs,uniform \
        train.epochs=$EPOCHS model.checkpoint=$base progress=false
    python scripts/run.py -m experiment=${m}_rs dataset.num_classes=$NS model.checkpoint=$base \
        compression=prune train=finetune train.epochs=$FT_EPOCHS progress=false
done
for m in $MODELS; do
    python scripts/run.py -m experiment=${m}_rs dataset.num_classes=10 compression=magnitude \
        compression.sparsity.final_sparsity=0.5,0.75 train.epochs=$EPOCHS progress=false
    python scripts/tables.py thesis outputs/multirun/${m}_rs --out results/thesis_cpu/$m
done
