/* Random-k selection (meProp's random baseline): k entries of each row drawn
 * uniformly, without regard to their values. */
#ifndef MEPROP_RANDK_H
#define MEPROP_RANDK_H

#include <stdint.h>
#include "parallel.h"
#include "rng.h"

/* Per-row random k-subset of range(n), ascending, by selection sampling
 * (Knuth's algorithm S). Row b's stream depends only on (seed, b), so the
 * result is the same for any thread count. */
static void mp_randk_rows(int64_t B, int64_t n, int64_t k, uint64_t seed, int32_t *idx, int nthreads) {
    int team = mp_team_size(nthreads, B * n * 8, B);
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        uint64_t s = seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)(b + 1));
        (void)mp_splitmix64(&s);
        int32_t *out = idx + b * k;
        int64_t chosen = 0;
        for (int64_t j = 0; j < n && chosen < k; j++) {
            double u = (double)(mp_splitmix64(&s) >> 11) * (1.0 / 9007199254740992.0);
            if ((double)(n - j) * u < (double)(k - chosen)) out[chosen++] = (int32_t)j;
        }
    }
}

#endif
