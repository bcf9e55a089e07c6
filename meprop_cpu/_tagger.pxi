# The fused training step of the POS tagger (include/meprop/tagger.h).
#
# meprop_cpu/tagging/fused.py builds a :class:`TaggerStep` from a tagger and
# an optimizer (after checking that they qualify) and calls
# :meth:`TaggerStep.run` once per sentence. The object keeps references to
# every array whose address it holds.

_TAGGER_PARAMS = ("Ew", "Ef", "W", "U", "b", "Wo", "bo")


cdef class TaggerStep:
    """Buffers and pointers for one tagger at a fixed structure.

    params: {name: float32 array} for the names of ``_TAGGER_PARAMS`` (the word
    and feature tables, the LSTM's W (4h, n_in), U (4h, h), b, the output
    layer's W (n_tags, h) and b); states: {name: list of the optimizer's 0-2
    state arrays}; hits: int64 (h,) meSimp counts or None; k: the LSTM's
    per-gate top-k (0: dense); n_feat: feature ids per token; max_T: the
    longest sentence run() will be given; threads: the most threads."""
    cdef mp_tagger_step s
    cdef list keep
    cdef readonly int64_t max_T, n_feat
    cdef readonly int threads

    def __init__(self, dict params, dict states, hits, int64_t k, int64_t n_feat,
                 int64_t max_T, int threads):
        memset(&self.s, 0, sizeof(mp_tagger_step))
        if max_T < 1 or threads < 1 or n_feat < 1:
            raise ValueError(f"TaggerStep: max_T, threads and n_feat must be >= 1, got "
                             f"{max_T}, {threads}, {n_feat}")
        for d, what in ((params, "params"), (states, "states")):
            if set(d) != set(_TAGGER_PARAMS):
                raise ValueError(f"TaggerStep: {what} must have the keys {_TAGGER_PARAMS}, got "
                                 f"{tuple(d)}")
        self.keep = []
        self.max_T, self.threads, self.n_feat = max_T, threads, n_feat
        Ew, Ef, W, U = params["Ew"], params["Ef"], params["W"], params["U"]
        cdef int64_t G = U.shape[0], h = U.shape[1], n_in = W.shape[1]
        cdef int64_t n_tags = params["Wo"].shape[0], dw = Ew.shape[1], df = Ef.shape[1]
        if G != 4 * h or W.shape[0] != G or n_in != dw + n_feat * df \
                or params["Wo"].shape[1] != h:
            raise ValueError(f"TaggerStep: shapes do not fit together: Ew {Ew.shape}, Ef "
                             f"{Ef.shape}, W {W.shape}, U {U.shape}, Wo {params['Wo'].shape}, "
                             f"{n_feat} features")
        if not 0 <= k < h:
            raise ValueError(f"TaggerStep: k must be in [0, {h}), got {k}")
        cdef mp_tagger_step *s = &self.s
        s.n_words, s.n_feat_rows, s.n_feat, s.dw, s.df = Ew.shape[0], Ef.shape[0], n_feat, dw, df
        s.n_in, s.h, s.k, s.n_tags = n_in, h, k, n_tags
        sizes = {"Ew": Ew.size, "Ef": Ef.size, "W": G * n_in, "U": G * h, "b": G,
                 "Wo": n_tags * h, "bo": n_tags}
        cdef float *ptrs[7]
        cdef int q
        for q, name in enumerate(_TAGGER_PARAMS):
            ptrs[q] = <float *>_ptr(params[name], name, cnp.NPY_FLOAT32, sizes[name], "TaggerStep")
            st = list(states[name])
            if len(st) > 2:
                raise ValueError(f"TaggerStep: {name} has {len(st)} state arrays")
            s.s1[q] = <float *>_ptr(st[0], name + " state", cnp.NPY_FLOAT32, sizes[name],
                                    "TaggerStep") if len(st) > 0 else NULL
            s.s2[q] = <float *>_ptr(st[1], name + " state", cnp.NPY_FLOAT32, sizes[name],
                                    "TaggerStep") if len(st) > 1 else NULL
            self.keep.append((params[name], st))
        s.Ew, s.Ef, s.W, s.U, s.b = ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4]
        s.hits = <int64_t *>_ptr(hits, "hits", cnp.NPY_INT64, h, "TaggerStep") \
            if hits is not None else NULL
        self.keep.append(hits)
        # the output layer: a dense Linear (h -> n_tags) as nn.Linear.backward runs it
        cdef mp_step_layer *o = &s.out
        _set_modes(o, h, n_tags, 0, False, False, False, True, max_T)
        o.relu = 0
        o.W, o.b = ptrs[5], ptrs[6]
        o.sW1, o.sW2, o.sb1, o.sb2 = s.s1[5], s.s2[5], s.s1[6], s.s2[6]
        self.keep.append(_alloc_backward(o, max_T, threads, False))
        o.y = self._f(max_T * n_tags)
        o.dy = self._f(max_T * n_tags)
        cdef int64_t T = max_T, npairs = max_T * 4 * k
        s.X, s.XP, s.Z, s.dZ = self._f(T * n_in), self._f(T * G), self._f(T * G), self._f(T * G)
        s.H, s.C, s.TC = self._f((T + 1) * h), self._f((T + 1) * h), self._f(T * h)
        s.dX, s.dXw, s.dXf = self._f(T * n_in), self._f(T * dw), self._f(T * n_feat * df)
        s.dh, s.dc, s.gb = self._f(h), self._f(h), self._f(G)
        if k == 0:
            s.gW, s.gU = self._f(G * n_in), self._f(G * h)
        else:
            s.idx, s.val = self._i(npairs), self._f(npairs)
            s.heap = self._arr(mp_lstm_topk_ws_entries(k), np.int64)
            s.sel = self._i(threads * mp_thread_stride(4 * k))
            s.coef = self._f(threads * mp_thread_stride(4 * k))
            s.cursor, s.rows = self._i(G), self._i(min(G, npairs))
            s.offsets = self._i(min(G, npairs) + 1)
            s.pair_b, s.pair_v = self._i(npairs), self._f(npairs)
        s.keys = <uint64_t *>self._arr(2 * T * n_feat, np.uint64)
        s.wrows, s.woff, s.wpair, s.wv = self._i(T), self._i(T + 1), self._i(T), self._f(T)
        s.frows, s.foff = self._i(T * n_feat), self._i(T * n_feat + 1)
        s.fpair, s.fv = self._i(T * n_feat), self._f(T * n_feat)
        s.flag = <uint8_t *>self._arr(h, np.uint8)
        s.gbuf = self._f(threads * mp_thread_stride(max(n_in, h, dw, df)))

    cdef void *_arr(self, int64_t n, dtype) except NULL:
        a = np.zeros(max(n, 1), dtype=dtype)
        self.keep.append(a)
        return cnp.PyArray_DATA(<cnp.ndarray>a)

    cdef float *_f(self, int64_t n) except NULL:
        return <float *>self._arr(n, np.float32)

    cdef int32_t *_i(self, int64_t n) except NULL:
        return <int32_t *>self._arr(n, np.int32)

    def run(self, wid, fid, tid, list counts, int nthreads, int kind, double lr,
            double momentum, double eps, double beta1, double beta2, double weight_decay,
            double clip):
        """One training step on one sentence: wid int32 (T,) word rows, fid int32
        (T, n_feat) feature rows, tid int64 (T,) tags; counts: the optimizer step
        counts of the seven parameters (order of _TAGGER_PARAMS) before the step.

        Returns (status, loss, bad, t_forward, t_backward, t_update): status 0
        ok (parameters, state and meSimp counts updated), 1 a tag outside the
        tag set (bad = 1 + its position), 2 a non-finite loss, 3 a non-finite
        gradient met by the top-k (bad = count); on a non-zero status nothing
        changed. ValueError (nothing changed) for rows outside the tables."""
        cdef str where = "TaggerStep.run"
        cdef cnp.ndarray wa = _carray(wid, where, "wid", cnp.NPY_INT32, 1, -1, 0)
        cdef int64_t T = wa.shape[0], i
        if T < 1 or T > self.max_T:
            raise ValueError(f"{where}: a sentence of {T} tokens, expected 1..{self.max_T}")
        cdef cnp.ndarray fa = _carray(fid, where, "fid", cnp.NPY_INT32, 2, T, self.n_feat)
        cdef cnp.ndarray ta = _carray(tid, where, "tid", cnp.NPY_INT64, 1, T, 0)
        if nthreads < 1 or nthreads > self.threads:
            raise ValueError(f"{where}: nthreads must be in [1, {self.threads}], got {nthreads}")
        if kind < 0 or kind > 2:
            raise ValueError(f"{where}: kind must be 0, 1 or 2, got {kind}")
        if len(counts) != 7:
            raise ValueError(f"{where}: counts must have 7 entries")
        cdef const int32_t *pw = <const int32_t *>cnp.PyArray_DATA(wa)
        cdef const int32_t *pf = <const int32_t *>cnp.PyArray_DATA(fa)
        for i in range(T):
            if pw[i] < 0 or pw[i] >= self.s.n_words:
                raise ValueError(f"{where}: wid[{i}] = {pw[i]} is outside [0, {self.s.n_words})")
        for i in range(T * self.n_feat):
            if pf[i] < 0 or pf[i] >= self.s.n_feat_rows:
                raise ValueError(f"{where}: fid holds {pf[i]}, outside [0, "
                                 f"{self.s.n_feat_rows})")
        cdef int q
        for q in range(7):
            self.s.t[q] = counts[q]
        cdef mp_step_optim o
        o.kind, o.lr, o.momentum, o.eps = kind, lr, momentum, eps
        o.beta1, o.beta2, o.weight_decay, o.clip = beta1, beta2, weight_decay, clip
        cdef mp_step_result res
        res.loss = 0.0
        res.bad = res.layer = 0
        res.t_forward = res.t_backward = res.t_update = res.t_hidden_backward = 0.0
        cdef int st
        cdef const int64_t *pt = <const int64_t *>cnp.PyArray_DATA(ta)
        with nogil:
            st = mp_tagger_train_step(&self.s, pw, pf, pt, T, &o, nthreads, &res)
        return st, res.loss, res.bad, res.t_forward, res.t_backward, res.t_update
