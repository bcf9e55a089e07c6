/* One training step of the POS tagger (embeddings -> LSTM -> dense softmax
 * layer) on one sentence, in a single C call: forward, loss, backward through
 * time (per-gate top-k or dense) and the optimizer update of all seven
 * parameters.
 *
 * It runs the kernels the module path (PosTagger.forward_loss / backward +
 * Optimizer.step) calls, in the same order on the same data: the LSTM's
 * forward and backward (lstm.h), the output layer's backward through
 * mp_layer_backward (layer.h, what nn.Linear.backward calls), the sparse
 * input gradient and pair grouping (sparse_linear.h), the embeddings'
 * row grouping (mp_group_ids) and the row-sparse updates (optim.h) with the
 * arguments of mp_step_args; so the weights, optimizer state and meSimp
 * counts it leaves are bit-identical to that path's. What it saves is the
 * Python between ~40 kernel calls per sentence: most of a narrow (meSimp)
 * tagger's step. meprop_cpu/tagging/fused.py decides when a tagger
 * qualifies and owns the buffers. */
#ifndef MEPROP_TAGGER_H
#define MEPROP_TAGGER_H

#include <string.h>
#include "parallel.h"
#include "dense.h"
#include "lstm.h"
#include "layer.h"
#include "step.h"

enum { MP_TAG_EW = 0, MP_TAG_EF, MP_TAG_W, MP_TAG_U, MP_TAG_B, MP_TAG_WO, MP_TAG_BO,
       MP_TAG_NPARAMS };

typedef struct {
    int64_t n_words, n_feat_rows, n_feat, dw, df;   /* tables (n, dw), (n, df); n_feat ids
                                                       per token */
    int64_t n_in, h, k, n_tags;   /* n_in = dw + n_feat df; k: 1..h-1 top-k, 0 dense */
    float *Ew, *Ef, *W, *U, *b;   /* (n_words, dw), (n_feat_rows, df), (4h, n_in), (4h, h), (4h) */
    float *s1[MP_TAG_NPARAMS], *s2[MP_TAG_NPARAMS];   /* optimizer state or NULL, in the
                                                         order of the MP_TAG_ names */
    int64_t t[MP_TAG_NPARAMS];    /* step counts before this step */
    int64_t *hits;                /* (h) meSimp counts, or NULL */
    mp_step_layer out;            /* the output layer (Wo, bo: out.W, out.b; k = 0) */
    /* buffers for sentences of up to max_T tokens */
    float *X, *XP, *Z, *H, *C, *TC, *dZ, *dX, *dXw, *dXf, *dh, *dc, *gb, *gW, *gU;
    int32_t *idx; float *val; void *heap;       /* (T, 4k) selections; topk scratch */
    int32_t *sel; float *coef;                  /* sparse dX: nthreads * stride(4k) */
    int32_t *cursor, *rows, *offsets, *pair_b; float *pair_v;   /* W / U gradient rows */
    uint64_t *keys;                             /* 2 T n_feat */
    int32_t *wrows, *woff, *wpair; float *wv;   /* word table rows (T) */
    int32_t *frows, *foff, *fpair; float *fv;   /* feature table rows (T n_feat) */
    uint8_t *flag;                              /* (h) units hit at one step */
    float *gbuf;                                /* nthreads * stride(max width) */
} mp_tagger_step;

/* hits[j] += 1 for each step at which unit j has a gate entry among the
 * non-zero selected pairs (sparse: idx % h over the 4k pairs with val != 0;
 * dense: any gate's dz != 0), as LSTM.backward counts them. */
static void mp_tagger_count_hits(mp_tagger_step *s, int64_t T) {
    const int64_t h = s->h, G = 4 * h;
    for (int64_t t = 0; t < T; t++) {
        if (s->k > 0) {
            const int32_t *ii = s->idx + t * 4 * s->k;
            const float *vv = s->val + t * 4 * s->k;
            for (int64_t p = 0; p < 4 * s->k; p++) {
                if (vv[p] == 0.0f) continue;
                int64_t j = ii[p] % h;
                if (!s->flag[j]) { s->flag[j] = 1; s->hits[j]++; }
            }
            for (int64_t p = 0; p < 4 * s->k; p++) s->flag[ii[p] % h] = 0;
        } else {
            const float *dz = s->dZ + t * G;
            for (int64_t j = 0; j < h; j++)
                s->hits[j] += (dz[j] != 0.0f) | (dz[h + j] != 0.0f) | (dz[2 * h + j] != 0.0f)
                              | (dz[3 * h + j] != 0.0f);
        }
    }
}

/* One step on the sentence wid (T,) word rows, fid (T, n_feat) feature rows
 * (both in range: the caller checks), tid (T,) tags. Returns 0 and fills res;
 * 1: a tag outside [0, n_tags) (res->bad = 1 + its position); 2: the loss is
 * not finite; 3: the top-k met res->bad non-finite gradient entries. On a
 * non-zero status no parameter, state or count changed. */
static int mp_tagger_train_step(mp_tagger_step *s, const int32_t *wid, const int32_t *fid,
                                const int64_t *tid, int64_t T, const mp_step_optim *opt,
                                int nthreads, mp_step_result *res) {
    const int64_t h = s->h, G = 4 * h, n_in = s->n_in, dw = s->dw, df = s->df, nf = s->n_feat;
    const int64_t k = s->k;
    double t0 = mp_step_now();
    /* forward: the input rows, the LSTM, the output layer, the loss */
    for (int64_t t = 0; t < T; t++) {
        float *x = s->X + t * n_in;
        memcpy(x, s->Ew + (int64_t)wid[t] * dw, (size_t)dw * sizeof(float));
        for (int64_t j = 0; j < nf; j++)
            memcpy(x + dw + j * df, s->Ef + (int64_t)fid[t * nf + j] * df,
                   (size_t)df * sizeof(float));
    }
    memset(s->H, 0, (size_t)h * sizeof(float));
    memset(s->C, 0, (size_t)h * sizeof(float));
    mp_linear_forward(s->X, s->W, s->b, s->XP, T, n_in, G, 0, nthreads);
    mp_lstm_forward(s->XP, s->U, T, h, s->Z, s->H, s->C, s->TC, nthreads);
    mp_step_layer *o = &s->out;
    o->x = s->H + h;
    mp_linear_forward(o->x, o->W, o->b, o->y, T, h, s->n_tags, 0, nthreads);
    int st = mp_step_loss(o, tid, T, res);   /* o->n_out = n_tags */
    if (st) return st;
    double t1 = mp_step_now();

    /* backward: the output layer (dense), then through time */
    mp_layer_backward(o, T, nthreads);     /* k = 0: never fails */
    memset(s->dh, 0, (size_t)h * sizeof(float));
    memset(s->dc, 0, (size_t)h * sizeof(float));
    int64_t bad = mp_lstm_backward(s->Z, s->C, s->TC, s->U, o->dx, T, h, k, s->dZ, s->idx,
                                   s->val, s->dh, s->dc, s->heap, nthreads);
    if (k > 0 && bad) { res->bad = bad; return 3; }
    mp_step_colsum(s->dZ, T, G, s->gb);
    if (s->hits) mp_tagger_count_hits(s, T);
    int64_t r = 0;
    if (k > 0) {
        mp_sparse_dx(s->W, n_in, s->idx, s->val, T, 4 * k, s->dX, s->sel, s->coef, nthreads);
        r = mp_group_pairs(s->idx, s->val, T, 4 * k, G, s->cursor, s->rows, s->offsets,
                           s->pair_b, s->pair_v);
    } else {
        mp_matmul_tn(s->dZ, s->X, s->gW, G, T, n_in, nthreads);
        mp_matmul_tn(s->dZ, s->H, s->gU, G, T, h, nthreads);
        mp_matmul_nn(s->dZ, s->W, s->dX, T, G, n_in, nthreads);
    }
    for (int64_t t = 0; t < T; t++) {   /* the tables' slices of dX, each contiguous */
        memcpy(s->dXw + t * dw, s->dX + t * n_in, (size_t)dw * sizeof(float));
        memcpy(s->dXf + t * nf * df, s->dX + t * n_in + dw, (size_t)(nf * df) * sizeof(float));
    }
    int64_t rw = mp_group_ids(wid, T, s->n_words, 1, 1, 0, s->keys, s->keys + T * nf,
                              s->wrows, s->woff, s->wpair, s->wv);
    int64_t rf = mp_group_ids(fid, T * nf, s->n_feat_rows, 1, 1, 0, s->keys,
                              s->keys + T * nf, s->frows, s->foff, s->fpair, s->fv);
    double t2 = mp_step_now();

    /* update, parameter by parameter (each independent of the others) */
    mp_optim_args a[MP_TAG_NPARAMS];
    for (int q = 0; q < MP_TAG_NPARAMS; q++) a[q] = mp_step_args(opt, s->t[q] + 1);
    const int kind = opt->kind;
    mp_optim_rows_factored(kind, s->Ew, s->s1[MP_TAG_EW], s->s2[MP_TAG_EW], s->wrows, rw, dw,
                           s->dXw, s->woff, s->wpair, s->wv, s->gbuf, a[MP_TAG_EW], nthreads);
    mp_optim_rows_factored(kind, s->Ef, s->s1[MP_TAG_EF], s->s2[MP_TAG_EF], s->frows, rf, df,
                           s->dXf, s->foff, s->fpair, s->fv, s->gbuf, a[MP_TAG_EF], nthreads);
    if (k > 0) {
        if (r > 0) {
            mp_optim_rows_factored(kind, s->W, s->s1[MP_TAG_W], s->s2[MP_TAG_W], s->rows, r,
                                   n_in, s->X, s->offsets, s->pair_b, s->pair_v, s->gbuf,
                                   a[MP_TAG_W], nthreads);
            mp_optim_rows_factored(kind, s->U, s->s1[MP_TAG_U], s->s2[MP_TAG_U], s->rows, r, h,
                                   s->H, s->offsets, s->pair_b, s->pair_v, s->gbuf,
                                   a[MP_TAG_U], nthreads);
        }
    } else {
        mp_optim_rows(kind, s->W, s->s1[MP_TAG_W], s->s2[MP_TAG_W], NULL, s->gW, G, n_in,
                      a[MP_TAG_W], nthreads);
        mp_optim_rows(kind, s->U, s->s1[MP_TAG_U], s->s2[MP_TAG_U], NULL, s->gU, G, h,
                      a[MP_TAG_U], nthreads);
    }
    mp_optim_rows(kind, s->b, s->s1[MP_TAG_B], s->s2[MP_TAG_B], NULL, s->gb, 1, G, a[MP_TAG_B],
                  nthreads);
    mp_layer_update_weight(o, kind, a[MP_TAG_WO], s->gbuf, nthreads);
    mp_optim_rows(kind, o->b, s->s1[MP_TAG_BO], s->s2[MP_TAG_BO], NULL, o->gb, 1, s->n_tags,
                  a[MP_TAG_BO], nthreads);
    double t3 = mp_step_now();
    res->t_forward = t1 - t0;
    res->t_backward = t2 - t1;
    res->t_update = t3 - t2;
    res->t_hidden_backward = 0.0;
    return 0;
}

#endif
