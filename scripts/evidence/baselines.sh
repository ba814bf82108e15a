#!/usr/bin/env bash
# The strong 200-class baselines Psi (googlenet_rs and mobilenet_v1 on Tiny-ImageNet-200 at
# 64 px, the recipe in conf/experiment/*_tiny_baseline.yaml), trained side by side with one
# thread each, then released in fp16 as checkpoints/<arch>_tiny200.pt. CPU hours (5 to 17 h
# for GoogLeNet and about 4 h for MobileNet on a 2-core Xeon, by its load): killed at any
# point, the same command resumes each run from its last checkpoint (written at every epoch's
# end and every train.checkpoint_every_min = 10 minutes within one).
#   RUNS=/work/runs bash scripts/evidence/baselines.sh        # run directories under $RUNS
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-outputs/runs}
THREADS=${THREADS:-1}
MODELS=${MODELS:-"googlenet mobilenet"}
declare -A ARCH=([googlenet]=googlenet_rs [mobilenet]=mobilenet_v1)

pids=()
for m in $MODELS; do
    dir=$RUNS/${m}_tiny_baseline/recipe16
    mkdir -p "$dir"
    python scripts/run.py experiment=${m}_tiny_baseline train.threads=$THREADS progress=false \
        hydra.run.dir="$dir" >>"$dir/console.log" 2>&1 &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" -eq 0 ] || { echo "baselines.sh: a run failed; see $RUNS/*_tiny_baseline/recipe16/console.log" >&2; exit 1; }
for m in $MODELS; do
    python scripts/release_checkpoint.py "$RUNS/${m}_tiny_baseline/recipe16" ${ARCH[$m]}_tiny200.pt \
        --command "python scripts/run.py experiment=${m}_tiny_baseline"
done
