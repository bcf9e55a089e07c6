# The C declarations of include/meprop/ that meprop_cpu._core wraps: one place
# for every signature (the headers are the truth; keep these in step with them).
from libc.stdint cimport int32_t, int64_t, uint64_t, uint8_t

cdef extern from "meprop/parallel.h":
    int MP_HAVE_OPENMP
    int MP_HAVE_DISPATCH
    int MP_HAVE_AVX512_INTRIN
    int MP_PARALLEL_MIN_WORK
    int mp_simd_limit
    int mp_ftz_on
    int64_t mp_thread_stride(int64_t n) nogil
    const char *mp_simd_level() nogil
    int mp_cpu_avx512() nogil

cdef extern from "meprop/topk.h":
    ctypedef int64_t mp_entry
    int64_t mp_topk_rows(const float *g, int64_t B, int64_t n, int64_t k, int32_t *idx,
                         float *val, mp_entry *topk_ws, int nthreads) nogil
    int64_t mp_topk_unified(const float *g, int64_t B, int64_t n, int64_t k, int32_t *idx,
                            float *colsum_ws, mp_entry *topk_ws, int nthreads) nogil
    int64_t mp_topk_ws_entries(int64_t k) nogil
    int64_t mp_topk_mask_rows(const float *g, int64_t B, int64_t n, int64_t k, float *out,
                              float *ws, int nthreads) nogil
    int64_t mp_topk_mask_ws_floats(int64_t n) nogil

cdef extern from "meprop/randk.h":
    void mp_randk_rows(int64_t B, int64_t n, int64_t k, uint64_t seed, int32_t *idx,
                       int nthreads) nogil

cdef extern from "meprop/hits.h":
    void mp_count_hits(const int32_t *idx, const float *val, int64_t npairs, int64_t *hits) nogil
    int64_t mp_mask_columns(const float *m, int64_t B, int64_t n, int32_t *cnt,
                            int32_t *rows) nogil

cdef extern from "meprop/sparse_linear.h":
    void mp_sparse_dx(const float *W, int64_t n_in, const int32_t *idx, const float *val,
                      int64_t B, int64_t k, float *dx, int32_t *sel_ws, float *coef_ws,
                      int nthreads) nogil
    int64_t mp_group_pairs(const int32_t *idx, const float *val, int64_t B, int64_t k,
                           int64_t n_out, int32_t *cursor, int32_t *rows, int32_t *offsets,
                           int32_t *pair_b, float *pair_v) nogil
    int64_t mp_group_ids(const int32_t *ids, int64_t n, int64_t n_rows, int64_t w,
                         int64_t stride, int64_t off, uint64_t *keys, uint64_t *tmp,
                         int32_t *rows, int32_t *offsets, int32_t *pair_b,
                         float *pair_v) nogil
    void mp_sparse_dw(const float *x, int64_t n_in, int64_t r, const int32_t *offsets,
                      const int32_t *pair_b, const float *pair_v, float *values,
                      int nthreads) nogil
    int mp_backward_masked(int64_t k, int64_t n_out) nogil
    int64_t mp_scatter_pairs(const int32_t *idx, const float *val, int64_t B, int64_t k,
                             int64_t n_out, float *dyS, int32_t *flag_ws, int32_t *rows) nogil

cdef extern from "meprop/optim.h":
    int MP_OPT_SGD
    int MP_OPT_ADAGRAD
    int MP_OPT_ADAM
    ctypedef struct mp_optim_args:
        float lr, momentum, eps, beta1, beta2, weight_decay, clip
        float step, inv_sqrt_bc2
    void mp_optim_rows(int kind, float *w, float *s1, float *s2, const int32_t *rows,
                       const float *values, int64_t r, int64_t n_cols, mp_optim_args a,
                       int nthreads) nogil
    void mp_optim_rows_factored(int kind, float *w, float *s1, float *s2, const int32_t *rows,
                                int64_t r, int64_t n_cols, const float *x, const int32_t *offsets,
                                const int32_t *pair_b, const float *pair_v, float *gbuf,
                                mp_optim_args a, int nthreads) nogil

cdef extern from "meprop/elementwise.h":
    void mp_uniform_f32(uint64_t key, uint64_t counter, int64_t n, float *out,
                        int nthreads) nogil
    void mp_relu_forward(const float *x, float *y, int64_t n) nogil
    void mp_relu_backward(const float *dy, const float *y, float *dx, int64_t n) nogil
    void mp_dropout_forward(const float *u, float p, float s, const float *h, float *scale,
                            float *out, int64_t n) nogil
    void mp_relu_dropout_backward(const float *dy, const float *scale, const float *y,
                                  float *dx, int64_t n) nogil
    void mp_cube_forward(const float *x, float *y, int64_t B, int64_t n, int nthreads) nogil
    void mp_cube_backward(const float *dy, const float *x, float *dx, int64_t B, int64_t n,
                          int nthreads) nogil
    int64_t mp_softmax_xent(const float *logits, const int64_t *y, int64_t B, int64_t C,
                            float *d, double *loss) nogil
    int64_t mp_check_rows(const int32_t *rows, int64_t r, int64_t n) nogil

cdef extern from "meprop/dense.h":
    int mp_dense_shortk
    int64_t MP_DENSE_MIN_WORK
    int mp_dense_level() nogil
    void mp_linear_forward(const float *x, const float *W, const float *b, float *y,
                           int64_t B, int64_t n_in, int64_t n_out, int relu,
                           int nthreads) nogil
    void mp_matmul_nn(const float *A, const float *Bm, float *C, int64_t M, int64_t K,
                      int64_t N, int nthreads) nogil
    void mp_matmul_tn(const float *A, const float *Bm, float *C, int64_t M, int64_t K,
                      int64_t N, int nthreads) nogil

cdef extern from "meprop/layer.h":
    ctypedef struct mp_step_layer:
        int64_t n_in, n_out, k
        int unified, masked, exact_dx, batch_sel
        int relu, need_dx
        int64_t *hits
        const float *drop_u
        float drop_p, drop_s
        float *drop_scale
        float *hd
        float *W
        float *b
        float *sW1
        float *sW2
        float *sb1
        float *sb2
        int64_t tW, tb
        float *y
        float *h
        float *dy
        float *dx
        float *gb
        float *gw
        float *dys
        float *colsum
        float *wk
        int32_t *idx
        float *val
        mp_entry *topk_ws
        float *mws
        int32_t *sel
        float *coef
        int32_t *cursor
        int32_t *rows
        int32_t *offsets
        int32_t *pair_b
        float *pair_v
        int32_t *pair_e
        const float *x
        int64_t r
    ctypedef struct mp_step_optim:
        int kind
        double lr, momentum, eps, beta1, beta2, weight_decay, clip
    mp_optim_args mp_step_args(const mp_step_optim *o, int64_t t) nogil
    int64_t mp_layer_backward(mp_step_layer *l, int64_t B, int nthreads) nogil
    void mp_step_colsum(const float *dy, int64_t B, int64_t n, float *out) nogil

cdef extern from "meprop/step.h":
    void mp_gather_batch(const float *X, const int64_t *Y, int64_t n, const int64_t *idx,
                         int64_t B, float *x, int64_t *y, int nthreads) nogil
    ctypedef struct mp_step_result:
        double loss
        int64_t bad, layer
        double t_forward, t_backward, t_update, t_hidden_backward
    int mp_mlp_step(mp_step_layer *L, int nl, const float *x, const int64_t *labels, int64_t B,
                    const mp_step_optim *opt, float *gbuf, int nthreads,
                    mp_step_result *res) nogil
    int mp_mlp_forward_backward(mp_step_layer *L, int nl, const float *x,
                                const int64_t *labels, int64_t B, float dy_scale, int nthreads,
                                mp_step_result *res) nogil

cdef extern from "meprop/lstm.h":
    void mp_lstm_forward(const float *xp, const float *U, int64_t T, int64_t h, float *Z,
                         float *H, float *C, float *TC, int nthreads) nogil
    int64_t mp_lstm_backward(const float *Z, const float *C, const float *TC, const float *U,
                             const float *dH, int64_t T, int64_t h, int64_t k, float *dZ,
                             int32_t *idx, float *val, float *dh, float *dc, void *ws,
                             int nthreads) nogil
    int64_t mp_lstm_topk_ws_entries(int64_t k) nogil
    void mp_lstm_forward_batch(const float *xp, const float *U, int64_t T, int64_t B,
                               int64_t h, float *Z, float *H, float *C, float *TC,
                               int nthreads) nogil
    int64_t mp_lstm_backward_batch(const float *Z, const float *C, const float *TC,
                                   const float *U, const float *dH, int64_t T, int64_t B,
                                   int64_t h, int64_t k, float *dZ, int32_t *idx, float *val,
                                   float *dh, float *dc, mp_entry *ws, float *dzs,
                                   int nthreads) nogil

cdef extern from "meprop/tagger.h":
    int MP_TAG_NPARAMS
    ctypedef struct mp_tagger_step:
        int64_t n_words, n_feat_rows, n_feat, dw, df
        int64_t n_in, h, k, n_tags
        float *Ew, *Ef, *W, *U, *b
        float *s1[7], *s2[7]
        int64_t t[7]
        int64_t *hits
        mp_step_layer out
        float *X, *XP, *Z, *H, *C, *TC, *dZ, *dX, *dXw, *dXf, *dh, *dc, *gb, *gW, *gU
        int32_t *idx, *sel, *cursor, *rows, *offsets, *pair_b
        float *val, *coef, *pair_v
        void *heap
        uint64_t *keys
        int32_t *wrows, *woff, *wpair, *frows, *foff, *fpair
        float *wv, *fv
        uint8_t *flag
        float *gbuf
    int mp_tagger_train_step(mp_tagger_step *s, const int32_t *wid, const int32_t *fid,
                             const int64_t *tid, int64_t T, const mp_step_optim *opt,
                             int nthreads, mp_step_result *res) nogil

cdef extern from "meprop/parse.h":
    ctypedef struct mp_parser_net:
        int64_t dim
        int64_t H
        const float *emb[48]
        const float *table
        int64_t base[48]
        int64_t limit[48]
        const float *W0T
        const float *b0
        int null_folded
        int act
        int n_layers
        const float *W[8]
        const float *b[8]
        int64_t n_in[8]
        int64_t n_out[8]
    int mp_parse_forward(const mp_parser_net *net, const int32_t *F, int64_t B, float *buf,
                          int64_t maxw, float *scores, int nthreads) nogil
    int mp_parse_batch(const mp_parser_net *net, int64_t n_sent, const int64_t *off,
                       const int32_t *w, const int32_t *p, int64_t n_labels, int32_t *heads,
                       int32_t *labels, int nthreads) nogil

cdef extern from "meprop/featprod.h":
    int MP_FEAT_MAXQ
    ctypedef struct mp_feat_layout:
        int64_t nq
        int64_t d
        int64_t H
        const float *emb[64]
        int64_t vocab[64]
    int64_t mp_feat_distinct(const mp_feat_layout *L, const int32_t *X, int64_t B,
                             int32_t *mark, int32_t *cnt, int32_t *uniq, int64_t *uoff,
                             int32_t *inv, int32_t *mode) nogil
    void mp_feat_regroup(float *W, int64_t H, int64_t nq, int64_t d, float *Wp, int to,
                         int nthreads) nogil
    void mp_feat_forward(const mp_feat_layout *L, const int32_t *uniq, const int64_t *uoff,
                         const int32_t *inv, const int32_t *mode, int64_t B, const float *Wp,
                         const float *b, float *A, float *Ad, float *T, float *base,
                         float *y, int nthreads) nogil
    void mp_feat_gather(const float *A, const int32_t *inv, int64_t B, int64_t nq, int64_t d,
                        float *x, int nthreads) nogil
    void mp_feat_scatter(const float *g, const int32_t *idx, const float *val, int64_t k,
                         int64_t B, int64_t H, int64_t nq, const int32_t *inv,
                         const int64_t *uoff, const int32_t *mode, float *S, float *G,
                         int nthreads) nogil
    void mp_feat_backward(const mp_feat_layout *L, const int64_t *uoff, const float *G,
                          const float *Wp, const float *A, float *dA, float *gwp,
                          int nthreads) nogil
