/* Greedy arc-standard parsing of a batch of sentences with Chen & Manning's
 * feed-forward network and their pre-computation trick.
 *
 * The first hidden layer's pre-activation is a sum over the 48 feature
 * positions f of W0[:, f*d:(f+1)*d] @ E[id_f]. For the frequent ids of each
 * position that product is pre-computed once (a row of `table`); the
 * products of the other ids in a batch of configurations are computed per
 * call, grouped by position: one (n_q, d) x (d, H) product per position q,
 * so W0^T is read once per position, not once per feature (on the Turkish
 * dev + test sets with the 1,000 most frequent words pre-computed that took
 * a 1-thread parse from ~0.52 s to ~0.4 s). The later layers (hidden and output)
 * are the library's dense products on the whole batch of live
 * configurations. Most features of a configuration are NULL (absent
 * children, an empty buffer): with `null_folded` their products are folded
 * into the bias once and only the differences to them are added.
 * Every configuration is handled by one thread in a fixed
 * order, so the result does not depend on the thread count.
 *
 * Feature layout (meprop_cpu/parsing/transition.py): positions 0..17 words,
 * 18..35 POS tags, 36..47 arc labels of s1, s2, s3, b1, b2, b3 and, for s1
 * and s2, lc1, rc1, lc2, rc2, lc1(lc1), rc1(rc1). */
#ifndef MEPROP_PARSE_H
#define MEPROP_PARSE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "parallel.h"
#include "dense.h"

#define MP_PARSE_NFEAT 48
#define MP_PARSE_NPOS 18

enum { MP_ACT_CUBE = 0, MP_ACT_RELU = 1, MP_ACT_TANH = 2 };

typedef struct {
    int64_t dim;               /* embedding width d */
    int64_t H;                 /* width of the first hidden layer */
    const float *emb[MP_PARSE_NFEAT];   /* per feature position: its embedding table */
    const float *table;        /* pre-computed rows (n_rows, H) */
    int64_t base[MP_PARSE_NFEAT];       /* row of id 0 of position f in table */
    int64_t limit[MP_PARSE_NFEAT];      /* ids < limit[f] are pre-computed */
    const float *W0T;          /* (48 * d, H): the first layer's weight, transposed */
    const float *b0;           /* (H,) */
    int null_folded;           /* 1: b0 holds the NULL id's product at every position and
                                  table rows / fallbacks are differences to it, so the
                                  (many) NULL features cost nothing */
    int act;                   /* MP_ACT_* for every hidden layer */
    int n_layers;              /* layers after the first (the last is the output) */
    const float *W[8];         /* (n_out[l], n_in[l]) */
    const float *b[8];
    int64_t n_in[8], n_out[8];
} mp_parser_net;

static inline float mp_parse_act(float v, int act) {
    if (act == MP_ACT_CUBE) return v * v * v;
    if (act == MP_ACT_RELU) return v < 0.0f ? 0.0f : v;
    return tanhf(v);
}

/* Scratch of the products of the features whose id is not pre-computed
 * (grown as needed, freed by mp_parse_scratch_free). */
typedef struct {
    int32_t *fbrow;            /* (B, 48): row of P of feature (a, q), -1: none */
    float *E;                  /* (rows, d): their embeddings (minus NULL's if folded) */
    float *P;                  /* (rows, H): their products with W0_q */
    int64_t cap_b, cap_rows;
} mp_parse_scratch;

static void mp_parse_scratch_free(mp_parse_scratch *s) {
    free(s->fbrow); free(s->E); free(s->P);
    s->fbrow = NULL; s->E = s->P = NULL;
    s->cap_b = s->cap_rows = 0;
}

static int mp_parse_scratch_reserve(mp_parse_scratch *s, int64_t B, int64_t rows, int64_t d,
                                    int64_t H) {
    if (B > s->cap_b) {
        int32_t *f = realloc(s->fbrow, (size_t)(B * MP_PARSE_NFEAT) * sizeof(int32_t));
        if (!f) return -1;
        s->fbrow = f;
        s->cap_b = B;
    }
    if (rows > s->cap_rows) {
        float *e = realloc(s->E, (size_t)(rows * d) * sizeof(float));
        if (!e) return -1;
        s->E = e;
        float *p = realloc(s->P, (size_t)(rows * H) * sizeof(float));
        if (!p) return -1;
        s->P = p;
        s->cap_rows = rows;
    }
    return 0;
}

/* The first layer's products of the features of B configurations (F (B, 48))
 * whose id is not pre-computed (id >= limit[q], NULL skipped when folded):
 * grouped by position and computed as one product per position, (n_q, d) x
 * W0T's block (d, H), so W0T is streamed once per position instead of once
 * per feature. Fills s->fbrow, s->E, s->P. Returns 0, or -1 if memory ran out. */
static int mp_parse_fallbacks(const mp_parser_net *net, const int32_t *F, int64_t B,
                              mp_parse_scratch *s, int nthreads) {
    const int64_t H = net->H, d = net->dim;
    int64_t start[MP_PARSE_NFEAT + 1], fill[MP_PARSE_NFEAT];
    for (int q = 0; q < MP_PARSE_NFEAT; q++) fill[q] = 0;
    for (int64_t a = 0; a < B; a++) {
        for (int q = 0; q < MP_PARSE_NFEAT; q++) {
            const int64_t id = F[a * MP_PARSE_NFEAT + q];
            if (!(id == 0 && net->null_folded) && id >= net->limit[q]) fill[q]++;
        }
    }
    start[0] = 0;
    for (int q = 0; q < MP_PARSE_NFEAT; q++) start[q + 1] = start[q] + fill[q];
    if (mp_parse_scratch_reserve(s, B, start[MP_PARSE_NFEAT], d, H) != 0) return -1;
    for (int q = 0; q < MP_PARSE_NFEAT; q++) fill[q] = start[q];
    for (int64_t a = 0; a < B; a++) {
        for (int q = 0; q < MP_PARSE_NFEAT; q++) {
            const int64_t id = F[a * MP_PARSE_NFEAT + q];
            int32_t *slot = s->fbrow + a * MP_PARSE_NFEAT + q;
            if ((id == 0 && net->null_folded) || id < net->limit[q]) {
                *slot = -1;
                continue;
            }
            const int64_t r = fill[q]++;
            *slot = (int32_t)r;
            const float *e = net->emb[q] + id * d, *e0 = net->emb[q];
            float *er = s->E + r * d;
            for (int64_t c = 0; c < d; c++) er[c] = net->null_folded ? e[c] - e0[c] : e[c];
        }
    }
    for (int q = 0; q < MP_PARSE_NFEAT; q++) {
        const int64_t n = start[q + 1] - start[q];
        if (n) mp_matmul_nn(s->E + start[q] * d, net->W0T + (int64_t)q * d * H,
                            s->P + start[q] * H, n, d, H, nthreads);
    }
    return 0;
}

/* h (H,) = act(b0 + sum_f W0_f e_f) for one feature row f (48 ids); fb: its
 * 48 entries of the scratch's fbrow (rows of P for the ids not pre-computed). */
static void mp_parse_first(const mp_parser_net *net, const int32_t *f, const int32_t *fb,
                           const float *P, float *MP_RESTRICT h) {
    const int64_t H = net->H;
    memcpy(h, net->b0, (size_t)H * sizeof(float));
    for (int q = 0; q < MP_PARSE_NFEAT; q++) {
        const int64_t id = f[q];
        if (id == 0 && net->null_folded) continue;    /* NULL: already in b0 */
        const float *MP_RESTRICT r = id < net->limit[q] ? net->table + (net->base[q] + id) * H
                                                        : P + (int64_t)fb[q] * H;
        for (int64_t j = 0; j < H; j++) h[j] += r[j];
    }
    for (int64_t j = 0; j < H; j++) h[j] = mp_parse_act(h[j], net->act);
}

/* Forward of B feature rows to the output scores. buf: 2 * B * max width floats;
 * scores (B, n_out[last]); s: scratch (grown here). Returns 0, or -1 if memory
 * ran out. */
static int mp_parse_forward_s(const mp_parser_net *net, const int32_t *F, int64_t B,
                              float *buf, int64_t maxw, float *scores, mp_parse_scratch *s,
                              int nthreads) {
    float *h = buf, *g = buf + B * maxw;
    const int64_t H = net->H;
    if (mp_parse_fallbacks(net, F, B, s, nthreads) != 0) return -1;
    int team = mp_team_size(nthreads, B * MP_PARSE_NFEAT * H, B);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t r = 0; r < B; r++)
        mp_parse_first(net, F + r * MP_PARSE_NFEAT, s->fbrow + r * MP_PARSE_NFEAT, s->P,
                       h + r * H);
    for (int l = 0; l < net->n_layers; l++) {
        const int last = l == net->n_layers - 1;
        float *out = last ? scores : g;
        mp_linear_forward(h, net->W[l], net->b[l], out, B, net->n_in[l], net->n_out[l], 0,
                          nthreads);
        if (!last) {
            const int64_t n = B * net->n_out[l];
            if (net->act == MP_ACT_CUBE) {
                for (int64_t j = 0; j < n; j++) out[j] = out[j] * out[j] * out[j];
            } else {
                for (int64_t j = 0; j < n; j++) out[j] = mp_parse_act(out[j], net->act);
            }
            float *t = h; h = g; g = t;
        }
    }
    return 0;
}

/* mp_parse_forward_s with its own scratch. Returns 0, or -1 if memory ran out. */
static int mp_parse_forward(const mp_parser_net *net, const int32_t *F, int64_t B,
                            float *buf, int64_t maxw, float *scores, int nthreads) {
    mp_parse_scratch s = {NULL, NULL, NULL, 0, 0};
    const int rc = mp_parse_forward_s(net, F, B, buf, maxw, scores, &s, nthreads);
    mp_parse_scratch_free(&s);
    return rc;
}

/* The 48 feature ids of one configuration. st: stack (depth entries, bottom
 * first); i: next buffer word; n: words; w, p: word / POS ids (index 0 ROOT);
 * lab, lc1, lc2, rc1, rc2: per word (index 0 ROOT), -1 where absent. */
static void mp_parse_features(const int32_t *st, int64_t depth, int64_t i, int64_t n,
                              const int32_t *w, const int32_t *p, const int32_t *lab,
                              const int32_t *lc1, const int32_t *lc2, const int32_t *rc1,
                              const int32_t *rc2, int32_t *f) {
    int64_t pos[MP_PARSE_NPOS];
    for (int k = 0; k < 3; k++) pos[k] = depth > k ? st[depth - 1 - k] : -1;
    for (int k = 0; k < 3; k++) pos[3 + k] = i + k <= n ? i + k : -1;
    for (int q = 0; q < 2; q++) {
        const int64_t s = pos[q];
        int64_t *o = pos + 6 + 6 * q;
        if (s < 0) {
            for (int k = 0; k < 6; k++) o[k] = -1;
            continue;
        }
        const int64_t a = lc1[s], b = rc1[s];
        o[0] = a; o[1] = b; o[2] = lc2[s]; o[3] = rc2[s];
        o[4] = a >= 0 ? lc1[a] : -1;
        o[5] = b >= 0 ? rc1[b] : -1;
    }
    for (int k = 0; k < MP_PARSE_NPOS; k++) {
        f[k] = pos[k] >= 0 ? w[pos[k]] : 0;
        f[MP_PARSE_NPOS + k] = pos[k] >= 0 ? p[pos[k]] : 0;
    }
    for (int k = 0; k < 12; k++) f[2 * MP_PARSE_NPOS + k] = pos[6 + k] >= 0 ? lab[pos[6 + k]] + 1 : 0;
}

/* Parse n_sent sentences greedily. Sentence s owns entries off[s] .. off[s+1]-1
 * of w, p, heads, labels (the first is ROOT; n = off[s+1] - off[s] - 1 >= 0).
 * n_labels: L (2L + 1 transitions = n_out of the last layer). Writes heads and
 * label indices (ROOT's entry: -1). Returns 0, or -1 if memory ran out. */
static int mp_parse_batch(const mp_parser_net *net, int64_t n_sent, const int64_t *off,
                          const int32_t *w, const int32_t *p, int64_t n_labels,
                          int32_t *heads, int32_t *labels, int nthreads) {
    const int64_t ntok = off[n_sent], T = 2 * n_labels + 1;
    int64_t maxw = net->H;
    for (int l = 0; l < net->n_layers; l++)
        if (net->n_out[l] > maxw) maxw = net->n_out[l];
    int32_t *st = malloc((size_t)(ntok * 5 + 1) * sizeof(int32_t));
    int64_t *depth = malloc((size_t)(n_sent * 2 + 1) * sizeof(int64_t));
    int64_t *active = malloc((size_t)(n_sent + 1) * sizeof(int64_t));
    int32_t *F = malloc((size_t)(n_sent * MP_PARSE_NFEAT + 1) * sizeof(int32_t));
    float *buf = malloc((size_t)(2 * n_sent * maxw + 1) * sizeof(float));
    float *scores = malloc((size_t)(n_sent * T + 1) * sizeof(float));
    if (!st || !depth || !active || !F || !buf || !scores) {
        free(st); free(depth); free(active); free(F); free(buf); free(scores);
        return -1;
    }
    int32_t *lc1 = st + ntok, *lc2 = st + 2 * ntok, *rc1 = st + 3 * ntok, *rc2 = st + 4 * ntok;
    int64_t *bufpos = depth + n_sent;
    int64_t n_active = 0;
    mp_parse_scratch scr = {NULL, NULL, NULL, 0, 0};
    for (int64_t s = 0; s < n_sent; s++) {
        for (int64_t t = off[s]; t < off[s + 1]; t++) {
            heads[t] = -1; labels[t] = -1;
            lc1[t] = lc2[t] = rc1[t] = rc2[t] = -1;
        }
        st[off[s]] = 0;            /* the stack holds ROOT */
        depth[s] = 1;
        bufpos[s] = 1;
        if (off[s + 1] - off[s] > 1) active[n_active++] = s;
    }
    while (n_active > 0) {
        for (int64_t a = 0; a < n_active; a++) {
            const int64_t s = active[a], o = off[s];
            mp_parse_features(st + o, depth[s], bufpos[s], off[s + 1] - o - 1, w + o, p + o,
                              labels + o, lc1 + o, lc2 + o, rc1 + o, rc2 + o,
                              F + a * MP_PARSE_NFEAT);
        }
        if (mp_parse_forward_s(net, F, n_active, buf, maxw, scores, &scr, nthreads) != 0) {
            mp_parse_scratch_free(&scr);
            free(st); free(depth); free(active); free(F); free(buf); free(scores);
            return -1;
        }
        int64_t keep = 0;
        for (int64_t a = 0; a < n_active; a++) {
            const int64_t s = active[a], o = off[s], n = off[s + 1] - o - 1;
            int32_t *S = st + o;
            const int64_t d = depth[s], i = bufpos[s];
            const int sh = i <= n, le = d > 2, ri = d >= 2 && (S[d - 2] != 0 || i > n);
            const float *sc = scores + a * T;
            int64_t bt = -1;
            float best = 0.0f;
            for (int64_t t = 0; t < T; t++) {
                const int ok = t == 0 ? sh : (t <= n_labels ? le : ri);
                if (ok && (bt < 0 || sc[t] > best)) { best = sc[t]; bt = t; }
            }
            if (bt == 0) {
                S[d] = (int32_t)i;
                depth[s] = d + 1;
                bufpos[s] = i + 1;
            } else {
                const int32_t s1 = S[d - 1], s2 = S[d - 2];
                if (bt <= n_labels) {      /* LEFT-ARC: s1 -> s2 */
                    S[d - 2] = s1;
                    heads[o + s2] = s1;
                    labels[o + s2] = (int32_t)(bt - 1);
                    lc2[o + s1] = lc1[o + s1];
                    lc1[o + s1] = s2;
                } else {                   /* RIGHT-ARC: s2 -> s1 */
                    heads[o + s1] = s2;
                    labels[o + s1] = (int32_t)(bt - 1 - n_labels);
                    rc2[o + s2] = rc1[o + s2];
                    rc1[o + s2] = s1;
                }
                depth[s] = d - 1;
            }
            if (!(bufpos[s] > n && depth[s] == 1)) active[keep++] = s;
        }
        n_active = keep;
    }
    mp_parse_scratch_free(&scr);
    free(st); free(depth); free(active); free(F); free(buf); free(scores);
    return 0;
}

#endif
