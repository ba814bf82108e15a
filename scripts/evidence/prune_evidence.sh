#!/usr/bin/env bash
# The pruning evidence (docs/results.md, "Pruning ResNet-56 to half its MACs"): the
# unpruned reference, four criteria, L1's architecture trained from scratch, and L1 with
# distillation from the unpruned pretrained model during fine-tuning. Each run
# resumes from its run directory if killed; about 40 min on 2 CPU cores (bf16).
set -euo pipefail
cd "$(dirname "$0")/../.."
python scripts/run.py experiment=resnet56_finetune progress=false
python scripts/run.py -m experiment=resnet56_prune_half compression/criterion=l1,hrank,taylor,random progress=false
python scripts/run.py experiment=resnet56_prune_half compression.init=scratch progress=false
python scripts/run.py experiment=resnet56_prune_half train.distill.enabled=true progress=false
python scripts/tables.py prune outputs/runs/resnet56_finetune outputs/multirun/resnet56_prune_half \
    outputs/runs/resnet56_prune_half
