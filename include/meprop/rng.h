/* splitmix64: the 64-bit finaliser shared by the counter-based dropout draws
 * (elementwise.h) and the random-k streams (randk.h). */
#ifndef MEPROP_RNG_H
#define MEPROP_RNG_H

#include <stdint.h>

/* splitmix64's output function of the state z */
static inline uint64_t mp_splitmix_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* the next number of the sequence whose state is *s */
static inline uint64_t mp_splitmix64(uint64_t *s) {
    return mp_splitmix_mix(*s += 0x9E3779B97F4A7C15ULL);
}

/* number i of the sequence that starts at state key (random access) */
static inline uint64_t mp_splitmix_at(uint64_t key, uint64_t i) {
    return mp_splitmix_mix(key + (i + 1) * 0x9E3779B97F4A7C15ULL);
}

#endif
