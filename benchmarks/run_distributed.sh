#!/usr/bin/env bash
# Every measurement of benchmarks/results/distributed/ (about 8 minutes on the
# shared 2-core VM with ROUNDS=5 rounds of the four topk step-time variants and
# the two batch_dw ones, then PAIRED_BLOCKS=60 alternating blocks of each variant), all
# under one hold of the project's exclusive CPU lock (MEPROP_LOCKED=1 skips
# taking it). Runs the installed package: `pip install .` first.
# Needs mpi4py and an MPI (pip install 'meprop_cpu[distributed]' mpich).
set -euo pipefail
if [ -z "${MEPROP_LOCKED:-}" ]; then
    exec env MEPROP_LOCKED=1 flock -x /tmp/meprop-cpu.lock "$0" "$@"
fi
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/distributed
B=benchmarks/bench_distributed.py
LOCK=""
mkdir -p "$OUT"
cd /tmp   # run the installed package, not the source folder
R=$OLDPWD
MPIEXEC=${MPIEXEC:-$R/$(dirname "$PY")/mpiexec}
$LOCK "$MPIEXEC" -n 2 "$R/$PY" -m mpi4py "$R/$B" exchange "$R/$OUT/exchange.json"
$LOCK "$MPIEXEC" -n 2 "$R/$PY" -m mpi4py "$R/$B" exchange "$R/$OUT/exchange_batch_dw.json" --mode batch_dw
o=0
for round in $(seq 1 "${ROUNDS:-5}"); do
    o=$((o + 1)); $LOCK "$R/$PY" "$R/$B" steps "$R/$OUT/steps_1x2_fused_r$round.json" --threads 2 --max-train 20000 --order $o
    o=$((o + 1)); $LOCK "$MPIEXEC" -n 2 "$R/$PY" -m mpi4py "$R/$B" steps "$R/$OUT/steps_2x1_auto_r$round.json" --threads 1 --distributed --max-train 20000 --order $o
    o=$((o + 1)); $LOCK "$R/$PY" "$R/$B" steps "$R/$OUT/steps_1x2_modules_r$round.json" --threads 2 --no-fused --max-train 20000 --order $o
    o=$((o + 1)); $LOCK "$MPIEXEC" -n 2 "$R/$PY" -m mpi4py "$R/$B" steps "$R/$OUT/steps_2x1_dense_r$round.json" --threads 1 --distributed --exchange dense --max-train 20000 --order $o
done
# the default mode, batch_dw (each rank sends x and dy; every rank selects over the global batch)
for round in $(seq 1 "${ROUNDS:-5}"); do
    o=$((o + 1)); $LOCK "$R/$PY" "$R/$B" steps "$R/$OUT/steps_bdw_1x2_fused_r$round.json" --threads 2 --max-train 20000 --order $o --mode batch_dw
    o=$((o + 1)); $LOCK "$MPIEXEC" -n 2 "$R/$PY" -m mpi4py "$R/$B" steps "$R/$OUT/steps_bdw_2x1_auto_r$round.json" --threads 1 --distributed --max-train 20000 --order $o --mode batch_dw
done
# 2 x 1 against 1 x 2 in one MPI job, the variants alternating block by block
$LOCK "$MPIEXEC" -n 2 "$R/$PY" -m mpi4py "$R/$B" paired "$R/$OUT/paired.json" --blocks "${PAIRED_BLOCKS:-60}"
$LOCK "$R/$PY" "$R/$B" apply "$R/$OUT/apply.json"
"$R/$PY" "$R/$B" report "$R/$OUT"
"$R/$PY" "$R/benchmarks/scale_model.py" --results "$R/$OUT"
