/* One whole training step of an MLP (Linear -> ReLU [-> Dropout] -> ... ->
 * Linear -> softmax cross-entropy) in a single C call: forward, loss, meProp / dense
 * backward and the optimizer update of every parameter.
 *
 * It calls the same kernels, on the same data and in the same order, as the
 * module path of meprop_cpu.nn + meprop_cpu.optim (Linear.forward, ReLU,
 * Dropout, SoftmaxCrossEntropy, Linear.backward, Optimizer.step), so the weights and
 * optimizer state it produces are bit-identical to that path; what it saves
 * is the Python dispatch between ~25 kernel calls per step (about a third of
 * a batch-10 step). meprop_cpu/fused.py decides when a model qualifies and
 * owns the buffers. */
#ifndef MEPROP_STEP_H
#define MEPROP_STEP_H

#include <math.h>
#include <string.h>
#include <time.h>
#include "parallel.h"
#include "topk.h"
#include "hits.h"
#include "sparse_linear.h"
#include "optim.h"
#include "elementwise.h"
#include "dense.h"

typedef struct {
    int64_t n_in, n_out;
    int64_t k;              /* > 0: top-k backward; 0: dense backward */
    int unified;            /* with k > 0: one index set for the batch (mode "unified") */
    int masked;             /* with k > 0, not unified: mp_backward_masked(k, n_out) */
    int exact_dx;           /* with k > 0: dx from the whole dy (mode "topk_dw": the top-k
                               sparsifies the weight gradient only) */
    int relu;               /* a ReLU follows this layer (every layer but the last) */
    int need_dx;            /* compute the gradient of the input (not for layer 0) */
    int64_t *hits;          /* meSimp activeness counts, or NULL */
    /* inverted dropout after this layer's ReLU (drop_u NULL: none): unit e is
     * kept when drop_u[e] >= drop_p and then scaled by drop_s, as
     * nn.Dropout.forward does with the same uniform draws (float32) */
    const float *drop_u;
    float drop_p, drop_s;
    float *drop_scale;      /* (B, n_out) the kept units' scale, 0 for dropped ones */
    float *hd;              /* (B, n_out) dropout output: the next layer's input */
    float *W, *b;           /* parameters (n_out, n_in), (n_out,) */
    float *sW1, *sW2, *sb1, *sb2;   /* optimizer state (NULL where the optimizer has none) */
    int64_t tW, tb;         /* the parameters' optimizer step counts before this step */
    /* buffers, sized for the largest batch */
    float *y;               /* (B, n_out) pre-activation */
    float *h;               /* (B, n_out) ReLU output (relu only) */
    float *dy;              /* (B, n_out) gradient of the pre-activation */
    float *dx;              /* (B, n_in) gradient of the input (need_dx only) */
    float *gb;              /* (n_out,) bias gradient */
    float *gw;              /* (n_out, n_in) dense weight gradient (k == 0 or masked) */
    float *dys;             /* (B, n_out) dy with the unselected entries zeroed (masked);
                               (B, k) the selected columns of dy (unified) */
    float *colsum;          /* (n_out,) unified: sum_b |dy| */
    float *wk;              /* (k, n_in) unified: the selected rows of W */
    int32_t *idx; float *val;                 /* (B, k) top-k pairs */
    mp_entry *topk_ws;   /* nthreads * mp_thread_stride(mp_topk_ws_entries(k)) */
    float *mws;       /* masked: nthreads * mp_thread_stride(mp_topk_mask_ws_floats(n_out)) */
    int32_t *sel; float *coef;                /* nthreads * mp_thread_stride(k) */
    int32_t *cursor, *rows, *offsets;         /* n_out, min(n_out, B k) (masked, or dense
                                                 with hits: n_out), that + 1 */
    int32_t *pair_b; float *pair_v;           /* B k */
    const float *x;         /* set by the step: this layer's input for the batch */
    int64_t r;              /* set by the step: rows touched by the sparse weight gradient */
} mp_step_layer;

typedef struct {
    int kind;                            /* MP_OPT_SGD / ADAGRAD / ADAM */
    /* as the optimizer's _args gives them (zero where its kind has none) */
    double lr, momentum, eps, beta1, beta2, weight_decay, clip;
} mp_step_optim;

typedef struct {
    double loss;
    int64_t bad;          /* status 1: 1 + the first bad label; status 3: non-finite count */
    int64_t layer;        /* status 3: the layer whose top-k met a NaN / Inf */
    double t_forward, t_backward, t_update;   /* seconds */
    double t_hidden_backward;   /* seconds in the backward of every layer but the last
                                   (what Linear.backward of the hidden layers does) */
} mp_step_result;

static inline double mp_step_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The kernel arguments of one parameter's update at step count t (after the
 * increment); Adam's bias corrections as Adam._args computes them in double
 * precision (a mirror of it: tests/test_fused.py checks the bits). */
static inline mp_optim_args mp_step_args(const mp_step_optim *o, int64_t t) {
    mp_optim_args a;
    a.lr = (float)o->lr;
    a.momentum = (float)o->momentum;
    a.eps = (float)o->eps;
    a.beta1 = (float)o->beta1;
    a.beta2 = (float)o->beta2;
    a.weight_decay = (float)o->weight_decay;
    a.clip = (float)o->clip;
    a.step = 0.0f;
    a.inv_sqrt_bc2 = 0.0f;
    if (o->kind == MP_OPT_ADAM) {
        a.step = (float)(o->lr / (1.0 - pow(o->beta1, (double)t)));
        a.inv_sqrt_bc2 = (float)(1.0 / sqrt(1.0 - pow(o->beta2, (double)t)));
    }
    return a;
}

/* Column sums over the batch in row order (what numpy's dy.sum(axis=0) does
 * for a C-contiguous array: one row added after the other). */
MP_SIMD_CLONES
static void mp_step_colsum(const float *MP_RESTRICT dy, int64_t B, int64_t n,
                           float *MP_RESTRICT out) {
    memcpy(out, dy, (size_t)n * sizeof(float));
    for (int64_t b = 1; b < B; b++) {
        const float *row = dy + b * n;
        for (int64_t j = 0; j < n; j++) out[j] += row[j];
    }
}

/* The batch rows: x[b] = X[idx[b]] (rows of n floats), y[b] = Y[idx[b]]. The
 * rows come from a training set far larger than the caches, so each is a
 * DRAM read; the copy prefetches a few rows ahead (memory-level parallelism)
 * and, for batches big enough, splits the rows over the team. */
#ifndef MP_GATHER_AHEAD
#define MP_GATHER_AHEAD 4
#endif
static void mp_gather_batch(const float *X, const int64_t *Y, int64_t n, const int64_t *idx,
                            int64_t B, float *x, int64_t *y, int nthreads) {
    /* a row from DRAM costs about as much as ~16 multiply-adds per float */
    int team = mp_team_size(nthreads, B * n * 16, B);
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        if (b + MP_GATHER_AHEAD < B) {
            const char *p = (const char *)(X + idx[b + MP_GATHER_AHEAD] * n);
            for (int64_t o = 0; o < n * (int64_t)sizeof(float); o += 64)
                __builtin_prefetch(p + o, 0, 3);
        }
        memcpy(x + b * n, X + idx[b] * n, (size_t)n * sizeof(float));
        y[b] = Y[idx[b]];
    }
}

/* hits[j] += cnt[j] (the column counts of mp_mask_columns); restrict so the
 * loop vectorises (a store through an int64 pointer could otherwise alias a
 * layer's int64 fields) */
MP_SIMD_CLONES
static void mp_step_add_counts(int64_t *MP_RESTRICT hits, const int32_t *MP_RESTRICT cnt,
                               int64_t n) {
    for (int64_t j = 0; j < n; j++) hits[j] += cnt[j];
}

/* One training step on the batch x (B, L[0].n_in), labels (B,).
 * Returns 0 and fills res; 1: a label is outside [0, C) (res->bad = 1 + its
 * position; nothing changed); 2: the loss is not finite (res->loss; nothing
 * changed); 3: the top-k of layer res->layer met res->bad non-finite
 * gradient entries (nothing changed). On 0 every parameter's step count went
 * up by one: the caller records that. gbuf: nthreads * mp_thread_stride(max n_in) floats. */
static int mp_mlp_step(mp_step_layer *L, int nl, const float *x, const int64_t *labels,
                       int64_t B, const mp_step_optim *opt, float *gbuf, int nthreads,
                       mp_step_result *res) {
    double t0 = mp_step_now();
    const float *in = x;
    for (int i = 0; i < nl; i++) {
        mp_step_layer *l = &L[i];
        l->x = in;
        mp_linear_forward(in, l->W, l->b, l->y, B, l->n_in, l->n_out, 0, nthreads);
        if (l->relu) {
            mp_relu_forward(l->y, l->h, B * l->n_out);
            in = l->h;
            if (l->drop_u) {
                const int64_t n = B * l->n_out;
                for (int64_t e = 0; e < n; e++) {
                    l->drop_scale[e] = l->drop_u[e] >= l->drop_p ? l->drop_s : 0.0f;
                    l->hd[e] = l->h[e] * l->drop_scale[e];
                }
                in = l->hd;
            }
        } else {
            in = l->y;
        }
    }
    mp_step_layer *last = &L[nl - 1];
    double loss = 0.0;
    int64_t st = mp_softmax_xent(last->y, labels, B, last->n_out, last->dy, &loss);
    if (st) { res->bad = st; return 1; }
    res->loss = loss;
    if (!isfinite(loss)) return 2;
    double t1 = mp_step_now();

    double t_hidden = 0.0, tl = t1;
    for (int i = nl - 1; i >= 0; i--) {
        mp_step_layer *l = &L[i];
        if (i < nl - 1) tl = mp_step_now();
        mp_step_colsum(l->dy, B, l->n_out, l->gb);
        if (l->k == 0) {
            if (l->need_dx) mp_matmul_nn(l->dy, l->W, l->dx, B, l->n_out, l->n_in, nthreads);
            mp_matmul_tn(l->dy, l->x, l->gw, l->n_out, B, l->n_in, nthreads);
            if (l->hits) {   /* every neuron with a non-zero gradient counts as selected */
                mp_mask_columns(l->dy, B, l->n_out, l->cursor, l->rows);
                mp_step_add_counts(l->hits, l->cursor, l->n_out);
            }
        } else if (l->unified) {   /* as kernels.unified_backward_into */
            const int64_t k = l->k, n = l->n_out;
            int64_t bad = mp_topk_unified(l->dy, B, n, k, l->idx, l->colsum, l->topk_ws, nthreads);
            if (bad) { res->bad = bad; res->layer = i; return 3; }
            for (int64_t b = 0; b < B; b++)
                for (int64_t t = 0; t < k; t++) l->dys[b * k + t] = l->dy[b * n + l->idx[t]];
            if (l->hits)
                for (int64_t b = 0; b < B; b++)
                    for (int64_t t = 0; t < k; t++) l->hits[l->idx[t]] += l->dys[b * k + t] != 0.0f;
            if (l->need_dx && l->exact_dx) {
                mp_matmul_nn(l->dy, l->W, l->dx, B, n, l->n_in, nthreads);
            } else if (l->need_dx) {
                for (int64_t t = 0; t < k; t++)
                    memcpy(l->wk + t * l->n_in, l->W + (int64_t)l->idx[t] * l->n_in,
                           (size_t)l->n_in * sizeof(float));
                mp_matmul_nn(l->dys, l->wk, l->dx, B, k, l->n_in, nthreads);
            }
            mp_matmul_tn(l->dys, l->x, l->gw, k, B, l->n_in, nthreads);
            l->r = k;
        } else if (l->masked) {   /* as kernels._masked_backward_into */
            const int64_t n = l->n_out;
            int64_t bad = mp_topk_mask_rows(l->dy, B, n, l->k, l->dys, l->mws, nthreads);
            if (bad) { res->bad = bad; res->layer = i; return 3; }
            l->r = mp_mask_columns(l->dys, B, n, l->cursor, l->rows);
            /* the same counts as mp_count_hits: the selected non-zeros */
            if (l->hits) mp_step_add_counts(l->hits, l->cursor, n);
            if (l->need_dx)
                mp_matmul_nn(l->exact_dx ? l->dy : l->dys, l->W, l->dx, B, n, l->n_in,
                             nthreads);
            mp_matmul_tn(l->dys, l->x, l->gw, n, B, l->n_in, nthreads);
        } else {
            int64_t bad = mp_topk_rows(l->dy, B, l->n_out, l->k, l->idx, l->val, l->topk_ws,
                                       nthreads);
            if (bad) { res->bad = bad; res->layer = i; return 3; }
            if (l->hits) mp_count_hits(l->idx, l->val, B * l->k, l->hits);
            if (l->need_dx && l->exact_dx)
                mp_matmul_nn(l->dy, l->W, l->dx, B, l->n_out, l->n_in, nthreads);
            else if (l->need_dx)
                mp_sparse_dx(l->W, l->n_in, l->idx, l->val, B, l->k, l->dx, l->sel,
                             l->coef, nthreads);
            l->r = mp_group_pairs(l->idx, l->val, B, l->k, l->n_out, l->cursor, l->rows,
                                  l->offsets, l->pair_b, l->pair_v);
        }
        if (i < nl - 1) t_hidden += mp_step_now() - tl;
        if (i == 0 || !l->need_dx) break;
        mp_step_layer *below = &L[i - 1];
        if (below->drop_u)
            for (int64_t e = 0; e < B * l->n_in; e++) l->dx[e] *= below->drop_scale[e];
        mp_relu_backward(l->dx, below->h, below->dy, B * l->n_in);
    }
    double t2 = mp_step_now();

    for (int i = nl - 1; i >= 0; i--) {
        mp_step_layer *l = &L[i];
        mp_optim_args aw = mp_step_args(opt, l->tW + 1), ab = mp_step_args(opt, l->tb + 1);
        if (l->k == 0)
            mp_optim_rows(opt->kind, l->W, l->sW1, l->sW2, NULL, l->gw, l->n_out, l->n_in, aw,
                          nthreads);
        else if (l->unified)   /* rows idx, values gw (k, n_in) */
            mp_optim_rows(opt->kind, l->W, l->sW1, l->sW2, l->idx, l->gw, l->k, l->n_in, aw,
                          nthreads);
        else if (l->r > 0 && l->masked)
            mp_optim_rows_at(opt->kind, l->W, l->sW1, l->sW2, l->rows, l->gw, 1, l->r,
                             l->n_in, aw, nthreads);
        else if (l->r > 0)
            mp_optim_rows_factored(opt->kind, l->W, l->sW1, l->sW2, l->rows, l->r, l->n_in,
                                   l->x, l->offsets, l->pair_b, l->pair_v, gbuf, aw, nthreads);
        mp_optim_rows(opt->kind, l->b, l->sb1, l->sb2, NULL, l->gb, 1, l->n_out, ab, nthreads);
    }
    double t3 = mp_step_now();
    res->t_forward = t1 - t0;
    res->t_backward = t2 - t1;
    res->t_update = t3 - t2;
    res->t_hidden_backward = t_hidden;
    return 0;
}

#endif
