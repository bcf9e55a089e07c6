# The fused MLP training step of include/meprop/step.h.
#
# meprop_cpu/fused.py builds a :class:`MLPStep` from a model and an optimizer
# (after checking that they qualify) and calls :meth:`MLPStep.run` once per
# batch. The object keeps references to every array whose address it holds,
# so nothing it points to can be freed while it lives.
#


cdef void *_ptr(object a, str name, int typenum, int64_t size, str who="MLPStep") except NULL:
    """The data pointer of a C-contiguous, writable array of the given type and size."""
    if type(a) is not np.ndarray:
        raise TypeError(f"{who}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(arr) \
            or not cnp.PyArray_ISWRITEABLE(arr) or cnp.PyArray_SIZE(arr) != size:
        raise ValueError(f"{who}: {name} must be a writable C-contiguous "
                         f"{'float32' if typenum == cnp.NPY_FLOAT32 else 'int64'} array of "
                         f"{size} elements, got {a.dtype} {a.shape}")
    return cnp.PyArray_DATA(arr)


cdef cnp.ndarray _carray(object a, str where, str name, int typenum, int ndim, int64_t n0,
                         int64_t n1):
    """a as a C-contiguous array of the type and rank, with n0 rows (n0 < 0: any)
    and, when 2-D, n1 columns; TypeError / ValueError naming it otherwise."""
    if type(a) is not np.ndarray:
        raise TypeError(f"{where}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or (n0 >= 0 and arr.shape[0] != n0)
            or (ndim == 2 and arr.shape[1] != n1)):
        rows = "N" if n0 < 0 else str(n0)
        shape = f"({rows}, {n1})" if ndim == 2 else f"({rows},)"
        kind = {cnp.NPY_FLOAT32: "float32", cnp.NPY_INT32: "int32"}.get(typenum, "int64")
        raise ValueError(f"{where}: {name} must be a C-contiguous {kind} array of "
                         f"shape {shape}, got {a.dtype} {a.shape}")
    return arr


cdef class MLPStep:
    """Buffers and pointers for one model at a fixed structure.

    layers: one dict per Linear with keys W, b (parameter arrays), sW, sb
    (lists of the optimizer's state arrays for them, 0-2 each), hits (int64
    array or None), k (0 for a dense backward), unified (one index set per
    batch), exact_dx (with k > 0: the input gradient from the whole dy, modes
    "topk_dw" and "batch_dw"), batch_sel (the B k largest |dy| of the batch
    instead of k per example, mode "batch_dw"), relu, need_dx, and optionally
    drop_u (float32 (max_batch, n_out): where the caller draws the dropout
    uniforms before each run) with drop_p (the dropout probability). max_batch, threads: the largest batch and thread count run()
    will be given.
    """
    cdef mp_step_layer *L
    cdef int nl
    cdef float *gbuf
    cdef float *xbuf
    cdef int64_t *ybuf
    cdef readonly int64_t max_batch
    cdef readonly int threads
    cdef readonly int64_t n_in, n_classes
    cdef list keep
    cdef readonly list layer_arrays
    cdef list input_arrays

    def __cinit__(self, list layers, int64_t max_batch, int threads):
        self.L = NULL

    def __init__(self, list layers, int64_t max_batch, int threads):
        if not layers:
            raise ValueError("MLPStep: layers is empty")
        if max_batch < 1 or threads < 1:
            raise ValueError(f"MLPStep: max_batch and threads must be >= 1, got "
                             f"{max_batch}, {threads}")
        self.nl = len(layers)
        self.max_batch = max_batch
        self.threads = threads
        self.keep = []
        self.layer_arrays = []
        self.input_arrays = []
        self.L = <mp_step_layer *>calloc(self.nl, sizeof(mp_step_layer))
        if self.L == NULL:
            raise MemoryError()
        cdef int i
        cdef mp_step_layer *l
        cdef int64_t n_in, n_out, k, B = max_batch, max_in = 1, npairs
        for i, d in enumerate(layers):
            l = &self.L[i]
            W, b = d["W"], d["b"]
            n_out, n_in = W.shape
            k = d["k"]
            if not 0 <= k < n_out:
                raise ValueError(f"MLPStep: layer {i}: k must be in [0, {n_out}), got {k}")
            if i > 0 and n_in != self.L[i - 1].n_out:
                raise ValueError(f"MLPStep: layer {i} takes {n_in} inputs, layer {i - 1} "
                                 f"gives {self.L[i - 1].n_out}")
            l.n_in, l.n_out = n_in, n_out
            l.relu = 1 if d["relu"] else 0
            if i == self.nl - 1 and l.relu:
                raise ValueError("MLPStep: the last layer must not have a ReLU")
            if i > 0 and not self.L[i - 1].relu:
                raise ValueError(f"MLPStep: layer {i - 1} must be followed by a ReLU")
            max_in = max(max_in, n_in)
            l.W = <float *>_ptr(W, f"layers[{i}].W", cnp.NPY_FLOAT32, n_out * n_in)
            l.b = <float *>_ptr(b, f"layers[{i}].b", cnp.NPY_FLOAT32, n_out)
            sW, sb = list(d["sW"]), list(d["sb"])
            if len(sW) != len(sb) or len(sW) > 2:
                raise ValueError(f"MLPStep: layer {i}: state arrays do not pair up")
            l.sW1 = <float *>_ptr(sW[0], "sW[0]", cnp.NPY_FLOAT32, n_out * n_in) if len(sW) > 0 else NULL
            l.sW2 = <float *>_ptr(sW[1], "sW[1]", cnp.NPY_FLOAT32, n_out * n_in) if len(sW) > 1 else NULL
            l.sb1 = <float *>_ptr(sb[0], "sb[0]", cnp.NPY_FLOAT32, n_out) if len(sb) > 0 else NULL
            l.sb2 = <float *>_ptr(sb[1], "sb[1]", cnp.NPY_FLOAT32, n_out) if len(sb) > 1 else NULL
            hits = d["hits"]
            l.hits = <int64_t *>_ptr(hits, "hits", cnp.NPY_INT64, n_out) if hits is not None else NULL
            self.keep.append((W, b, sW, sb, hits))
            drop_u = d.get("drop_u")
            if drop_u is not None:
                if not l.relu:
                    raise ValueError(f"MLPStep: layer {i}: dropout needs the ReLU before it")
                l.drop_u = <const float *>_ptr(drop_u, "drop_u", cnp.NPY_FLOAT32, B * n_out)
                l.drop_p = <float>d["drop_p"]
                l.drop_s = <float>(1.0 / (1.0 - <double>d["drop_p"]))
                l.drop_scale = self._buf(B * n_out, np.float32)
                hd = self._array(B * n_out, np.float32)
                l.hd = <float *>cnp.PyArray_DATA(<cnp.ndarray>hd)
                self.keep.append(drop_u)
            l.y = self._buf(B * n_out, np.float32)
            h = self._array(B * n_out, np.float32) if l.relu else None
            l.h = <float *>cnp.PyArray_DATA(<cnp.ndarray>h) if l.relu else NULL
            # the next layer's input: the dropout output, else the ReLU's
            self.input_arrays.append(hd if l.drop_u != NULL else h)
            _set_modes(l, n_in, n_out, k, d.get("unified", False), d.get("exact_dx", False),
                       d.get("batch_sel", False), d["need_dx"], B)
            arrays = _alloc_backward(l, B, threads, hits is not None)
            l.dy = <float *>_new(arrays, "dy", B * n_out, np.float32)
            self.layer_arrays.append(arrays)
        self.gbuf = self._buf(threads * mp_thread_stride(max_in), np.float32)
        xbuf = self._array(B * self.L[0].n_in, np.float32)
        self.xbuf = <float *>cnp.PyArray_DATA(<cnp.ndarray>xbuf)
        self.input_arrays = [xbuf] + self.input_arrays[:self.nl - 1]
        self.ybuf = <int64_t *>self._buf(B, np.int64)
        self.n_in = self.L[0].n_in
        self.n_classes = self.L[self.nl - 1].n_out

    cdef object _array(self, int64_t n, dtype):
        """A zeroed array of n (at least 1) entries that the step keeps alive."""
        a = np.zeros(max(n, 1), dtype=dtype)
        self.keep.append(a)
        return a

    cdef float *_buf(self, int64_t n, dtype) except NULL:
        return <float *>cnp.PyArray_DATA(<cnp.ndarray>self._array(n, dtype))

    def __dealloc__(self):
        free(self.L)

    def layer(self, int i):
        """Layer i's buffers after the last run, as mp_layer_backward left them
        (flat arrays sized for max_batch: "dy", "gb", "dx", "gw", "idx", "val",
        "rows", "offsets", "pair_b", "pair_v", ... as its mode has them) and "r",
        the rows its weight gradient touched. For tests that compare the paths."""
        if not 0 <= i < self.nl:
            raise IndexError(f"MLPStep.layer: i must be in [0, {self.nl}), got {i}")
        return dict(self.layer_arrays[i], r=self.L[i].r if self.L[i].k > 0 else self.L[i].n_out,
                    masked=bool(self.L[i].masked))

    def inputs(self, int64_t B):
        """Each layer's input for the last run's batch of B rows, as (B, n_in)
        views of the step's buffers (layer 0: the gathered batch; then each
        ReLU's, or dropout's, output). Valid until the next run."""
        if B < 0 or B > self.max_batch:
            raise ValueError(f"MLPStep.inputs: B must be in [0, {self.max_batch}], got {B}")
        return [a[:B * self.L[i].n_in].reshape(B, self.L[i].n_in)
                for i, a in enumerate(self.input_arrays)]

    def forward_backward_rows(self, X, Y, idx, float dy_scale, int nthreads):
        """Forward, loss and backward on the batch X[idx], Y[idx] (as run_rows
        gathers it), without the update: the gradients stay in the layers'
        buffers (layer(i), inputs(B)). dy_scale multiplies the loss gradient
        (1: the batch mean). Returns (status, loss, bad, layer, t_forward,
        t_backward, t_hidden_backward), the status as run's (nothing to
        update on a non-zero one)."""
        cdef int64_t B = self._gather("MLPStep.forward_backward_rows", X, Y, idx, nthreads)
        cdef mp_step_result res
        res.loss = 0.0
        res.bad = res.layer = 0
        res.t_forward = res.t_backward = res.t_update = res.t_hidden_backward = 0.0
        cdef int st
        with nogil:
            st = mp_mlp_forward_backward(self.L, self.nl, self.xbuf, self.ybuf, B, dy_scale,
                                         nthreads, &res)
        return (st, res.loss, res.bad, res.layer, res.t_forward, res.t_backward,
                res.t_hidden_backward)

    cdef int64_t _gather(self, str where, X, Y, idx, int nthreads) except -1:
        """Copy the rows X[idx], Y[idx] into the step's buffers; returns B."""
        cdef cnp.ndarray xa = _carray(X, where, "X", cnp.NPY_FLOAT32, 2, -1, self.n_in)
        cdef int64_t N = xa.shape[0], n_in = self.n_in
        cdef cnp.ndarray ya = _carray(Y, where, "Y", cnp.NPY_INT64, 1, N, 0)
        cdef cnp.ndarray ia = _carray(idx, where, "idx", cnp.NPY_INT64, 1, -1, 0)
        cdef int64_t B = ia.shape[0], b
        if B < 1 or B > self.max_batch:
            raise ValueError(f"{where}: batch of {B} rows, expected 1..{self.max_batch}")
        cdef const int64_t *pi = <const int64_t *>cnp.PyArray_DATA(ia)
        cdef const float *px = <const float *>cnp.PyArray_DATA(xa)
        cdef const int64_t *py = <const int64_t *>cnp.PyArray_DATA(ya)
        for b in range(B):
            if pi[b] < 0 or pi[b] >= N:
                raise ValueError(f"{where}: idx[{b}] = {pi[b]} is outside [0, {N})")
        self._check_threads(where, nthreads)
        with nogil:
            mp_gather_batch(px, py, n_in, pi, B, self.xbuf, self.ybuf, nthreads)
        return B

    def run_rows(self, X, Y, idx, list counts, int nthreads, int kind, double lr,
                 double momentum, double eps, double beta1, double beta2, double weight_decay,
                 double clip):
        """run() on the batch X[idx], Y[idx], gathered here into the step's own
        buffers (X float32 (N, n_in) and Y int64 (N,) C-contiguous, idx int64
        (B,) in [0, N))."""
        cdef int64_t B = self._gather("MLPStep.run_rows", X, Y, idx, nthreads)
        return self._run(self.xbuf, self.ybuf, B, counts, nthreads, kind, lr, momentum, eps,
                         beta1, beta2, weight_decay, clip)

    def run(self, x, labels, list counts, int nthreads, int kind, double lr, double momentum,
            double eps, double beta1, double beta2, double weight_decay, double clip):
        """One training step. x float32 (B, n_in) C-contiguous, labels int64 (B,);
        counts: the optimizer step counts [tW0, tb0, tW1, tb1, ...] before the step.

        Returns (status, loss, bad, layer, t_forward, t_backward, t_update,
        t_hidden_backward):
        status 0 ok (parameters, state and step counts updated), 1 bad label
        (bad = 1 + its position), 2 non-finite loss, 3 non-finite gradient in
        layer's top-k (bad = count); on a non-zero status nothing changed."""
        cdef cnp.ndarray xa = _carray(x, "MLPStep.run", "x", cnp.NPY_FLOAT32, 2, -1, self.n_in)
        cdef int64_t B = xa.shape[0]
        if B < 1 or B > self.max_batch:
            raise ValueError(f"MLPStep.run: batch of {B} rows, expected 1..{self.max_batch}")
        cdef cnp.ndarray ya = _carray(labels, "MLPStep.run", "labels", cnp.NPY_INT64, 1, B, 0)
        self._check_threads("MLPStep.run", nthreads)
        return self._run(<const float *>cnp.PyArray_DATA(xa),
                         <const int64_t *>cnp.PyArray_DATA(ya), B, counts, nthreads, kind, lr,
                         momentum, eps, beta1, beta2, weight_decay, clip)

    cdef int _check_threads(self, str where, int nthreads) except -1:
        if nthreads < 1 or nthreads > self.threads:
            raise ValueError(f"{where}: nthreads must be in [1, {self.threads}], got {nthreads}")
        return 0

    cdef tuple _run(self, const float *px, const int64_t *py, int64_t B, list counts,
                    int nthreads, int kind, double lr, double momentum, double eps, double beta1,
                    double beta2, double weight_decay, double clip):
        if kind < 0 or kind > 2:
            raise ValueError(f"MLPStep.run: kind must be 0, 1 or 2, got {kind}")
        if len(counts) != 2 * self.nl:
            raise ValueError(f"MLPStep.run: counts must have {2 * self.nl} entries")
        cdef int i
        for i in range(self.nl):
            self.L[i].tW = counts[2 * i]
            self.L[i].tb = counts[2 * i + 1]
        cdef mp_step_optim o
        o.kind, o.lr, o.momentum, o.eps = kind, lr, momentum, eps
        o.beta1, o.beta2, o.weight_decay, o.clip = beta1, beta2, weight_decay, clip
        cdef mp_step_result res
        res.loss = 0.0
        res.bad = res.layer = 0
        res.t_forward = res.t_backward = res.t_update = res.t_hidden_backward = 0.0
        cdef int st
        with nogil:
            st = mp_mlp_step(self.L, self.nl, px, py, B, &o, self.gbuf, nthreads, &res)
        return (st, res.loss, res.bad, res.layer, res.t_forward, res.t_backward, res.t_update,
                res.t_hidden_backward)
