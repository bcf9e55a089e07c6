/* OpenMP shim and compiler helpers shared by every kernel header.
 *
 * Built with OpenMP (-fopenmp) the kernels run their outer loops on a team of
 * MP_NUM_THREADS threads; built without it the same source compiles serially
 * (the pragmas are ignored and the stubs below stand in for the runtime). */
#ifndef MEPROP_PARALLEL_H
#define MEPROP_PARALLEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#define MP_HAVE_OPENMP 1
static inline int mp_omp_max_threads(void) { return omp_get_max_threads(); }
static inline int mp_omp_thread_num(void) { return omp_get_thread_num(); }
#else
#define MP_HAVE_OPENMP 0
static inline int mp_omp_max_threads(void) { return 1; }
static inline int mp_omp_thread_num(void) { return 0; }
#endif

/* Work (in multiply-adds or element visits) below which a loop stays serial:
 * starting an OpenMP team costs a few microseconds, which a 10 x 500 layer
 * cannot repay. Kernels compare their own work estimate against this. */
#ifndef MP_PARALLEL_MIN_WORK
#define MP_PARALLEL_MIN_WORK 200000
#endif

/* Entries (4 or 8 bytes each) between the starts of two threads' slices of
 * a per-thread scratch buffer holding n entries each: rounded up to 16 and
 * 16 more, so no two threads ever write the same 64-byte cache line (false
 * sharing made a 2-thread sparse dx at (100, 784, 500) no faster than one). */
static inline int64_t mp_thread_stride(int64_t n) { return (n + 15) / 16 * 16 + 16; }

static inline int mp_team_size(int nthreads, int64_t work, int64_t units) {
    if (nthreads < 1) nthreads = 1;
    if (work < MP_PARALLEL_MIN_WORK) return 1;
    if (units < nthreads) return units < 1 ? 1 : (int)units;
    return nthreads;
}

/* Runtime SIMD dispatch without -march=native: GCC clones the marked function
 * for AVX-512 / AVX2+FMA / baseline x86-64 and picks one at load time (ifunc).
 * Elsewhere the macro is empty and the baseline build is used. */
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__)) \
    && !defined(MEPROP_NO_DISPATCH) && !defined(__AVX512F__)
#define MP_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define MP_HAVE_DISPATCH 1
#else
#define MP_SIMD_CLONES
#define MP_HAVE_DISPATCH 0
#endif

#if defined(__GNUC__)
#define MP_RESTRICT __restrict__
#define MP_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MP_RESTRICT
#define MP_UNLIKELY(x) (x)
#endif

/* The one SIMD switch of the whole extension: the highest code path the
 * kernels may take (2 AVX-512, 1 AVX2+FMA, 0 portable C). Production leaves it
 * at 2 (each kernel then takes the best path this CPU has); tests lower it to
 * cover the other paths (meprop_cpu._core.set_simd_limit). */
static int mp_simd_limit = 2;

/* Hand-written AVX-512 paths (intrinsics in functions compiled for AVX-512
 * only), chosen at run time when the CPU has AVX-512 F/VL/BW/DQ. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(MEPROP_NO_DISPATCH)
#include <immintrin.h>
#define MP_HAVE_AVX512_INTRIN 1
#define MP_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,popcnt")))
static inline int mp_cpu_avx512(void) {
    if (mp_simd_limit < 2) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
}
#else
#define MP_HAVE_AVX512_INTRIN 0
static inline int mp_cpu_avx512(void) { return 0; }
#endif

/* Flush-to-zero + denormals-are-zero for the calling thread around a loop,
 * the old control word restored after (the caller's own floating-point mode,
 * numpy's and PyTorch's, is left as it was). The optimizer updates run under
 * it: an Adam moment that keeps decaying (a weight whose input is always 0,
 * e.g. MNIST's border pixels, takes m *= beta1 at every update) reaches the
 * subnormal range after ~800 updates, and x86 cores then take a microcode
 * assist per operation: the update of an MNIST MLP grew 2-4x slower within
 * two epochs. Only values below 1.2e-38 change (to 0). */
static int mp_ftz_on = 1;   /* 0: leave the mode alone (benchmarks/bench_subnormal.py) */
#if defined(__x86_64__) || defined(__SSE2__)
#include <xmmintrin.h>
static inline unsigned mp_ftz_begin(void) {
    const unsigned old = _mm_getcsr();
    if (mp_ftz_on) _mm_setcsr(old | 0x8040u);   /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void mp_ftz_end(unsigned old) { _mm_setcsr(old); }
#else
static inline unsigned mp_ftz_begin(void) { return 0; }
static inline void mp_ftz_end(unsigned old) { (void)old; }
#endif

/* The SIMD level the code runs at: what the dispatcher picks on this CPU, or
 * what the compiler was told to target when dispatch is off. */
static inline const char *mp_simd_level(void) {
#if MP_HAVE_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return "avx512 (runtime dispatch)";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "avx2+fma (runtime dispatch)";
    return "sse2 (runtime dispatch)";
#elif defined(__AVX512F__)
    return "avx512 (compile time)";
#elif defined(__AVX2__)
    return "avx2 (compile time)";
#elif defined(__SSE2__)
    return "sse2 (compile time)";
#else
    return "scalar";
#endif
}

#endif
