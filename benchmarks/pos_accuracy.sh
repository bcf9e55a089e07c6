#!/bin/sh
# Accuracy runs of the POS tagger on CoNLL-2003 (a training subset, a few epochs), one
# command per epoch (each resumes the previous epoch's checkpoint) so no single command
# holds the machine for long. Results: benchmarks/results/pos/<variant>_n<N>_s<seed>.jsonl
#   sh benchmarks/pos_accuracy.sh N EPOCHS SEED "dense k5 k10 torch"
# START=4 continues runs that completed 3 epochs (their checkpoints are in /tmp).
set -e
N=${1:-4000}; E=${2:-3}; SEED=${3:-0}; VARIANTS=${4:-"dense k5 k10 torch"}
OUT=benchmarks/results/pos
PY=.venv/bin/python
LOCK="flock -s /tmp/meprop-cpu.lock"
mkdir -p $OUT
for v in $VARIANTS; do
  log=$OUT/${v}_n${N}_s${SEED}.jsonl
  for e in $(seq ${START:-1} $E); do
    if [ "$v" = torch ]; then
      r=""; [ $e -gt 1 ] && r="--resume"
      $LOCK $PY benchmarks/bench_pos.py train-torch --threads 1 --max-train $N --epochs $e \
        --seed $SEED --log-json $log $r
    else
      case $v in dense) opt="--dense";; k*) opt="--k ${v#k}";;
        mesimp) opt="--k 5 --mesimp --prune-rate 0.02";;
        mesimp10) opt="--k 5 --mesimp --prune-rate 0.1";; esac
      r=""; [ $e -gt 1 ] && r="--resume /tmp/lstm_ck_${v}_${N}_${SEED}.npz"
      $LOCK .venv/bin/meprop-cpu train --task pos --dataset conll2003 --hidden 500 $opt \
        --optimizer adam --epochs $e --max-train $N --seed $SEED --threads 1 --log-json $log \
        --checkpoint /tmp/lstm_ck_${v}_${N}_${SEED}.npz --save-model /tmp/lstm_model_${v}.npz $r
    fi
  done
done
