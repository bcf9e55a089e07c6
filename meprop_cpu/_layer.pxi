# One Linear layer's backward (include/meprop/layer.h), for nn.Linear.backward:
# the entry point the fused step (step.h) calls for each of its layers, with
# buffers laid out by the same function (_alloc_backward) as the fused step's.


cdef void *_new(dict a, str name, int64_t n, dtype) except NULL:
    """A zeroed array of n (at least 1) elements, kept in a[name]; its data pointer."""
    arr = np.zeros(max(n, 1), dtype=dtype)
    a[name] = arr
    return cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef object _alloc_backward(mp_step_layer *l, int64_t B, int threads, bint count_dense_hits):
    """Allocate the backward buffers of layer l (n_in, n_out, k, unified, masked,
    need_dx set) for batches of up to B rows and up to ``threads`` threads; set
    its pointers. Returns {name: array} (zeroed; the arrays own the memory)."""
    cdef dict a = {}
    cdef int64_t n_in = l.n_in, n_out = l.n_out, k = l.k, npairs
    l.dx = <float *>_new(a, "dx", B * n_in, np.float32) if l.need_dx else NULL
    l.gb = <float *>_new(a, "gb", n_out, np.float32)
    if l.unified:   # the selected columns of dy and rows of W, the k gradient rows
        l.idx = <int32_t *>_new(a, "idx", k, np.int32)
        l.colsum = <float *>_new(a, "colsum", n_out, np.float32)
        l.topk_ws = <mp_entry *>_new(a, "topk_ws", mp_topk_ws_entries(k), np.int64)
        l.dys = <float *>_new(a, "dys", B * k, np.float32)
        l.wk = <float *>_new(a, "wk", k * n_in, np.float32)
        l.gw = <float *>_new(a, "gw", k * n_in, np.float32)
    if k == 0 or l.masked:
        l.gw = <float *>_new(a, "gw", n_out * n_in, np.float32)
    if k == 0 and count_dense_hits:   # the per-column counts of dy, as masked layers
        l.cursor = <int32_t *>_new(a, "cursor", n_out, np.int32)
        l.rows = <int32_t *>_new(a, "rows", n_out, np.int32)
    if l.masked:   # the masked top-k writes dys; cursor counts its columns
        l.dys = <float *>_new(a, "dys", B * n_out, np.float32)
        l.mws = <float *>_new(a, "mws", max(
            threads * mp_thread_stride(mp_topk_mask_ws_floats(n_out)),
            mp_topk_mask_ws_floats(B * n_out) if l.batch_sel else 0), np.float32)
        l.cursor = <int32_t *>_new(a, "cursor", n_out, np.int32)
        l.rows = <int32_t *>_new(a, "rows", n_out, np.int32)
    elif k > 0 and not l.unified:
        npairs = B * k
        l.idx = <int32_t *>_new(a, "idx", npairs, np.int32)
        l.val = <float *>_new(a, "val", npairs, np.float32)
        if l.batch_sel:   # one selection of B k over the batch, and each pair's example
            l.topk_ws = <mp_entry *>_new(a, "topk_ws", mp_topk_ws_entries(npairs), np.int64)
            l.pair_e = <int32_t *>_new(a, "pair_e", npairs, np.int32)
        else:
            l.topk_ws = <mp_entry *>_new(a, "topk_ws", threads * mp_thread_stride(
                mp_topk_ws_entries(k)), np.int64)
        l.sel = <int32_t *>_new(a, "sel", threads * mp_thread_stride(k), np.int32)
        l.coef = <float *>_new(a, "coef", threads * mp_thread_stride(k), np.float32)
        l.cursor = <int32_t *>_new(a, "cursor", n_out, np.int32)
        l.rows = <int32_t *>_new(a, "rows", min(n_out, npairs), np.int32)
        l.offsets = <int32_t *>_new(a, "offsets", min(n_out, npairs) + 1, np.int32)
        l.pair_b = <int32_t *>_new(a, "pair_b", npairs, np.int32)
        l.pair_v = <float *>_new(a, "pair_v", npairs, np.float32)
    return a


cdef int _set_modes(mp_step_layer *l, int64_t n_in, int64_t n_out, int64_t k, bint unified,
                    bint exact_dx, bint batch_sel, bint need_dx, int64_t max_batch) except -1:
    """The shape and mode fields of a layer, as both paths derive them."""
    if n_in < 1 or n_out < 1 or not 0 <= k < n_out:
        raise ValueError(f"layer ({n_in} -> {n_out}): k must be in [0, {n_out}), got {k}")
    if batch_sel and unified:
        raise ValueError(f"layer ({n_in} -> {n_out}): batch_sel and unified exclude each other")
    if batch_sel and not exact_dx:
        raise ValueError(f"layer ({n_in} -> {n_out}): batch_sel needs exact_dx (mode "
                         f"'batch_dw' passes the exact input gradient)")
    if batch_sel and k > 0 and max_batch * n_out > 2**31 - 1:
        raise ValueError(f"layer ({n_in} -> {n_out}): mode 'batch_dw' selects over the whole "
                         f"batch, which needs batch * n_out < 2^31 (batch {max_batch})")
    l.n_in, l.n_out, l.k = n_in, n_out, k
    l.need_dx = 1 if need_dx else 0
    l.unified = 1 if (k > 0 and unified) else 0
    l.masked = 1 if (k > 0 and not l.unified and mp_backward_masked(k, n_out)) else 0
    l.exact_dx = 1 if (k > 0 and exact_dx) else 0
    l.batch_sel = 1 if (k > 0 and batch_sel) else 0
    return 0


def colsum_rows(const float[:, ::1] dy, float[::1] out):
    """out (n,) = dy (B >= 1, n) summed over its rows, one row after the other:
    the bias gradient of mp_layer_backward."""
    with nogil:
        mp_step_colsum(&dy[0, 0], dy.shape[0], dy.shape[1], &out[0])


def adam_corrections(double lr, double beta1, double beta2, int64_t t):
    """(step size, 1 / sqrt(1 - beta2^t)) of Adam's update at step count t, as
    float32: what mp_step_args (layer.h) hands every update kernel."""
    cdef mp_step_optim o
    o.kind, o.lr, o.momentum, o.eps = MP_OPT_ADAM, lr, 0.0, 0.0
    o.beta1, o.beta2, o.weight_decay, o.clip = beta1, beta2, 0.0, 0.0
    cdef mp_optim_args a = mp_step_args(&o, t)
    return a.step, a.inv_sqrt_bc2


cdef class LinearBackward:
    """The backward of one Linear layer at a fixed (n_in, n_out, k, mode), for
    batches of up to max_batch rows on up to ``threads`` threads: run() calls
    mp_layer_backward, the entry point the fused step calls for each layer.

    After run(), ``arrays`` holds the results (flat buffers; the caller views
    the first B rows): gb (the bias gradient), dx (need_dx), and the weight
    gradient: gw (dense: (n_out, n_in); unified: (k, n_in) for rows idx;
    masked: (n_out, n_in) of which rows[:r] count) or, for the per-example
    and the batch top-k, rows[:r] with offsets / pair_b / pair_v (formed by
    the optimizer; batch_sel: idx / pair_e / val hold the B k selected
    (column, example, value) triples in flat order).
    """
    cdef mp_step_layer l
    cdef readonly dict arrays
    cdef readonly int64_t max_batch
    cdef readonly int threads
    cdef readonly bint masked
    cdef readonly int64_t r

    def __init__(self, int64_t n_in, int64_t n_out, int64_t k, bint unified, bint exact_dx,
                 bint batch_sel, bint need_dx, bint count_hits, int64_t max_batch,
                 int threads):
        if max_batch < 1 or threads < 1:
            raise ValueError(f"LinearBackward: max_batch and threads must be >= 1, got "
                             f"{max_batch}, {threads}")
        memset(&self.l, 0, sizeof(mp_step_layer))
        _set_modes(&self.l, n_in, n_out, k, unified, exact_dx, batch_sel, need_dx, max_batch)
        self.arrays = _alloc_backward(&self.l, max_batch, threads, count_hits)
        self.max_batch, self.threads, self.masked, self.r = max_batch, threads, self.l.masked, 0

    def run(self, x, W, dy, hits, int nthreads, dx=None, gw=None):
        """x (B, n_in), W (n_out, n_in), dy (B, n_out) float32 C-contiguous; hits
        int64 (n_out,) to add the activeness counts to, or None. dx, gw: arrays
        to write the input gradient (B, n_in) and the dense-form weight gradient
        ((n_out, n_in); unified: (k, n_in)) into instead of the own buffers
        (writable float32 C-contiguous), or None. Returns the number of NaN / Inf
        entries the top-k met (0: the results are valid)."""
        cdef str where = "LinearBackward.run"
        cdef cnp.ndarray xa = _carray(x, where, "x", cnp.NPY_FLOAT32, 2, -1, self.l.n_in)
        cdef int64_t B = xa.shape[0]
        if B < 1 or B > self.max_batch:
            raise ValueError(f"{where}: batch of {B} rows, expected 1..{self.max_batch}")
        cdef cnp.ndarray wa = _carray(W, where, "W", cnp.NPY_FLOAT32, 2, self.l.n_out,
                                      self.l.n_in)
        cdef cnp.ndarray da = _carray(dy, where, "dy", cnp.NPY_FLOAT32, 2, B, self.l.n_out)
        if nthreads < 1 or nthreads > self.threads:
            raise ValueError(f"{where}: nthreads must be in [1, {self.threads}], got {nthreads}")
        cdef cnp.ndarray ha
        self.l.hits = NULL
        if hits is not None:
            if self.l.k == 0 and "cursor" not in self.arrays:
                raise ValueError(f"{where}: built without count_hits")
            ha = _carray(hits, where, "hits", cnp.NPY_INT64, 1, self.l.n_out, 0)
            self.l.hits = <int64_t *>cnp.PyArray_DATA(ha)
        cdef float *own_dx = self.l.dx
        cdef float *own_gw = self.l.gw
        cdef cnp.ndarray oa, ga
        if dx is not None:
            if not self.l.need_dx:
                raise ValueError(f"{where}: built without the input gradient (need_dx)")
            oa = _carray(dx, where, "dx", cnp.NPY_FLOAT32, 2, B, self.l.n_in)
            if not cnp.PyArray_ISWRITEABLE(oa):
                raise ValueError(f"{where}: dx must be writable")
        if gw is not None:
            if self.l.gw == NULL:
                raise ValueError(f"{where}: this mode forms no dense weight gradient")
            ga = _carray(gw, where, "gw", cnp.NPY_FLOAT32, 2,
                         self.l.k if self.l.unified else self.l.n_out, self.l.n_in)
            if not cnp.PyArray_ISWRITEABLE(ga):
                raise ValueError(f"{where}: gw must be writable")
            self.l.gw = <float *>cnp.PyArray_DATA(ga)
        if dx is not None:
            self.l.dx = <float *>cnp.PyArray_DATA(oa)
        self.l.x = <const float *>cnp.PyArray_DATA(xa)
        self.l.W = <float *>cnp.PyArray_DATA(wa)
        self.l.dy = <float *>cnp.PyArray_DATA(da)   # read only
        cdef int64_t bad
        with nogil:
            bad = mp_layer_backward(&self.l, B, nthreads)
        self.l.hits = NULL
        self.l.x = NULL
        self.l.W = NULL
        self.l.dy = NULL
        self.l.dx = own_dx
        self.l.gw = own_gw
        self.r = self.l.r if self.l.k > 0 else self.l.n_out
        return bad
