#!/usr/bin/env bash
# Gradual magnitude pruning of the pretrained CIFAR ResNet-20 and ResNet-44 (issue 17, item 2;
# docs/results.md, "Gradual magnitude pruning of ResNet-20 and ResNet-44"). Every run is
# experiment=cifar_gmp: akamaster's weights fine-tuned 8 epochs on CIFAR-10 (JPEG), all 10
# classes, SGD lr 0.01 cosine, then ONNX fp32 + static int8, each file's size plain and gzip -9.
# Per model (ResNet-20 first, then ResNet-44):
#   1. with augmentation (random crop + flip), seeds 0, 1, 2 (the conclusions: polynomial vs
#      constant, matched seed by seed, with 95 % intervals): the dense reference
#      (compression=none), and magnitude pruning to 60 % and 70 % along the polynomial
#      schedule (power 3 over epochs 0-5) and with constant sparsity (pruned to the target at
#      the first step, compression.sparsity.end_epoch=0);
#   2. without augmentation, the same five runs, seeds NOAUG_SEEDS (SEEDS by default; the
#      seed project's claim is that augmentation more than pays for the pruned neurons: its
#      comparisons "augmentation on vs off" and "pruned with augmentation vs dense without",
#      matched seed by seed, need the three);
# then the tables: results/gmp/gmp.md and .csv (accuracy fp32 / int8 over seeds, sparsity,
# file sizes), its plot results/gmp/gmp.png and results/gmp/stats.md (every row over seeds;
# pairs "polynomial vs constant", "magnitude-pruned vs dense", "augmentation on vs off" and
# "pruned with augmentation vs dense without", their 95 % intervals plotted in
# results/gmp/pairs.png).
# Runs go to $RUNS/cifar_gmp/<overrides> (RUNS=outputs/multirun by default). Rerun the same
# command after a kill: finished runs are skipped stage by stage, a killed one resumes from its
# last checkpoint, and a run recorded in the committed results/gmp/runs.jsonl is not run again
# (records=; a new machine, its run directories gone, goes on from there). The tables are
# written from the records merged with the run directories. A failed run does not stop the
# others; the script then exits 1.
#   RUNS=/work/runs bash scripts/evidence/gmp.sh
# MODELS="resnet20", SEEDS="0" or NOAUG_SEEDS="0" run a part; EXTRA="train.threads=1" adds
# overrides that do not change results. Do not mix precisions within a comparison:
# train.precision=auto trains bf16 on a GPU or an AVX512-BF16 / AMX CPU and fp32 elsewhere
# (every run records train/precision and its machine, machine/cpu).
#
# CPU time (estimated before the study ran, for its first design of 40 runs, 20 per model,
# without augmentation seed 0 only; seeds 1 and 2 without it add 20 more): each 8 x 44,928
# training images plus about 80,000 images evaluated (validation each epoch, test in PyTorch,
# ONNX fp32 and int8, the pretrained baseline), about 380,000 ResNet-20 training-image
# equivalents per ResNet-20 run and 2.4x that per ResNet-44 run (97.2 M / 40.6 M MACs):
# 26 M in all. Measured: one epoch of 1,920 images (experiment=cifar_gmp train.epochs=1
# dataset.train_per_class=200) trained at 19.7 images/s, fp32 (this Intel Xeon has AVX-512
# VNNI, no BF16 or AMX), with torch's default 2 threads while two other trainings shared the 2
# cores (the run got 0.35 of a core on average: 412 s CPU in 1,162 s): 56 images per
# core-second, so about 130 core-hours, about 65 hours on 2 idle cores. That rate is low:
# oversubscribed threads spin; the repository's fp32 benchmark (docs/results.md, Training
# speed: 469 images/s on 2 idle AMD cores) would make it about 15 hours. Estimate: 15-65 hours
# on 2 idle cores. At the measured 19.7 images/s (other jobs on the cores) it would take about
# two weeks: run it on idle cores, or with EXTRA="train.threads=1" beside other jobs.
# Measured since, on the 2-core AMD EPYC with AVX512-BF16 (bf16 training), one thread beside
# one or two other one-thread trainings: the 15 ResNet-20 runs with augmentation trained in
# 449 to 1,260 s each (train/time_s in results/gmp/runs.jsonl; one run timed across a SIGSTOP
# pause left out), about 8 to 21 minutes before evaluation and export: 2.5 to 7 hours of
# training for ResNet-20's 20 runs in one such slot, about 2.4x that for ResNet-44. On the
# 2-core Intel Xeon with AMX (bf16), one thread beside one other training: ResNet-44 runs
# trained in 1,043 to 1,409 s (about 18 to 23 minutes).
set -uo pipefail
cd "$(dirname "$0")/../.."
MODELS=${MODELS:-"resnet20 resnet44"}
SEEDS=${SEEDS:-"0 1 2"}
NOAUG_SEEDS=${NOAUG_SEEDS:-$SEEDS}
SWEEP=${RUNS:-outputs/multirun}/cifar_gmp
OUT=${OUT:-results/gmp}
NOAUG="dataset.augment.crop_padding=0 dataset.augment.flip=false"
status=0

sweep() {  # one Hydra multirun into $SWEEP; a failure is remembered, the study goes on
    python scripts/run.py -m experiment=cifar_gmp progress=false "hydra.sweep.dir=$SWEEP" \
        $([ -f $OUT/runs.jsonl ] && echo records=$OUT/runs.jsonl) "$@" ${EXTRA:-} || status=1
}

five() {  # dense, then polynomial and constant sparsity at 60 % and 70 %
    sweep "$@" compression=none
    sweep "$@" compression.sparsity.final_sparsity=0.6,0.7
    sweep "$@" compression.sparsity.final_sparsity=0.6,0.7 compression.sparsity.end_epoch=0
}

for model in $MODELS; do
    for seed in $SEEDS; do  # seed by seed: a session cut short still leaves whole comparisons
        five model=$model seed=$seed
    done
    for seed in $NOAUG_SEEDS; do
        five model=$model seed=$seed $NOAUG
    done
done
mkdir -p $OUT
python scripts/tables.py records $([ -f $OUT/runs.jsonl ] && echo $OUT/runs.jsonl) "$SWEEP" \
    --out $OUT/runs.jsonl.new && mv $OUT/runs.jsonl.new $OUT/runs.jsonl || status=1
python scripts/tables.py gmp $OUT/runs.jsonl "$SWEEP" --csv $OUT/gmp.csv --plot $OUT/gmp.png > $OUT/gmp.md || status=1
python scripts/tables.py stats $OUT/runs.jsonl --out $OUT --plot $OUT/pairs.png || status=1
cat $OUT/gmp.md
[ "$status" -eq 0 ] || echo "gmp.sh: a run or a table failed; see $SWEEP/*/run.log and sweep.json" >&2
exit $status
