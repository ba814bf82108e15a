#!/usr/bin/env bash
# Feature-map filter pruning of VGG-16 on CIFAR-10 (issue 17, item 1: the edge-deployment
# proposal). A CIFAR VGG-16 (BN) trained from scratch on CIFAR-10 (JPEG) for BASE_EPOCHS epochs
# (experiment=vgg16_cifar_baseline; the proposal's bar is 88 % test accuracy: the script stops
# if the baseline is below it), then half of its MACs carved out (experiment=vgg16_prune_half)
# by the feature-map criteria HRank, APoZ and mean activation against L1 and random pruning,
#   one-shot (compression.steps=1) and iterative (ITER_STEPS steps, STEP_EPOCHS fine-tuning
#   epochs between them), each fine-tuned and exported to ONNX fp32 and static int8, seeds
#   SEEDS (three: the comparisons get 95 % intervals), seed by seed (every recipe of a seed,
#   then the tables, then the next seed: a study cut short has whole comparisons). Both
#   recipes train the same number of epochs, so "iterative vs one-shot" compares them at
#   equal training images: the iterative run fine-tunes FT_EPOCHS after its last step, the
#   one-shot run FT_EPOCHS plus the (ITER_STEPS - 1) x STEP_EPOCHS the iterative run spent
#   between its steps. Then the tables:
#   results/vgg16_featuremap/prune.md/.csv  every run (and the unpruned reference: the baseline's
#                                           weights exported): params, MACs, test accuracy fp32 /
#                                           int8, file sizes, ORT batch-1 latency as each run's
#                                           export measured it (beside whatever else ran)
#   results/vgg16_featuremap/stats.md       every recipe over seeds; pairs "<criterion> vs l1",
#                                           "<criterion> vs random", "iterative vs one-shot"
#   results/vgg16_featuremap/pairs.png      those pairs' 95 % intervals (a forest plot)
#   results/vgg16_featuremap/runs.jsonl     the finished runs' records (tables.py records)
#   results/vgg16_featuremap/runtimes.json/.md  time per image (batch 1) and accuracy, fp32
#                                           and int8, on ONNX Runtime, OpenVINO and ExecuTorch:
#                                           the unpruned reference and seed 0 of every recipe (bench.py
#                                           int8, 5 interleaved rounds, 2 threads). It times:
#                                           run it on idle cores. It runs when runtimes.json
#                                           does not exist yet: a rerun keeps the committed
#                                           timing (BENCH=1 times again, BENCH=0 never).
#   results/vgg16_featuremap/deploy.md/.csv   the proposal's measures in one table, once runtimes.json
#                                           exists: per recipe the accuracy over seeds, parameters,
#                                           MACs, file sizes and the time per image of its timed
#                                           runs on each runtime (tables.py deploy)
# The trained baseline is released as an fp16 checkpoint (scripts/release_checkpoint.py:
# checkpoints/vgg16_cifar10.pt, committed), and the reference and every pruned run start from
# that file; where it exists the baseline is not trained again. Every run resumes from its run
# directory, and a run recorded in the committed runs.jsonl (with the same checkpoint, by its
# SHA-256) is not run again (records=): rerun the same command after a kill, or on a new
# machine whose run directories are gone.
#   RUNS=/work/runs bash scripts/evidence/vgg_featuremap.sh
# EXTRA="train.threads=1" adds overrides that do not change results; OUT moves the tables and
# CKPT the released baseline; MIN_ACC is the baseline's bar (the tests run the whole script on
# tiny synthetic runs with these).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_EPOCHS=${BASE_EPOCHS:-30}
FT_EPOCHS=${FT_EPOCHS:-5}
ITER_STEPS=${ITER_STEPS:-4}
STEP_EPOCHS=${STEP_EPOCHS:-1}
ONESHOT_EPOCHS=$((FT_EPOCHS + (ITER_STEPS - 1) * STEP_EPOCHS))
SEEDS=${SEEDS:-0,1,2}
CRITERIA=${CRITERIA:-hrank,apoz,mean_activation,l1,random}
RUNS=${RUNS:-outputs/multirun}
dir=$RUNS/vgg16_featuremap
out=${OUT:-results/vgg16_featuremap}
ckpt=${CKPT:-checkpoints/vgg16_cifar10.pt}
bench=${BENCH:-auto}  # auto: time only where nothing is timed yet
case $bench in 0|1|auto) ;; *) echo "vgg_featuremap.sh: BENCH=$bench: use 1 (time again), 0 (never) or leave it unset" >&2; exit 2;; esac
bar() {  # the proposal's bar on the baseline's test accuracy (its metrics.json or released file)
    python - "$1" "${MIN_ACC:-0.88}" <<'PY'
import json, sys
path, bar = sys.argv[1], float(sys.argv[2])
if path.endswith(".json"):
    acc = json.load(open(path))["test/acc"]
else:
    import torch
    acc = torch.load(path, map_location="cpu", weights_only=True)["meta"]["test/acc"]
sys.exit(0 if acc >= bar else f"{path}: VGG-16 test accuracy {acc:.4f} is below the bar {bar} "
         f"(MIN_ACC; the proposal's is 0.88): train it longer (BASE_EPOCHS) before pruning")
PY
}
records() {  # the committed records, where there are any: finished runs are not run again
    [ -f $out/runs.jsonl ] && echo records=$out/runs.jsonl || true
}
if [ ! -f $ckpt ]; then
    base="python scripts/run.py experiment=vgg16_cifar_baseline train.epochs=$BASE_EPOCHS"
    $base progress=false ${EXTRA:-} hydra.run.dir=$dir/baseline
    bar $dir/baseline/metrics.json
    python scripts/release_checkpoint.py $dir/baseline $(basename $ckpt) --out-dir $(dirname $ckpt) \
        --command "$base"
fi
bar $ckpt
# the unpruned reference, measured as the pruned runs are: the released weights evaluated and
# exported (ONNX fp32 + static int8), no training
python scripts/run.py experiment=vgg16_cifar_baseline model.checkpoint=$ckpt train.epochs=0 export=int8 \
    progress=false $(records) ${EXTRA:-} hydra.run.dir=$dir/reference
sweep="python scripts/run.py -m experiment=vgg16_prune_half model.checkpoint=$ckpt \
    progress=false ${EXTRA:-} hydra.sweep.dir=$dir/pruned compression/criterion=$CRITERIA"
tables() {  # the tables from every finished run (after each seed, so a cut-short study has them)
    mkdir -p $out
    python scripts/tables.py records $([ -f $out/runs.jsonl ] && echo $out/runs.jsonl) \
        $([ -d $dir/baseline ] && echo $dir/baseline) $dir/reference $dir/pruned --out $out/runs.jsonl.new && mv $out/runs.jsonl.new $out/runs.jsonl
    python scripts/tables.py prune $out/runs.jsonl --csv $out/prune.csv > $out/prune.md
    python scripts/tables.py stats $out/runs.jsonl --out $out --plot $out/pairs.png
    deploy || echo "vgg_featuremap.sh: the deploy table failed (above); the study goes on" >&2
}
deploy() {  # the proposal's table, where the bench has timed the runs
    [ -f $out/runtimes.json ] || return 0
    python scripts/tables.py deploy $out/runs.jsonl --runtimes $out/runtimes.json --csv $out/deploy.csv > $out/deploy.md
}
for seed in ${SEEDS//,/ }; do  # seed by seed: a study cut short still has whole comparisons
    $sweep seed=$seed compression.steps=1 train.epochs=$ONESHOT_EPOCHS $(records)
    $sweep seed=$seed compression.steps=$ITER_STEPS compression.step_epochs=$STEP_EPOCHS train.epochs=$FT_EPOCHS $(records)
    tables
done
if [ "$bench" = 1 ] || { [ "$bench" = auto ] && [ ! -f $out/runtimes.json ]; }; then
    python scripts/bench.py int8 --experiments --latency-batch 1 --repeats 5 --out $out/runtimes.json \
        --run-dirs $dir/reference $(grep -l '^seed: 0$' $dir/pruned/*/config.yaml | xargs -n1 dirname)
    deploy
fi
