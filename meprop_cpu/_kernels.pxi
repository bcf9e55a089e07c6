# Thin wrappers around the C kernels in include/meprop/.
#
# Arguments are assumed valid (meprop_cpu.kernels checks them first); every
# wrapper releases the GIL around the C call. Scratch buffers are passed in by
# the caller so the hot path allocates nothing.
#


cdef inline int _check_ws(int64_t have, int64_t need, str name) except -1:
    """Scratch buffers are sized by the caller: refuse one too small to hold
    every thread's slice (the kernel would write past its end)."""
    if have < need:
        raise ValueError(f"{name} has {have} entries, the kernel needs {need} "
                         f"(nthreads * thread_stride(...))")
    return 0


def openmp_enabled():
    return bool(MP_HAVE_OPENMP)


def parallel_min_work():
    return MP_PARALLEL_MIN_WORK


def thread_stride(int64_t n):
    """Entries between two threads' slices of a per-thread scratch buffer of n
    entries each (padded so that no cache line is shared)."""
    return mp_thread_stride(n)


def topk_ws_entries(int64_t k):
    """Candidate-buffer entries (int64-sized) one thread needs for a top-k."""
    return mp_topk_ws_entries(k)


def topk_rows(const float[:, ::1] g, int64_t k, int32_t[:, ::1] idx, float[:, ::1] val,
              int64_t[::1] topk_ws, int nthreads):
    """IN g (B, n); OUT idx, val (B, k). Returns the count of non-finite entries."""
    cdef int64_t bad
    _check_ws(topk_ws.shape[0], nthreads * mp_thread_stride(mp_topk_ws_entries(k)), "topk_ws")
    with nogil:
        bad = mp_topk_rows(&g[0, 0], g.shape[0], g.shape[1], k, &idx[0, 0], &val[0, 0],
                           <mp_entry *> &topk_ws[0], nthreads)
    return bad


def topk_mask_ws_floats(int64_t n):
    """Scratch floats one thread needs for topk_mask_rows on rows of n entries."""
    return mp_topk_mask_ws_floats(n)


def topk_mask_rows(const float[:, ::1] g, int64_t k, float[:, ::1] out, float[::1] ws,
                   int nthreads):
    """IN g (B, n); OUT out (B, n) = g on each row's top-k, 0 elsewhere (only the
    non-zero selected entries: see topk.h). Returns the count of non-finite entries."""
    cdef int64_t bad
    if g.shape[0] < 1 or not 1 <= k <= g.shape[1]:
        raise ValueError(f"topk_mask_rows: g has shape ({g.shape[0]}, {g.shape[1]}), k = {k}: "
                         "need at least one row and 1 <= k <= n")
    if out.shape[0] != g.shape[0] or out.shape[1] != g.shape[1]:
        raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]}), g ({g.shape[0]}, {g.shape[1]})")
    _check_ws(ws.shape[0], nthreads * mp_thread_stride(mp_topk_mask_ws_floats(g.shape[1])), "ws")
    with nogil:
        bad = mp_topk_mask_rows(&g[0, 0], g.shape[0], g.shape[1], k, &out[0, 0], &ws[0],
                                nthreads)
    return bad


def mask_columns(const float[:, ::1] m, int32_t[::1] cnt, int32_t[::1] rows):
    """cnt (n,) <- the rows with m[b, j] != 0 per column; rows <- the columns with
    any, ascending. Returns their count r."""
    cdef int64_t r
    if m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"mask_columns: m has shape ({m.shape[0]}, {m.shape[1]})")
    if cnt.shape[0] < m.shape[1] or rows.shape[0] < m.shape[1]:
        raise ValueError(f"cnt and rows need {m.shape[1]} entries")
    with nogil:
        r = mp_mask_columns(&m[0, 0], m.shape[0], m.shape[1], &cnt[0], &rows[0])
    return r


def topk_unified(const float[:, ::1] g, int64_t k, int32_t[::1] idx, float[::1] colsum_ws,
                 int64_t[::1] topk_ws, int nthreads):
    """IN g (B, n); OUT idx (k,), colsum_ws (n,) = sum_b |g|. Returns non-finite count."""
    cdef int64_t bad
    with nogil:
        bad = mp_topk_unified(&g[0, 0], g.shape[0], g.shape[1], k, &idx[0], &colsum_ws[0],
                              <mp_entry *> &topk_ws[0], nthreads)
    return bad


def randk_rows(int64_t B, int64_t n, int64_t k, uint64_t seed, int32_t[:, ::1] idx, int nthreads):
    with nogil:
        mp_randk_rows(B, n, k, seed, &idx[0, 0], nthreads)


def count_hits(const int32_t[:, ::1] idx, const float[:, ::1] val, int64_t[::1] hits):
    with nogil:
        mp_count_hits(&idx[0, 0], &val[0, 0], idx.shape[0] * idx.shape[1], &hits[0])


def sparse_dx(const float[:, ::1] W, const int32_t[:, ::1] idx, const float[:, ::1] val,
              float[:, ::1] dx, int32_t[::1] sel_ws, float[::1] coef_ws, int nthreads):
    cdef int64_t need = nthreads * mp_thread_stride(idx.shape[1])
    _check_ws(sel_ws.shape[0], need, "sel_ws")
    _check_ws(coef_ws.shape[0], need, "coef_ws")
    with nogil:
        mp_sparse_dx(&W[0, 0], W.shape[1], &idx[0, 0], &val[0, 0], idx.shape[0], idx.shape[1],
                     &dx[0, 0], &sel_ws[0], &coef_ws[0], nthreads)


def group_pairs(const int32_t[:, ::1] idx, const float[:, ::1] val, int64_t n_out,
                int32_t[::1] cursor, int32_t[::1] rows, int32_t[::1] offsets,
                int32_t[::1] pair_b, float[::1] pair_v):
    """Returns r, the number of distinct rows with a non-zero pair; ValueError when
    such a pair's index lies outside [0, n_out)."""
    cdef int64_t r
    _check_ws(cursor.shape[0], n_out, "cursor")
    with nogil:
        r = mp_group_pairs(&idx[0, 0], &val[0, 0], idx.shape[0], idx.shape[1], n_out,
                           &cursor[0], &rows[0], &offsets[0], &pair_b[0], &pair_v[0])
    if r < 0:
        raise ValueError(f"group_pairs: idx holds a row outside [0, {n_out}) (with a non-zero "
                         f"value)")
    return r


def group_ids(const int32_t[::1] ids, int64_t n_rows, int64_t w, int64_t stride, int64_t off,
              uint64_t[::1] keys, int32_t[::1] rows, int32_t[::1] offsets,
              int32_t[::1] pair_b, float[::1] pair_v):
    """The uses of embedding rows grouped by row (see mp_group_ids): returns r;
    ValueError when an id lies outside [0, n_rows). keys: 2 * len(ids) entries."""
    cdef int64_t r, n = ids.shape[0]
    if n == 0:
        offsets[0] = 0
        return 0
    if w < 1 or stride < w or off < 0 or off + w > stride:
        raise ValueError(f"group_ids: need 1 <= w, off >= 0 and off + w <= stride, got w={w}, "
                         f"stride={stride}, off={off}")
    if n >= 2**31 or (n - 1) // w * stride + off + w > 2**31 - 1:
        raise ValueError(f"group_ids: {n} ids (w={w}, stride={stride}) name gradient rows past "
                         f"2^31 - 1")
    _check_ws(keys.shape[0], 2 * n, "keys")
    _check_ws(rows.shape[0], n, "rows")
    _check_ws(offsets.shape[0], n + 1, "offsets")
    _check_ws(pair_b.shape[0], n, "pair_b")
    _check_ws(pair_v.shape[0], n, "pair_v")
    with nogil:
        r = mp_group_ids(&ids[0], n, n_rows, w, stride, off, &keys[0], &keys[n], &rows[0],
                         &offsets[0], &pair_b[0], &pair_v[0])
    if r < 0:
        raise ValueError(f"group_ids: ids hold a row outside [0, {n_rows})")
    return r


def backward_masked(int64_t k, int64_t n_out):
    """Whether the meProp backward of a layer with n_out outputs and k kept
    entries per example runs as masked dense products (see sparse_linear.h)."""
    return bool(mp_backward_masked(k, n_out))


def scatter_pairs(const int32_t[:, ::1] idx, const float[:, ::1] val, float[:, ::1] dyS,
                  int32_t[::1] flag_ws, int32_t[::1] rows):
    """dyS (B, n_out) <- the non-zero pairs (zeros elsewhere); rows <- the distinct
    rows with a non-zero pair, ascending. Returns their count r."""
    cdef int64_t r
    with nogil:
        r = mp_scatter_pairs(&idx[0, 0], &val[0, 0], idx.shape[0], idx.shape[1], dyS.shape[1],
                             &dyS[0, 0], &flag_ws[0], &rows[0])
    return r


def sparse_dw(const float[:, ::1] x, int64_t r, const int32_t[::1] offsets,
              const int32_t[::1] pair_b, const float[::1] pair_v, float[:, ::1] values,
              int nthreads):
    if r == 0:
        return
    with nogil:
        mp_sparse_dw(&x[0, 0], x.shape[1], r, &offsets[0], &pair_b[0], &pair_v[0],
                     &values[0, 0], nthreads)


cdef mp_optim_args _optim_args(float lr, float momentum, float eps, float beta1, float beta2,
                               float weight_decay, float clip, float step, float inv_sqrt_bc2):
    cdef mp_optim_args a
    a.lr = lr; a.momentum = momentum; a.eps = eps; a.beta1 = beta1; a.beta2 = beta2
    a.weight_decay = weight_decay; a.clip = clip; a.step = step; a.inv_sqrt_bc2 = inv_sqrt_bc2
    return a


def optim_rows_factored(int kind, float[:, ::1] w, float[:, ::1] s1, float[:, ::1] s2,
                        const int32_t[::1] rows, int64_t r, const float[:, ::1] x,
                        const int32_t[::1] offsets, const int32_t[::1] pair_b,
                        const float[::1] pair_v, float[::1] gbuf,
                        float lr, float momentum, float eps, float beta1, float beta2,
                        float weight_decay, float clip, float step, float inv_sqrt_bc2,
                        int nthreads):
    """Update rows[:r] of w from the factored sparse-backward gradient (see optim.h).
    gbuf: nthreads * thread_stride(w.shape[1]) floats of scratch."""
    cdef mp_optim_args a = _optim_args(lr, momentum, eps, beta1, beta2, weight_decay, clip,
                                       step, inv_sqrt_bc2)
    cdef float *p1 = NULL
    cdef float *p2 = NULL
    if r == 0:
        return
    _check_ws(gbuf.shape[0], nthreads * mp_thread_stride(w.shape[1]), "gbuf")
    if s1 is not None:
        p1 = &s1[0, 0]
    if s2 is not None:
        p2 = &s2[0, 0]
    with nogil:
        mp_optim_rows_factored(kind, &w[0, 0], p1, p2, &rows[0], r, w.shape[1], &x[0, 0],
                               &offsets[0], &pair_b[0], &pair_v[0], &gbuf[0], a, nthreads)


def optim_rows(int kind, float[:, ::1] w, float[:, ::1] s1, float[:, ::1] s2,
               const int32_t[::1] rows, const float[:, ::1] values, int64_t r,
               float lr, float momentum, float eps, float beta1, float beta2,
               float weight_decay, float clip, float step, float inv_sqrt_bc2, int nthreads):
    """Update r rows of w (rows None: the first r rows, densely)."""
    cdef mp_optim_args a = _optim_args(lr, momentum, eps, beta1, beta2, weight_decay, clip,
                                       step, inv_sqrt_bc2)
    cdef float *p1 = NULL
    cdef float *p2 = NULL
    cdef const int32_t *prow = NULL
    if r == 0:
        return
    if s1 is not None:
        p1 = &s1[0, 0]
    if s2 is not None:
        p2 = &s2[0, 0]
    if rows is not None:
        prow = &rows[0]
    with nogil:
        mp_optim_rows(kind, &w[0, 0], p1, p2, prow, &values[0, 0], r, w.shape[1], a, nthreads)


def uniform_f32(uint64_t key, uint64_t counter, float[::1] out, int nthreads=1):
    """out <- draws counter, counter + 1, ... of the counter-based generator keyed by
    key (uniform floats in [0, 1), multiples of 2**-24; elementwise.h), on up to
    nthreads threads (the same bits for any count)."""
    if out.shape[0] == 0:
        return
    if nthreads < 1:
        raise ValueError(f"uniform_f32: nthreads must be >= 1, got {nthreads}")
    with nogil:
        mp_uniform_f32(key, counter, out.shape[0], &out[0], nthreads)


def relu_forward(const float[:, ::1] x, float[:, ::1] y):
    with nogil:
        mp_relu_forward(&x[0, 0], &y[0, 0], x.shape[0] * x.shape[1])


def relu_backward(const float[:, ::1] dy, const float[:, ::1] y, float[:, ::1] dx):
    with nogil:
        mp_relu_backward(&dy[0, 0], &y[0, 0], &dx[0, 0], dy.shape[0] * dy.shape[1])


def dropout_forward(float[::1] u, float p, float s, const float[:, ::1] h, float[::1] scale,
                    float[:, ::1] out):
    """scale = s where u >= p, else 0; out = h * scale (u, scale: h.size entries,
    flat; they may be one array)."""
    cdef int64_t n = h.shape[0] * h.shape[1]
    if u.shape[0] != n or scale.shape[0] != n or out.shape[0] != h.shape[0] \
            or out.shape[1] != h.shape[1]:
        raise ValueError(f"dropout_forward: u, scale ({u.shape[0]}, {scale.shape[0]}) and "
                         f"out ({out.shape[0]}, {out.shape[1]}) must match h "
                         f"({h.shape[0]}, {h.shape[1]})")
    if n == 0:
        return
    with nogil:
        mp_dropout_forward(&u[0], p, s, &h[0, 0], &scale[0], &out[0, 0], n)


def relu_dropout_backward(const float[:, ::1] dy, const float[::1] scale,
                          const float[:, ::1] y, float[:, ::1] dx):
    """dx = dy * scale where y > 0, else 0 (scale None: dx = dy there); dx must
    not share memory with dy."""
    cdef int64_t n = dy.shape[0] * dy.shape[1]
    if y.shape[0] != dy.shape[0] or y.shape[1] != dy.shape[1] or dx.shape[0] != dy.shape[0] \
            or dx.shape[1] != dy.shape[1] or (scale is not None and scale.shape[0] != n):
        raise ValueError("relu_dropout_backward: dy, scale, y and dx must have one size")
    if n == 0:
        return
    cdef const float *sp = NULL
    if scale is not None:
        sp = &scale[0]
    with nogil:
        mp_relu_dropout_backward(&dy[0, 0], sp, &y[0, 0], &dx[0, 0], n)


def cube_forward(const float[:, ::1] x, float[:, ::1] y, int nthreads):
    """y = x ** 3 (the bits of numpy's x * x * x)."""
    with nogil:
        mp_cube_forward(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], nthreads)


def cube_backward(const float[:, ::1] dy, const float[:, ::1] x, float[:, ::1] dx,
                  int nthreads):
    """dx = dy * 3 x^2 (the bits of numpy's dy * (3.0 * x * x))."""
    with nogil:
        mp_cube_backward(&dy[0, 0], &x[0, 0], &dx[0, 0], x.shape[0], x.shape[1], nthreads)


def softmax_xent(const float[:, ::1] logits, const int64_t[::1] y, float[:, ::1] d):
    """(status, loss): status 0, or 1 + the first example whose label is out of range."""
    cdef double loss = 0.0
    cdef int64_t st
    with nogil:
        st = mp_softmax_xent(&logits[0, 0], &y[0], logits.shape[0], logits.shape[1], &d[0, 0],
                             &loss)
    return st, loss


def rows_from_int64(const int64_t[::1] rows64, int64_t n, int32_t[::1] out):
    """out[:r] <- rows64 (r entries) as int32, checked: 0 when rows64 is strictly
    ascending within [0, n), 1 when it lies within [0, n) but repeats or is out
    of order, 2 when an entry lies outside [0, n) (out is then incomplete)."""
    cdef int64_t r = rows64.shape[0], q, v
    cdef int status = 0
    _check_ws(out.shape[0], r, "out")
    with nogil:
        for q in range(r):
            v = rows64[q]
            if v < 0 or v >= n:
                status = 2
                break
            out[q] = <int32_t>v
            if q > 0 and v <= rows64[q - 1]:
                status = 1
    return status


def check_rows(const int32_t[::1] rows, int64_t n):
    """0 if rows is strictly ascending within [0, n), else 1 + the first bad position."""
    if rows.shape[0] == 0:
        return 0
    return mp_check_rows(&rows[0], rows.shape[0], n)
