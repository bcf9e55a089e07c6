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
        with nogil:
            mp_parse_forward(&self.net, &F[0, 0], F.shape[0], &buf[0], self.max_width,
                             &scores[0, 0], nthreads)

    def parse(self, const int64_t[::1] off, const int32_t[::1] w, const int32_t[::1] p,
              int64_t n_labels, int32_t[::1] heads, int32_t[::1] labels, int nthreads):
        """Greedy parse of len(off) - 1 sentences (see parse.h); 0 or -1 (out of memory)."""
        cdef int rc
        with nogil:
            rc = mp_parse_batch(&self.net, off.shape[0] - 1, &off[0], &w[0], &p[0], n_labels,
                                &heads[0], &labels[0], nthreads)
        return rc
