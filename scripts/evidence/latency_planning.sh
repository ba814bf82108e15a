#!/usr/bin/env bash
# One-shot latency planning against NetAdapt on one target (issue 16, item 4; docs/planning.md):
# WRN-16-2 on CIFAR-10 (JPEG), the BASE_EPOCHS-epoch network of related_evidence.sh, cut to half
# its batch-1 ONNX Runtime latency with 1 thread, two ways, seeds SEEDS, each fine-tuned
# FT_EPOCHS epochs afterwards:
#   one-shot  the rs solver plans the widths against the layer latency table
#             (scaling.budget.unit=latency, rule=ratio, value=0.5), L1 carves the plan;
#   NetAdapt  one width group per step, every proposal short-term fine-tuned (50 steps), until
#             the table says half the starting latency (compression=netadapt, target_ratio=0.5).
#   one-shot at equal training images: the same, fine-tuned EQUAL_EPOCHS epochs, about what
#             NetAdapt trains on: its short-term fine-tuning (metric netadapt/short_term_images:
#             48 to 54 proposals x 50 steps x 128 images in the first run) plus its FT_EPOCHS,
#             about 9 epochs of 44,928 images (NetAdapt's scoring of each proposal on the
#             validation split, forward passes only, is not counted).
# The export stage of every run measures the result the same way (latency/ort_fp32_b1_ms with
# export.latency.threads=1). Then results/latency_planning/prune.md/.csv (params, MACs, test
# accuracy, latency, time), stats.md (over seeds; pairs "one-shot vs NetAdapt") and runs.jsonl.
# Every run resumes from its run directory.
#   RUNS=/work/runs bash scripts/evidence/latency_planning.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_EPOCHS=${BASE_EPOCHS:-4}
FT_EPOCHS=${FT_EPOCHS:-2}
EQUAL_EPOCHS=${EQUAL_EPOCHS:-9}
SEEDS=${SEEDS:-0,1,2}
RUNS=${RUNS:-outputs/multirun}
WRN="model.arch.depth=16 model.arch.widen_factor=2"
dir=$RUNS/latency_planning
out=results/latency_planning
python scripts/run.py experiment=wrn_cifar_baseline $WRN train.epochs=$BASE_EPOCHS progress=false ${EXTRA:-} \
    hydra.run.dir=$dir/baseline
common="experiment=wrn_prune_half $WRN model.checkpoint=$dir/baseline/checkpoints/model.pt \
    seed=$SEEDS progress=false export=onnx export.latency.threads=1 ${EXTRA:-}"
oneshot="$common scaling.budget.unit=latency scaling.budget.rule=ratio scaling.budget.value=0.5 \
    scaling.budget.threads=1"
python scripts/run.py -m $oneshot train.epochs=$FT_EPOCHS hydra.sweep.dir=$dir/oneshot
python scripts/run.py -m $common train.epochs=$FT_EPOCHS compression=netadapt scaling=none \
    compression.netadapt.target_ratio=0.5 compression.netadapt.init_reduction=0.08 compression.netadapt.short_term_iters=50 \
    hydra.sweep.dir=$dir/netadapt
python scripts/run.py -m $oneshot train.epochs=$EQUAL_EPOCHS hydra.sweep.dir=$dir/oneshot_equal
mkdir -p $out
python scripts/tables.py records $([ -f $out/runs.jsonl ] && echo $out/runs.jsonl) $dir/baseline $dir/oneshot \
    $dir/netadapt $dir/oneshot_equal --out $out/runs.jsonl.new && mv $out/runs.jsonl.new $out/runs.jsonl
python scripts/tables.py prune $out/runs.jsonl --csv $out/prune.csv > $out/prune.md
python scripts/tables.py stats $out/runs.jsonl --out $out
