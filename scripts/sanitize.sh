#!/usr/bin/env bash
# Build meprop_cpu with AddressSanitizer + UndefinedBehaviorSanitizer in
# scratch copies of the sources and run the kernel tests under both.
#
#   scripts/sanitize.sh                      # the kernel test files (default)
#   scripts/sanitize.sh tests/test_nn.py     # other test files
#   BUILDS=portable scripts/sanitize.sh      # only one of the two builds
#   KEEP=1 scripts/sanitize.sh               # keep the scratch directory
#
# Two instrumented builds, each in its own copy of the sources:
#   portable  setup.py's MEPROP_SANITIZE=address,undefined: -fsanitize=...,
#             -O1 -g, and the portable C kernels (MEPROP_NO_DISPATCH: no
#             target_clones, no intrinsics);
#   simd      -fsanitize=address,undefined -g with MEPROP_NATIVE=1
#             (-march=native, -O3): the hand-written AVX-512 / AVX2 intrinsic
#             kernels this CPU runs in production, chosen at compile time (no
#             ifunc); the tests also force the portable paths. Skipped on a
#             CPU without AVX-512 (there -march=native would bring back the
#             ifunc dispatch that the sanitizers do not support well).
#   avx2      scripts/sanitize_dense.c, a C harness of the dense products
#             (include/meprop/dense.h) at the AVX2 level, built with
#             -fsanitize=address,undefined: on a CPU without AVX-512 the AVX2
#             intrinsic paths run instrumented nowhere else. Skipped on a CPU
#             without AVX2 + FMA.
# Exits 0 only if the builds compile, the sanitizers are shown to be live (a
# deliberate out-of-bounds write in a kernel must be reported), every test
# passes and no sanitizer report appears; non-zero otherwise. The checkout
# itself is not touched. Needs gcc with libasan and libubsan, Cython,
# setuptools, numpy, pytest and hypothesis. A Python extension needs the ASan
# runtime loaded first (LD_PRELOAD); CPython does not free everything at exit
# by design, so leak detection is off (scripts/leak_check.py covers growth).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
CC_BIN=${CC:-gcc}
BUILDS=${BUILDS:-portable simd avx2}
if [ "$#" -gt 0 ]; then
    TESTS=("$@")
else
    TESTS=(tests/test_topk.py tests/test_hits.py tests/test_sparse_linear.py
           tests/test_kernel_errors.py tests/test_nn_linear.py tests/test_dense.py
           tests/test_dispatch.py tests/test_nn.py tests/test_optim.py tests/test_properties.py
           tests/test_fused.py tests/test_lstm.py tests/test_tagger.py
           tests/test_parse_distinct.py
           tests/test_parsing.py::test_precomputation_gives_the_plain_network_scores
           tests/test_parsing.py::test_c_parser_matches_the_python_reference
           tests/test_parsing.py::test_training_learns_logs_and_resumes_bit_identically
           tests/test_parsing.py::test_mesimp_shrinks_the_parser)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/meprop-sanitize.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "sanitize: kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
START=$(date +%s)

LIBASAN=$("$CC_BIN" -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize: FAILED: $CC_BIN has no libasan.so ($LIBASAN)" >&2
    exit 2
fi

# Python snippets run under the sanitizers --------------------------------------
cat > "$WORK/check_build.py" <<'PYEOF'
import os, subprocess
import meprop_cpu
from meprop_cpu import _core
here = os.path.realpath(os.getcwd())
for mod in (_core,):
    path = os.path.realpath(mod.__file__)
    assert path.startswith(here), f"{mod.__name__} comes from {path}, not the sanitizer build"
    syms = subprocess.run(["nm", "-D", path], capture_output=True, text=True).stdout
    for needle in ("__asan_", "__ubsan_handle_"):
        assert needle in syms, f"{path} is not instrumented ({needle} missing)"
simd = meprop_cpu.show_config()["simd"]
if os.environ["MEPROP_EXPECT"] == "simd":
    assert _core.avx512_paths() and _core.dense_level() == 2, f"no AVX-512 paths ({simd})"
print(f"  instrumented build in {os.path.dirname(meprop_cpu.__file__)}: simd {simd}, "
      f"AVX-512 kernels {_core.avx512_paths()}, dense level {_core.dense_level()}")
PYEOF

# optim_rows is an unchecked wrapper: row 4 of a 4-row array lies past its end
cat > "$WORK/canary.py" <<'PYEOF'
import numpy as np
from meprop_cpu import _core
w = np.zeros((4, 3), np.float32)
_core.optim_rows(0, w, None, None, np.array([4], np.int32), np.ones((1, 3), np.float32), 1,
                    0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1)
print("canary: the out-of-bounds write was NOT reported")
PYEOF

run_build() {   # run_build NAME: copy, build, check, canary, tests
    local name=$1 src="$WORK/$1" rc=0 reports t0
    t0=$(date +%s)
    mkdir -p "$src"
    cp -r "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/include" "$ROOT/meprop_cpu" \
          "$ROOT/tests" "$src/"
    if [ -f "$ROOT/README.md" ]; then cp "$ROOT/README.md" "$src/"; else : > "$src/README.md"; fi
    rm -rf "$src"/meprop_cpu/*.so "$src"/meprop_cpu/_*.c "$src"/meprop_cpu/__pycache__ \
           "$src"/tests/__pycache__

    echo "sanitize[$name]: building in $src"
    if [ "$name" = portable ]; then
        (cd "$src" && MEPROP_SANITIZE=address,undefined CC="$CC_BIN" \
            "$PY" setup.py build_ext --inplace) > "$WORK/$name-build.log" 2>&1 || rc=$?
    else
        (cd "$src" && MEPROP_NATIVE=1 CC="$CC_BIN" \
            CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g" \
            LDFLAGS="-fsanitize=address,undefined" \
            "$PY" setup.py build_ext --inplace) > "$WORK/$name-build.log" 2>&1 || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        tail -40 "$WORK/$name-build.log"
        echo "sanitize[$name]: FAILED: the sanitizer build does not compile" >&2
        return 2
    fi

    (
        export LD_PRELOAD="$LIBASAN"
        # reports go to files too: pytest's capture would swallow them when the process dies
        mkdir -p "$WORK/$name-reports"
        export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:exitcode=99:print_summary=1"
        export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:report_error_type=1:exitcode=98"
        export PYTHONDONTWRITEBYTECODE=1
        export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"   # ahead of any installed build
        cd "$src"
        MEPROP_EXPECT=$name "$PY" "$WORK/check_build.py" || exit 3

        set +e
        "$PY" "$WORK/canary.py" > "$WORK/$name-canary.log" 2>&1
        rc=$?
        set -e
        if [ "$rc" -eq 0 ] || ! grep -q "AddressSanitizer: heap-buffer-overflow" "$WORK/$name-canary.log"; then
            cat "$WORK/$name-canary.log"
            echo "sanitize[$name]: FAILED: AddressSanitizer did not catch the canary (exit $rc)" >&2
            exit 3
        fi
        echo "  canary caught: heap-buffer-overflow reported, exit $rc"

        echo "  running ${TESTS[*]}"
        export ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$WORK/$name-reports/asan"
        export UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$WORK/$name-reports/ubsan"
        set +e
        "$PY" -m pytest -q -p no:cacheprovider -x "${TESTS[@]}" > "$WORK/$name-tests.log" 2>&1
        rc=$?
        set -e
        tail -1 "$WORK/$name-tests.log" | sed 's/^/  /'
        reports=$(cat "$WORK/$name-tests.log" "$WORK/$name-reports"/* 2>/dev/null \
                  | grep -cE "ERROR: AddressSanitizer|runtime error:" || true)
        if [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
            tail -30 "$WORK/$name-tests.log"
            for f in "$WORK/$name-reports"/*; do [ -e "$f" ] && head -60 "$f"; done
            echo "sanitize[$name]: FAILED (pytest exit $rc, $reports sanitizer report line(s))" >&2
            exit 1
        fi
    ) || return $?
    echo "sanitize[$name]: OK ($(( $(date +%s) - t0 ))s)"
}

run_avx2() {   # the C harness of the AVX2 dense products
    local t0 rc=0
    t0=$(date +%s)
    echo "sanitize[avx2]: building scripts/sanitize_dense.c"
    "$CC_BIN" -O1 -g -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=all \
        -fno-omit-frame-pointer -I"$ROOT/include" "$ROOT/scripts/sanitize_dense.c" \
        -o "$WORK/sanitize_dense" -lm > "$WORK/avx2-build.log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -40 "$WORK/avx2-build.log"
        echo "sanitize[avx2]: FAILED: the harness does not compile" >&2
        return 2
    fi
    local asan="detect_leaks=0:halt_on_error=1:exitcode=99:print_summary=1"
    local ubsan="halt_on_error=1:print_stacktrace=1:report_error_type=1:exitcode=98"
    rc=0
    ASAN_OPTIONS=$asan UBSAN_OPTIONS=$ubsan "$WORK/sanitize_dense" canary \
        > "$WORK/avx2-canary.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ] || ! grep -q "AddressSanitizer: heap-buffer-overflow" "$WORK/avx2-canary.log"; then
        cat "$WORK/avx2-canary.log"
        echo "sanitize[avx2]: FAILED: AddressSanitizer did not catch the canary (exit $rc)" >&2
        return 3
    fi
    echo "  canary caught: heap-buffer-overflow reported, exit $rc"
    rc=0
    ASAN_OPTIONS=$asan UBSAN_OPTIONS=$ubsan "$WORK/sanitize_dense" > "$WORK/avx2-run.log" 2>&1 \
        || rc=$?
    sed 's/^/  /' "$WORK/avx2-run.log" | tail -5
    if [ "$rc" -ne 0 ] || grep -qE "ERROR: AddressSanitizer|runtime error:" "$WORK/avx2-run.log"; then
        echo "sanitize[avx2]: FAILED (exit $rc)" >&2
        return 1
    fi
    echo "sanitize[avx2]: OK ($(( $(date +%s) - t0 ))s)"
}

status=0
for name in $BUILDS; do
    if [ "$name" = avx2 ]; then
        if ! grep -qw avx2 /proc/cpuinfo 2>/dev/null || ! grep -qw fma /proc/cpuinfo 2>/dev/null; then
            echo "sanitize[avx2]: skipped: this CPU has no AVX2 + FMA"
            continue
        fi
        run_avx2 || { status=$?; KEEP=1; break; }
        continue
    fi
    if [ "$name" = simd ] && ! grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
        echo "sanitize[simd]: skipped: this CPU has no AVX-512"
        continue
    fi
    run_build "$name" || { status=$?; KEEP=1; break; }
done
ELAPSED=$(( $(date +%s) - START ))
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED after ${ELAPSED}s (logs in $WORK)" >&2
    exit "$status"
fi
echo "sanitize: OK: no AddressSanitizer / UndefinedBehaviorSanitizer report in [$BUILDS] (${ELAPSED}s)"
