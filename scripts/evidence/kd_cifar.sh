#!/usr/bin/env bash
# Knowledge distillation for small networks trained from scratch (issue 17, item 3: the ULiege
# thesis found it helped MobileNet v1 and nothing else). Two networks with about the same
# parameters, trained from scratch on CIFAR-10 (JPEG) for EPOCHS epochs, seeds SEEDS, each
# without and with distillation from a stronger teacher, each exported with post-training
# static int8:
#   experiment=kd_mobilenet_cifar  MobileNet v1 at half width (823,722 parameters, 12.2 M MACs)
#   experiment=kd_wrn_cifar        WRN-16 with stage widths 35/70/140 (826,509, 120.3 M MACs)
# The teacher: akamaster's pretrained ResNet-56 fine-tuned on the same training images
# (experiment=resnet56_finetune), its run directory given as train.distill.teacher (T = 4,
# alpha = 0.9). Then the tables:
#   results/kd_cifar/stats.md   each network over seeds (test accuracy fp32 and int8), and the
#                               pairs "distilled from a run vs not" with 95 % intervals
#   results/kd_cifar/runs.jsonl the finished runs' records (tables.py records)
# Every run resumes from its run directory; rerun the same command after a kill.
#   RUNS=/work/runs bash scripts/evidence/kd_cifar.sh
# EXTRA="train.threads=1" adds overrides that do not change results; OUT moves the tables;
# NETWORKS and SEEDS run a part (the tests run the whole script on tiny synthetic runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-0,1,2}
NETWORKS=${NETWORKS:-"kd_mobilenet_cifar kd_wrn_cifar"}
RUNS=${RUNS:-outputs/multirun}
dir=$RUNS/kd_cifar
out=${OUT:-results/kd_cifar}
teacher=$dir/teacher
python scripts/run.py experiment=resnet56_finetune progress=false ${EXTRA:-} hydra.run.dir=$teacher
for e in $NETWORKS; do
    sweep="python scripts/run.py -m experiment=$e train.epochs=$EPOCHS seed=$SEEDS progress=false ${EXTRA:-} \
        hydra.sweep.dir=$dir/$e"
    $sweep train.distill.enabled=false
    $sweep train.distill.enabled=true "train.distill.teacher='$teacher'"
done
mkdir -p $out
python scripts/tables.py records $([ -f $out/runs.jsonl ] && echo $out/runs.jsonl) $teacher \
    $(for e in $NETWORKS; do echo $dir/$e; done) --out $out/runs.jsonl.new && mv $out/runs.jsonl.new $out/runs.jsonl
python scripts/tables.py stats $out/runs.jsonl --out $out
