/* The AVX2 dense products under AddressSanitizer + UndefinedBehaviorSanitizer.
 *
 * scripts/sanitize.sh builds this file with -fsanitize=address,undefined when
 * the CPU has AVX2 + FMA: the extension's "simd" build, which runs the
 * intrinsic kernels, needs AVX-512, so on an AVX2-only CPU the AVX2 paths of
 * include/meprop/dense.h would otherwise never run instrumented. Every
 * buffer is allocated at its exact size, so a read or write past it is
 * reported. Checks, at the AVX2 level (mp_simd_limit = 1) and with 1, 2 and
 * 3 threads: mp_linear_forward, mp_matmul_impl nn and tn against float64
 * references (tolerance: a float32 summation bound), the same bits for any
 * thread count, and the same bits with the short-K order on and off.
 *
 *   ./sanitize_dense           exit 0: all checks passed
 *   ./sanitize_dense canary    writes one float past a buffer: ASan must report it
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "meprop/dense.h"

static unsigned seed = 12345u;
static float frand(void) {
    seed = seed * 1103515245u + 12345u;
    return (float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

static float *fill(int64_t n) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

static int close_to(double ref, double absref, float got, int64_t K) {
    double tol = 2.0 * 1.1920929e-7 * ((double)K / 16.0 + 8.0) * absref + 1e-30;
    return fabs((double)got - ref) <= tol;
}

/* C (M, N) from A and Bm: tn (A (K, M)) or nn (A (M, K)) */
static int check_matmul(int tn, int64_t M, int64_t K, int64_t N) {
    float *A = fill(K * M), *B = fill(K * N);
    float *C1 = malloc(sizeof(float) * (size_t)(M * N)), *C = malloc(sizeof(float) * (size_t)(M * N));
    int bad = 0;
    mp_dense_shortk = 0;
    mp_matmul_impl(A, tn, B, C1, M, K, N, 1);
    for (int i = 0; i < 2; i++) {
        mp_dense_shortk = i;
        for (int nt = 1; nt <= 3; nt++) {
            mp_matmul_impl(A, tn, B, C, M, K, N, nt);
            if (memcmp(C, C1, sizeof(float) * (size_t)(M * N)) != 0) {
                fprintf(stderr, "%s %lldx%lldx%lld: bits differ (short-K %d, %d threads)\n",
                        tn ? "tn" : "nn", (long long)M, (long long)K, (long long)N, i, nt);
                bad++;
            }
        }
    }
    for (int64_t r = 0; r < M; r++)
        for (int64_t c = 0; c < N; c++) {
            double s = 0.0, a = 0.0;
            for (int64_t k = 0; k < K; k++) {
                double t = (double)(tn ? A[k * M + r] : A[r * K + k]) * B[k * N + c];
                s += t;
                a += fabs(t);
            }
            if (!close_to(s, a, C1[r * N + c], K)) bad++;
        }
    if (bad) fprintf(stderr, "%s %lldx%lldx%lld: %d mismatches\n", tn ? "tn" : "nn",
                     (long long)M, (long long)K, (long long)N, bad);
    free(A); free(B); free(C1); free(C);
    return bad;
}

static int check_linear(int64_t B, int64_t n_in, int64_t n_out) {
    float *x = fill(B * n_in), *W = fill(n_out * n_in), *b = fill(n_out);
    float *y1 = malloc(sizeof(float) * (size_t)(B * n_out)), *y = malloc(sizeof(float) * (size_t)(B * n_out));
    int bad = 0;
    mp_linear_forward(x, W, b, y1, B, n_in, n_out, 1, 1);
    for (int nt = 2; nt <= 3; nt++) {
        mp_linear_forward(x, W, b, y, B, n_in, n_out, 1, nt);
        if (memcmp(y, y1, sizeof(float) * (size_t)(B * n_out)) != 0) bad++;
    }
    for (int64_t r = 0; r < B; r++)
        for (int64_t j = 0; j < n_out; j++) {
            double s = b[j], a = fabs(b[j]);
            for (int64_t k = 0; k < n_in; k++) {
                double t = (double)x[r * n_in + k] * W[j * n_in + k];
                s += t;
                a += fabs(t);
            }
            if (s < 0.0) s = 0.0;
            if (!close_to(s, a, y1[r * n_out + j], n_in)) bad++;
        }
    if (bad) fprintf(stderr, "linear %lldx%lldx%lld: %d mismatches\n", (long long)B,
                     (long long)n_in, (long long)n_out, bad);
    free(x); free(W); free(b); free(y1); free(y);
    return bad;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "canary") == 0) {
        float *p = malloc(sizeof(float) * 4);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstringop-overflow"
        memset(p, 0, (size_t)(argc + 3) * sizeof(float));   /* 5 floats: one past the end */
#pragma GCC diagnostic pop
        printf("canary: the out-of-bounds write was NOT reported (%g)\n", (double)p[1]);
        free(p);
        return 0;
    }
    mp_simd_limit = 1;
    if (mp_dense_level() != 1) {
        fprintf(stderr, "sanitize_dense: the AVX2 level is not available on this CPU\n");
        return 2;
    }
    /* (M, K, N): short K into large and small C, odd sizes, K across a block */
    static const int64_t shapes[][3] = {
        {2000, 14, 500}, {2000, 14, 190}, {500, 10, 784}, {256, 16, 256}, {4096, 2, 33},
        {300, 40, 1000}, {37, 3, 29}, {12, 5, 16}, {11, 5, 16}, {13, 256, 100},
        {64, 255, 47}, {24, 7, 9}, {100, 257, 65}, {50, 2, 3}, {1, 1, 1}};
    int bad = 0;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (int tn = 0; tn <= 1; tn++) bad += check_matmul(tn, shapes[s][0], shapes[s][1],
                                                            shapes[s][2]);
    static const int64_t lin[][3] = {{10, 784, 500}, {1, 500, 2000}, {14, 190, 2000},
                                     {7, 33, 45}, {256, 100, 37}};
    for (size_t s = 0; s < sizeof(lin) / sizeof(lin[0]); s++)
        bad += check_linear(lin[s][0], lin[s][1], lin[s][2]);
    printf("sanitize_dense: AVX2 level, %d problem(s)\n", bad);
    return bad != 0;
}
