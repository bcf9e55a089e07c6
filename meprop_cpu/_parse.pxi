# Thin wrapper around include/meprop/parse.h: greedy batch parsing and the
# pre-computed first layer. Arguments are checked by meprop_cpu.parsing.model
# (PrecomputedNet); the C calls run with the GIL released.


MAX_LAYERS = 8


cdef class NetView:
    """The C view of a pre-computed parser network. Holds references to every
    array it points into, so they stay alive as long as it does."""
    cdef mp_parser_net net
    cdef object keep
    cdef public int64_t max_width
    cdef public int64_t n_out

    def __init__(self, list emb_of_feature, const float[:, ::1] table, const int64_t[::1] base,
                 const int64_t[::1] limit, const float[:, ::1] W0T, const float[::1] b0,
                 int act, list Ws, list bs, bint null_folded=False):
        cdef int q, l
        cdef const float[:, ::1] e
        cdef const float[:, ::1] W
        cdef const float[::1] b
        self.keep = (emb_of_feature, table, base, limit, W0T, b0, Ws, bs)
        self.net.dim = W0T.shape[0] // 48
        self.net.H = W0T.shape[1]
        for q in range(48):
            e = emb_of_feature[q]
            self.net.emb[q] = &e[0, 0]
            self.net.base[q] = base[q]
            self.net.limit[q] = limit[q]
        self.net.table = &table[0, 0]
        self.net.W0T = &W0T[0, 0]
        self.net.b0 = &b0[0]
        self.net.null_folded = null_folded
        self.net.act = act
        self.net.n_layers = len(Ws)
        self.max_width = self.net.H
        for l in range(len(Ws)):
            W = Ws[l]
            b = bs[l]
            self.net.W[l] = &W[0, 0]
            self.net.b[l] = &b[0]
            self.net.n_out[l] = W.shape[0]
            self.net.n_in[l] = W.shape[1]
            if W.shape[0] > self.max_width:
                self.max_width = W.shape[0]
        self.n_out = self.net.n_out[len(Ws) - 1]

    def forward(self, const int32_t[:, ::1] F, float[::1] buf, float[:, ::1] scores,
                int nthreads):
        """scores (B, n_out) of feature rows F (B, 48); buf: 2 * B * max_width floats."""
        cdef int rc
        with nogil:
            rc = mp_parse_forward(&self.net, &F[0, 0], F.shape[0], &buf[0], self.max_width,
                                  &scores[0, 0], nthreads)
        if rc != 0:
            raise MemoryError("NetView.forward: out of memory")

    def parse(self, const int64_t[::1] off, const int32_t[::1] w, const int32_t[::1] p,
              int64_t n_labels, int32_t[::1] heads, int32_t[::1] labels, int nthreads):
        """Greedy parse of len(off) - 1 sentences (see parse.h); 0 or -1 (out of memory)."""
        cdef int rc
        with nogil:
            rc = mp_parse_batch(&self.net, off.shape[0] - 1, &off[0], &w[0], &p[0], n_labels,
                                &heads[0], &labels[0], nthreads)
        return rc


cdef class FeatProducts:
    """The C view (include/meprop/featprod.h) of a first layer over nq feature
    positions of width d with H outputs, whose position q reads embedding
    table ``tables[q]``. Holds the tables; rebuild it when a table is
    replaced (meSimp never replaces them: it shrinks H, given per call).
    Arguments are checked by meprop_cpu.parsing.model."""
    cdef mp_feat_layout L
    cdef object keep
    cdef public int64_t max_vocab

    def __init__(self, list tables):
        cdef int q
        cdef const float[:, ::1] e
        if not 1 <= len(tables) <= MP_FEAT_MAXQ:
            raise ValueError(f"FeatProducts: 1 to {MP_FEAT_MAXQ} positions, got {len(tables)}")
        self.keep = list(tables)
        self.L.nq = len(tables)
        self.L.d = tables[0].shape[1]
        self.L.H = 0
        self.max_vocab = 0
        for q in range(len(tables)):
            e = tables[q]
            if e.shape[1] != self.L.d:
                raise ValueError("FeatProducts: every table must have the same width")
            self.L.emb[q] = &e[0, 0]
            self.L.vocab[q] = e.shape[0]
            self.max_vocab = max(self.max_vocab, e.shape[0])

    def distinct(self, const int32_t[:, ::1] X, int32_t[::1] mark, int32_t[::1] cnt,
                 int32_t[::1] uniq, int64_t[::1] uoff, int32_t[:, ::1] inv, int32_t[::1] mode):
        """Distinct ids per position of X (B, nq) and each position's most used
        one: U, or -1 for an id out of range."""
        cdef int64_t U
        with nogil:
            U = mp_feat_distinct(&self.L, &X[0, 0], X.shape[0], &mark[0], &cnt[0], &uniq[0],
                                 &uoff[0], &inv[0, 0], &mode[0])
        return U

    def forward(self, const int32_t[::1] uniq, const int64_t[::1] uoff,
                const int32_t[:, ::1] inv, const int32_t[::1] mode, const float[:, :, ::1] Wp,
                const float[::1] b, float[:, ::1] A, float[:, ::1] Ad, float[:, ::1] T,
                float[::1] base, float[:, ::1] y, int nthreads):
        """y (B, H) = b + the per-position products of the distinct rows."""
        self.L.H = Wp.shape[1]
        with nogil:
            mp_feat_forward(&self.L, &uniq[0], &uoff[0], &inv[0, 0], &mode[0], inv.shape[0],
                            &Wp[0, 0, 0], &b[0], &A[0, 0], &Ad[0, 0], &T[0, 0], &base[0],
                            &y[0, 0], nthreads)

    def scatter(self, const float[:, ::1] g, const int32_t[:, ::1] idx,
                const float[:, ::1] val, const int64_t[::1] uoff, const int32_t[:, ::1] inv,
                const int32_t[::1] mode, float[::1] S, float[:, ::1] G, int nthreads):
        """G (U, H): the output gradient summed per distinct id: the dense g
        (B, H), or the pairs idx / val (B, k) when g is None."""
        cdef int64_t B = inv.shape[0], k = 0, H = G.shape[1]
        cdef const float *gp = NULL
        cdef const int32_t *ip = NULL
        cdef const float *vp = NULL
        if g is not None:
            gp = &g[0, 0]
        else:
            ip = &idx[0, 0]
            vp = &val[0, 0]
            k = idx.shape[1]
        with nogil:
            mp_feat_scatter(gp, ip, vp, k, B, H, self.L.nq, &inv[0, 0], &uoff[0], &mode[0],
                            &S[0], &G[0, 0], nthreads)

    def backward(self, const int64_t[::1] uoff, const float[:, ::1] G,
                 const float[:, :, ::1] Wp, const float[:, ::1] A, float[:, ::1] dA,
                 float[:, :, ::1] gwp, int nthreads):
        """dA (U, d) = G_q Wp[q] per position; gwp (nq, H, d) = G_q^T A_q (None: skipped)."""
        cdef float *gp = NULL
        self.L.H = Wp.shape[1]
        if gwp is not None:
            gp = &gwp[0, 0, 0]
        with nogil:
            mp_feat_backward(&self.L, &uoff[0], &G[0, 0], &Wp[0, 0, 0], &A[0, 0], &dA[0, 0],
                             gp, nthreads)


def feat_gather(const float[:, ::1] A, const int32_t[:, ::1] inv, float[:, ::1] x,
                int nthreads):
    """x (B, nq * d): example e's block q = A[inv[e, q]] (inv (B, nq), A (U, d))."""
    with nogil:
        mp_feat_gather(&A[0, 0], &inv[0, 0], inv.shape[0], inv.shape[1], A.shape[1], &x[0, 0],
                       nthreads)


def feat_regroup(float[:, ::1] W, float[:, :, ::1] Wp, bint to, int nthreads):
    """to: Wp (nq, H, d) = the blocks of W (H, nq * d); else W from Wp."""
    with nogil:
        mp_feat_regroup(&W[0, 0], W.shape[0], Wp.shape[0], Wp.shape[2], &Wp[0, 0, 0], to,
                        nthreads)
