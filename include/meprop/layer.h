/* One Linear layer (y = x W^T + b) inside a training step: its backward in
 * every mode and the update of its weight, as single C entry points. The
 * fused MLP step (step.h) calls them for each layer, and nn.Linear.backward
 * calls the same mp_layer_backward through meprop_cpu._core.LinearBackward,
 * so the two paths compute the same bits by construction, not by mirroring.
 * The optimizer update of a parameter is mp_optim_rows / _at / _factored
 * (optim.h) with the arguments of mp_step_args, on both paths. */
#ifndef MEPROP_LAYER_H
#define MEPROP_LAYER_H

#include <math.h>
#include <string.h>
#include "parallel.h"
#include "topk.h"
#include "hits.h"
#include "sparse_linear.h"
#include "optim.h"
#include "dense.h"

typedef struct {
    int64_t n_in, n_out;
    int64_t k;              /* > 0: top-k backward; 0: dense backward */
    int unified;            /* with k > 0: one index set for the batch (mode "unified") */
    int masked;             /* with k > 0, not unified: mp_backward_masked(k, n_out) */
    int exact_dx;           /* with k > 0: dx from the whole dy (modes "topk_dw",
                               "batch_dw": the top-k sparsifies the weight gradient only) */
    int batch_sel;          /* with k > 0, not unified (always with exact_dx): the B k
                               largest |dy| of the whole batch, however they fall on the
                               examples, instead of k per example (mode "batch_dw") */
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
    mp_entry *topk_ws;   /* nthreads * mp_thread_stride(mp_topk_ws_entries(k));
                            batch_sel: mp_topk_ws_entries(B k) */
    float *mws;       /* masked: nthreads * mp_thread_stride(mp_topk_mask_ws_floats(n_out));
                         batch_sel: mp_topk_mask_ws_floats(B n_out) */
    int32_t *sel; float *coef;                /* nthreads * mp_thread_stride(k) */
    int32_t *cursor, *rows, *offsets;         /* n_out, min(n_out, B k) (masked, or dense
                                                 with hits: n_out), that + 1 */
    int32_t *pair_b; float *pair_v;           /* B k */
    int32_t *pair_e;                          /* B k: batch_sel, the selected pairs' examples */
    const float *x;         /* set by the step: this layer's input for the batch */
    int64_t r;              /* set by the step: rows touched by the sparse weight gradient */
} mp_step_layer;

typedef struct {
    int kind;                            /* MP_OPT_SGD / ADAGRAD / ADAM */
    /* as the optimizer's _args gives them (zero where its kind has none) */
    double lr, momentum, eps, beta1, beta2, weight_decay, clip;
} mp_step_optim;

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

/* hits[j] += cnt[j] (the column counts of mp_mask_columns); restrict so the
 * loop vectorises (a store through an int64 pointer could otherwise alias a
 * layer's int64 fields) */
MP_SIMD_CLONES
static void mp_step_add_counts(int64_t *MP_RESTRICT hits, const int32_t *MP_RESTRICT cnt,
                               int64_t n) {
    for (int64_t j = 0; j < n; j++) hits[j] += cnt[j];
}

/* The backward of layer l on the batch of B rows: l->x (B, n_in) its input and
 * l->dy (B, n_out) the gradient of its output are read; it writes l->gb (the
 * bias gradient, dy summed over the batch in row order), l->dx (B, n_in) when
 * need_dx, the weight gradient (k == 0: gw (n_out, n_in); unified: gw (k,
 * n_in) for the rows idx; masked: gw (n_out, n_in) of which rows[0:r] count;
 * per-example top-k: rows[0:r] with their (example, value) pairs at
 * offsets / pair_b / pair_v, formed inside the update) and adds the
 * activeness counts to l->hits when set. Returns 0, or the number of NaN /
 * Inf entries the top-k met (nothing is then valid). */
static int64_t mp_layer_backward(mp_step_layer *l, int64_t B, int nthreads) {
    mp_step_colsum(l->dy, B, l->n_out, l->gb);
    if (l->k == 0) {
        if (l->need_dx) mp_matmul_nn(l->dy, l->W, l->dx, B, l->n_out, l->n_in, nthreads);
        mp_matmul_tn(l->dy, l->x, l->gw, l->n_out, B, l->n_in, nthreads);
        if (l->hits) {   /* every neuron with a non-zero gradient counts as selected */
            mp_mask_columns(l->dy, B, l->n_out, l->cursor, l->rows);
            mp_step_add_counts(l->hits, l->cursor, l->n_out);
        }
    } else if (l->unified) {   /* one index set for the batch */
        const int64_t k = l->k, n = l->n_out;
        int64_t bad = mp_topk_unified(l->dy, B, n, k, l->idx, l->colsum, l->topk_ws, nthreads);
        if (bad) return bad;
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
    } else if (l->masked) {   /* k > n_out / 4: dense products on the masked dy */
        const int64_t n = l->n_out;
        /* batch_sel: the whole batch as one row of B n entries, B k of them kept */
        int64_t bad = l->batch_sel
            ? mp_topk_mask_rows(l->dy, 1, B * n, B * l->k, l->dys, l->mws, nthreads)
            : mp_topk_mask_rows(l->dy, B, n, l->k, l->dys, l->mws, nthreads);
        if (bad) return bad;
        l->r = mp_mask_columns(l->dys, B, n, l->cursor, l->rows);
        /* the same counts as mp_count_hits: the selected non-zeros */
        if (l->hits) mp_step_add_counts(l->hits, l->cursor, n);
        if (l->need_dx)
            mp_matmul_nn(l->exact_dx ? l->dy : l->dys, l->W, l->dx, B, n, l->n_in,
                         nthreads);
        mp_matmul_tn(l->dys, l->x, l->gw, n, B, l->n_in, nthreads);
    } else if (l->batch_sel) {   /* B k pairs, any number per example; dx exact */
        const int64_t np = B * l->k;
        int64_t bad = mp_topk_batch(l->dy, B, l->n_out, l->k, l->idx, l->pair_e, l->val,
                                    l->topk_ws);
        if (bad) return bad;
        if (l->hits) mp_count_hits(l->idx, l->val, np, l->hits);
        if (l->need_dx)
            mp_matmul_nn(l->dy, l->W, l->dx, B, l->n_out, l->n_in, nthreads);
        l->r = mp_group_pairs_ex(l->idx, l->val, l->pair_e, np, l->k, l->n_out, l->cursor,
                                 l->rows, l->offsets, l->pair_b, l->pair_v);
    } else {
        int64_t bad = mp_topk_rows(l->dy, B, l->n_out, l->k, l->idx, l->val, l->topk_ws,
                                   nthreads);
        if (bad) return bad;
        if (l->hits) mp_count_hits(l->idx, l->val, B * l->k, l->hits);
        if (l->need_dx && l->exact_dx)
            mp_matmul_nn(l->dy, l->W, l->dx, B, l->n_out, l->n_in, nthreads);
        else if (l->need_dx)
            mp_sparse_dx(l->W, l->n_in, l->idx, l->val, B, l->k, l->dx, l->sel,
                         l->coef, nthreads);
        l->r = mp_group_pairs(l->idx, l->val, B, l->k, l->n_out, l->cursor, l->rows,
                              l->offsets, l->pair_b, l->pair_v);
    }
    return 0;
}

/* The update of layer l's weight from the gradient mp_layer_backward left
 * (a the kernel arguments at its step count, gbuf: nthreads *
 * mp_thread_stride(n_in) floats for the factored rows). */
static void mp_layer_update_weight(const mp_step_layer *l, int kind, mp_optim_args a,
                                   float *gbuf, int nthreads) {
    if (l->k == 0)
        mp_optim_rows(kind, l->W, l->sW1, l->sW2, NULL, l->gw, l->n_out, l->n_in, a,
                      nthreads);
    else if (l->unified)   /* rows idx, values gw (k, n_in) */
        mp_optim_rows(kind, l->W, l->sW1, l->sW2, l->idx, l->gw, l->k, l->n_in, a,
                      nthreads);
    else if (l->r > 0 && l->masked)
        mp_optim_rows_at(kind, l->W, l->sW1, l->sW2, l->rows, l->gw, 1, l->r,
                         l->n_in, a, nthreads);
    else if (l->r > 0)
        mp_optim_rows_factored(kind, l->W, l->sW1, l->sW2, l->rows, l->r, l->n_in,
                               l->x, l->offsets, l->pair_b, l->pair_v, gbuf, a, nthreads);
}

#endif
