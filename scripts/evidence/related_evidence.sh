#!/usr/bin/env bash
# The related work's evidence at CPU scale (docs/results.md, "Pruning a WideResNet: criterion,
# random, scratch"): WRN-16-2 trained from scratch on CIFAR-10 (JPEG) for BASE_EPOCHS epochs,
# then half of its MACs carved out by L1 and by random pruning (FT_EPOCHS fine-tuning epochs
# each), and the same pruned architecture trained from scratch for BASE_EPOCHS epochs
# (Liu et al.'s baseline); then the search-style methods to about half the cost: NetAdapt to half
# the measured ONNX Runtime latency (50 short-term steps per proposal) and MorphNet to half the
# MACs (SPARSE_EPOCHS sparsifying epochs), each fine-tuned FT_EPOCHS epochs. Each run resumes
# from its run directory. About 55 min on 2 idle CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_EPOCHS=${BASE_EPOCHS:-4}
FT_EPOCHS=${FT_EPOCHS:-2}
SPARSE_EPOCHS=${SPARSE_EPOCHS:-2}
WRN="model.arch.depth=16 model.arch.widen_factor=2"
base=outputs/runs/wrn_cifar_baseline/wrn16_2_e$BASE_EPOCHS
python scripts/run.py experiment=wrn_cifar_baseline $WRN train.epochs=$BASE_EPOCHS progress=false \
    hydra.run.dir=$base
python scripts/run.py -m experiment=wrn_prune_half $WRN model.checkpoint=$base/checkpoints/model.pt \
    compression/criterion=l1,random train.epochs=$FT_EPOCHS progress=false
python scripts/run.py experiment=wrn_prune_half $WRN model.checkpoint=$base/checkpoints/model.pt \
    compression.init=scratch train=scratch train.optimizer.lr=0.1 train.epochs=$BASE_EPOCHS progress=false \
    hydra.run.dir=outputs/runs/wrn_prune_half/scratch_e$BASE_EPOCHS
python scripts/run.py experiment=wrn_prune_half compression=netadapt scaling=none $WRN \
    model.checkpoint=$base/checkpoints/model.pt compression.netadapt.target_ratio=0.5 \
    compression.netadapt.init_reduction=0.08 compression.netadapt.short_term_iters=50 \
    train.epochs=$FT_EPOCHS progress=false hydra.run.dir=outputs/runs/wrn_prune_half/netadapt_lat0.5
python scripts/run.py experiment=wrn_prune_half compression=morphnet scaling=none $WRN \
    model.checkpoint=$base/checkpoints/model.pt scaling.budget.rule=ratio scaling.budget.unit=macs \
    scaling.budget.value=0.5 compression.morphnet.epochs=$SPARSE_EPOCHS train.epochs=$FT_EPOCHS \
    progress=false hydra.run.dir=outputs/runs/wrn_prune_half/morphnet_macs0.5
python scripts/tables.py prune $base outputs/multirun/wrn_prune_half \
    outputs/runs/wrn_prune_half/scratch_e$BASE_EPOCHS outputs/runs/wrn_prune_half/netadapt_lat0.5 \
    outputs/runs/wrn_prune_half/morphnet_macs0.5 --csv docs/bench/prune_wrn16_2.csv
