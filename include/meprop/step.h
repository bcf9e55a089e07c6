/* One whole training step of an MLP (Linear -> ReLU [-> Dropout] -> ... ->
 * Linear -> softmax cross-entropy) in a single C call: forward, loss, meProp / dense
 * backward and the optimizer update of every parameter.
 *
 * Each layer's backward and weight update are the entry points of layer.h,
 * which nn.Linear.backward calls too; the rest (forward, ReLU, dropout, the
 * loss, the bias update) are the kernels the module path of meprop_cpu.nn +
 * meprop_cpu.optim calls, on the same data and in the same order, so the
 * weights and optimizer state it produces are bit-identical to that path; what
 * it saves is the Python dispatch between ~25 kernel calls per step (about a
 * third of a batch-10 step). meprop_cpu/fused.py decides when a model qualifies and
 * owns the buffers. */
#ifndef MEPROP_STEP_H
#define MEPROP_STEP_H

#include <math.h>
#include <string.h>
#include <time.h>
#include "parallel.h"
#include "layer.h"
#include "elementwise.h"

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

/* The softmax cross-entropy of the last layer's output l->y (B, l->n_out) into
 * res->loss, its gradient into l->dy: the steps' status 0, 1 (a label outside
 * [0, n_out): res->bad = 1 + its position) or 2 (the loss is not finite). */
static int mp_step_loss(mp_step_layer *l, const int64_t *labels, int64_t B,
                        mp_step_result *res) {
    double loss = 0.0;
    int64_t st = mp_softmax_xent(l->y, labels, B, l->n_out, l->dy, &loss);
    if (st) { res->bad = st; return 1; }
    res->loss = loss;
    return isfinite(loss) ? 0 : 2;
}

/* Forward, loss and backward of one training step on the batch x (B,
 * L[0].n_in), labels (B,), without the update: each layer's gradients are
 * left in its buffers (dy, gb, gw, idx / val, rows ...) as mp_layer_backward
 * leaves them, and its input in l->x. dy_scale != 1 multiplies the loss
 * gradient (the mean over this batch) by it before the backward, as a data
 * parallel step does for a rank's share of a global batch. Returns 0 and fills
 * res (loss, t_forward, t_backward, t_hidden_backward); 1, 2, 3 as
 * mp_mlp_step (nothing to update). */
static int mp_mlp_forward_backward(mp_step_layer *L, int nl, const float *x,
                                   const int64_t *labels, int64_t B, float dy_scale,
                                   int nthreads, mp_step_result *res) {
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
                mp_dropout_forward(l->drop_u, l->drop_p, l->drop_s, l->h, l->drop_scale, l->hd,
                                   B * l->n_out);
                in = l->hd;
            }
        } else {
            in = l->y;
        }
    }
    int st = mp_step_loss(&L[nl - 1], labels, B, res);
    if (st) return st;
    if (dy_scale != 1.0f) {
        float *dy = L[nl - 1].dy;
        for (int64_t e = 0; e < B * L[nl - 1].n_out; e++) dy[e] *= dy_scale;
    }
    double t1 = mp_step_now();

    double t_hidden = 0.0, tl = t1;
    for (int i = nl - 1; i >= 0; i--) {
        mp_step_layer *l = &L[i];
        if (i < nl - 1) tl = mp_step_now();
        int64_t bad = mp_layer_backward(l, B, nthreads);
        if (bad) { res->bad = bad; res->layer = i; return 3; }
        if (i < nl - 1) t_hidden += mp_step_now() - tl;
        if (i == 0 || !l->need_dx) break;
        mp_step_layer *below = &L[i - 1];
        if (below->drop_u)
            for (int64_t e = 0; e < B * l->n_in; e++) l->dx[e] *= below->drop_scale[e];
        mp_relu_backward(l->dx, below->h, below->dy, B * l->n_in);
    }
    double t2 = mp_step_now();
    res->t_forward = t1 - t0;
    res->t_backward = t2 - t1;
    res->t_hidden_backward = t_hidden;
    return 0;
}

/* The optimizer update of every parameter from the gradients in the layers'
 * buffers (what mp_mlp_forward_backward left, or a data-parallel step put
 * there); res->t_update. */
static void mp_mlp_update(mp_step_layer *L, int nl, const mp_step_optim *opt, float *gbuf,
                          int nthreads, mp_step_result *res) {
    double t2 = mp_step_now();
    for (int i = nl - 1; i >= 0; i--) {
        mp_step_layer *l = &L[i];
        mp_optim_args aw = mp_step_args(opt, l->tW + 1), ab = mp_step_args(opt, l->tb + 1);
        mp_layer_update_weight(l, opt->kind, aw, gbuf, nthreads);
        mp_optim_rows(opt->kind, l->b, l->sb1, l->sb2, NULL, l->gb, 1, l->n_out, ab, nthreads);
    }
    res->t_update = mp_step_now() - t2;
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
    int st = mp_mlp_forward_backward(L, nl, x, labels, B, 1.0f, nthreads, res);
    if (st) return st;
    mp_mlp_update(L, nl, opt, gbuf, nthreads, res);
    return 0;
}

#endif
