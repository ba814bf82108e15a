#!/usr/bin/env bash
# Gradual magnitude pruning: does the machine move the results? (issue 17, item 2;
# results/gmp_machine/README.md). The GMP study (scripts/evidence/gmp.sh) ran on two machines:
# ResNet-20's runs with augmentation on a 2-core AMD EPYC (AVX512-BF16, no AMX), most runs
# without augmentation on a 2-core Intel Xeon with AMX, both training in bf16 with different
# kernels, so its "augmentation on vs off" pairs of seeds 1 and 2 differ by the machine as well as
# by the recipe. This script reruns the recorded runs of MODELS (resnet20) with augmentation,
# seeds SEEDS (1 2), on the machine it runs on - the same runs, the same labels, in a sweep of its
# own ($RUNS/gmp_machine/cifar_gmp) - and writes to OUT (results/gmp_machine):
#   runs.jsonl                      the reruns' records (a rerun of this script skips them);
#   gmp.md, gmp.csv, gmp.png        gmp.sh's tables of the reruns alone;
#   rerun.md, rerun.csv             tables.py rerun: each recorded run (FIRST) against its rerun,
#                                   the mean difference with its interval beside the seed sd;
#   stats.md, stats_*.csv,          tables.py stats over FIRST with the reruns in place of the
#   summary.md, pairs.png           recorded runs: every on/off pair of these seeds on one machine.
# Resumable like gmp.sh (it runs gmp.sh with OUT and RUNS set). Ten ResNet-20 runs, about 10
# minutes each at one thread on the Intel Xeon with AMX beside another training.
#   RUNS=/work/runs EXTRA="train.threads=1" bash scripts/evidence/gmp_machine.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
FIRST=${FIRST:-results/gmp/runs.jsonl}
export OUT=${OUT:-results/gmp_machine} RUNS=${RUNS:-outputs/multirun}/gmp_machine
export MODELS=${MODELS:-resnet20} SEEDS=${SEEDS:-"1 2"} NOAUG_SEEDS=" "  # with augmentation only
[ -f "$FIRST" ] || { echo "gmp_machine.sh: FIRST=$FIRST is not a runs.jsonl file (the recorded GMP runs)" >&2; exit 2; }
status=0
bash scripts/evidence/gmp.sh > /dev/null || status=1
python scripts/tables.py rerun "$FIRST" $OUT/runs.jsonl --csv $OUT/rerun.csv > $OUT/rerun.md || status=1
MERGED=$(mktemp --suffix=.jsonl)
# the reruns first: of two records of one run, tables.py records keeps the first found
python scripts/tables.py records $OUT/runs.jsonl "$FIRST" --out $MERGED > /dev/null &&
    python scripts/tables.py stats $MERGED --out $OUT --plot $OUT/pairs.png > /dev/null || status=1
rm -f $MERGED
cat $OUT/rerun.md
[ "$status" -eq 0 ] || echo "gmp_machine.sh: a run or a table failed; see $RUNS/cifar_gmp/*/run.log" >&2
exit $status
