"""Build the meprop_cpu C kernels (include/meprop/) into one Cython extension,
meprop_cpu._core (meprop_cpu/_core.pyx, its declarations in _core.pxd and its
wrappers in the _*.pxi files it includes).

Environment variables:
  MEPROP_NO_OPENMP=1   build serially even if the compiler supports OpenMP
  MEPROP_NATIVE=1      add -march=native (the default build runs on any x86-64
                       and picks AVX-512 / AVX2 code paths at run time)
  MEPROP_SANITIZE=address,undefined   build with gcc/clang sanitizers
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n);
    return n >= 1 ? 0 : 1;
}
"""


def _compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def openmp_flags():
    """Compile and run a tiny OpenMP program; return (cflags, ldflags) or None."""
    if os.environ.get("MEPROP_NO_OPENMP", "") not in ("", "0"):
        print("meprop_cpu: MEPROP_NO_OPENMP set, building without OpenMP", file=sys.stderr)
        return None
    tmp = tempfile.mkdtemp(prefix="meprop_omp_")
    try:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for flag in ("-fopenmp", "-qopenmp", "-Xpreprocessor -fopenmp"):
            cmd = _compiler() + flag.split() + [src, "-o", exe] + flag.split()[-1:]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                subprocess.run([exe], check=True, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                continue
            return flag.split(), [flag.split()[-1]]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("meprop_cpu: WARNING: the compiler has no working OpenMP; "
          "building the kernels serially", file=sys.stderr)
    return None


def build_flags():
    """(cflags, ldflags, macros) shared by every extension: same optimisation,
    OpenMP detection, optional -march=native and sanitizers."""
    cflags = ["-O3", "-std=c99", "-fno-math-errno", "-Wno-unused-function"]
    ldflags = []
    macros = [("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")]
    omp = openmp_flags()
    if omp:
        cflags += omp[0]
        ldflags += omp[1]
    if os.environ.get("MEPROP_NATIVE", "") not in ("", "0"):
        cflags.append("-march=native")
    sanitize = os.environ.get("MEPROP_SANITIZE", "")
    if sanitize:
        flag = "-fsanitize=" + sanitize
        cflags += [flag, "-fno-omit-frame-pointer", "-g", "-O1"]
        ldflags += [flag]
        # the sanitizers do not support GCC's ifunc dispatch well: build one baseline path
        macros.append(("MEPROP_NO_DISPATCH", "1"))
    return cflags, ldflags, macros


def make_extension(name, source, headers, flags):
    cflags, ldflags, macros = flags
    return Extension(
        name,
        sources=[source],
        include_dirs=[os.path.join(HERE, "include"), np.get_include()],
        depends=[os.path.join("include", "meprop", f) for f in headers]
        + [os.path.join("meprop_cpu", f) for f in sorted(os.listdir(os.path.join(HERE, "meprop_cpu")))
           if f.endswith((".pxi", ".pxd"))],
        extra_compile_args=list(cflags),
        extra_link_args=list(ldflags),
        define_macros=list(macros),
    )


def extensions():
    """One extension, meprop_cpu._core, for every kernel: one copy of each
    header's static state (the SIMD switch) and one set of declarations."""
    cflags, ldflags, macros = build_flags()
    # -fno-trapping-math lets GCC vectorise the LSTM cell's clamped exp; it allows no
    # value-changing transformation (only the floating-point exception flags may differ)
    return [make_extension("meprop_cpu._core", "meprop_cpu/_core.pyx",
                           sorted(os.listdir(os.path.join(HERE, "include", "meprop"))),
                           (cflags + ["-fno-trapping-math"], ldflags, macros))]


setup(ext_modules=cythonize(extensions(), language_level=3,
                            compiler_directives={"embedsignature": True}))
