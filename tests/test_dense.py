"""Dense products (include/meprop/dense.h via meprop_cpu._core) against the
float64 numpy references of tests/reference.py on every code path the CPU can
run (AVX-512, AVX2+FMA, portable C), plus bit-identical results for any
thread count and input alignment."""
import numpy as np
import pytest

from meprop_cpu import _core

from reference import ref_linear, ref_nn, ref_tn

MIN_WORK = _core.dense_min_work()


@pytest.fixture(params=[2, 1, 0], ids=["avx512", "avx2", "portable"])
def simd_path(request):
    """Run on one code path (the level is capped; a CPU without AVX-512 or AVX2
    runs the next lower path, which is then tested twice)."""
    old = _core.set_simd_limit(request.param)
    assert _core.dense_level() <= request.param
    yield request.param
    _core.set_simd_limit(old)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _check_close(got, ref, absref, K):
    """|got - ref| within a float32 summation bound: about K/16 + 8 roundings
    (16 lane partial sums, then a tree) of the sum of |terms|."""
    tol = 2.0 * np.finfo(np.float32).eps * (K / 16.0 + 8.0) * absref + 1e-30
    err = np.abs(got.astype(np.float64) - ref)
    assert got.dtype == np.float32
    assert np.all(err <= tol), f"max err {err.max()}, worst ratio {(err / tol).max()}"


# ---- calls -------------------------------------------------------------------

def linear(x, W, b, relu=False, nthreads=1):
    y = np.full((x.shape[0], W.shape[0]), np.nan, np.float32)
    _core.linear_forward(x, W, b, y, relu, nthreads)
    return y


def nn(A, Bm, nthreads=1):
    C = np.full((A.shape[0], Bm.shape[1]), np.nan, np.float32)
    _core.matmul_nn(A, Bm, C, nthreads)
    return C


def tn(A, Bm, nthreads=1):
    C = np.full((A.shape[1], Bm.shape[1]), np.nan, np.float32)
    _core.matmul_tn(A, Bm, C, nthreads)
    return C


# (B, n_in, n_out) / (M, K, N): ones, odd sizes, sizes around and not multiple
# of the tiles (4 rows, 16-float vectors, 12 x 32 outer-product tiles, 256 K
# blocks), and the MNIST layer shapes
SHAPES = [(1, 1, 1), (1, 17, 1), (2, 3, 5), (3, 5, 7), (4, 16, 4), (5, 33, 6), (7, 1, 13),
          (9, 15, 31), (12, 32, 32), (13, 47, 33), (17, 63, 19), (25, 64, 65), (31, 100, 3),
          (64, 31, 97), (11, 257, 45), (3, 600, 70), (10, 784, 500), (100, 500, 10),
          (37, 513, 129)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
def test_linear_forward(simd_path, shape, bias, relu):
    B, n_in, n_out = shape
    rng = np.random.default_rng(hash(shape) % 2**32)
    x, W = _rand(rng, B, n_in), _rand(rng, n_out, n_in)
    b = _rand(rng, n_out) if bias else None
    y = linear(x, W, b, relu)
    ref, absref = ref_linear(x, W, b, relu)
    _check_close(y, ref, absref, n_in)
    if relu:
        assert np.all(y >= 0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_nn(simd_path, shape):
    M, K, N = shape
    rng = np.random.default_rng(hash(shape) % 2**32 + 1)
    A, Bm = _rand(rng, M, K), _rand(rng, K, N)
    ref, absref = ref_nn(A, Bm)
    _check_close(nn(A, Bm), ref, absref, K)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_tn(simd_path, shape):
    M, K, N = shape
    rng = np.random.default_rng(hash(shape) % 2**32 + 2)
    A, Bm = _rand(rng, K, M), _rand(rng, K, N)
    ref, absref = ref_tn(A, Bm)
    _check_close(tn(A, Bm), ref, absref, K)


# short K (the AVX2 row-outer order: at most 256 and 64k floats of panels, a
# C block of at least 64k floats), row counts below / at / above its 12-row
# minimum, N not a multiple of 16; blocks above and below the C minimum
SHORT_K = [(2000, 14, 500), (2000, 14, 190), (500, 10, 784), (12, 5, 16), (11, 5, 16),
           (13, 256, 100), (64, 255, 47), (300, 40, 1000), (37, 3, 29), (500, 1, 17),
           (256, 16, 256), (4096, 2, 33)]


@pytest.mark.parametrize("shape", SHORT_K, ids=lambda s: "x".join(map(str, s)))
def test_short_k_orders_give_the_same_bits(simd_path, shape):
    """The AVX2 products' row-outer order for short K (mp_op_shortk_avx2) and the
    column-outer order give the same bits, for any thread count."""
    M, K, N = shape
    rng = np.random.default_rng(M * 7 + K)
    A, Bm, At = _rand(rng, M, K), _rand(rng, K, N), _rand(rng, K, M)
    old = _core.set_dense_short_k(0)
    try:
        want = [(nn(A, Bm, t), tn(At, Bm, t)) for t in (1, 2, 3)]
        _core.set_dense_short_k(1)
        got = [(nn(A, Bm, t), tn(At, Bm, t)) for t in (1, 2, 3)]
    finally:
        _core.set_dense_short_k(old)
    for (c0, d0), (c1, d1) in zip(want, got):
        assert np.array_equal(c0, c1) and np.array_equal(d0, d1)
    assert np.array_equal(got[0][0], got[1][0]) and np.array_equal(got[0][1], got[2][1])
    ref, absref = ref_tn(At, Bm)
    _check_close(got[0][1], ref, absref, K)


def test_set_dense_short_k_checks_its_argument():
    with pytest.raises(ValueError, match="on must be 0 or 1"):
        _core.set_dense_short_k(2)


def test_long_k_uses_several_blocks(simd_path):
    # K over the 256-row K block: C is reloaded and accumulated block by block
    rng = np.random.default_rng(3)
    A, Bm = _rand(rng, 30, 700), _rand(rng, 700, 50)
    ref, absref = ref_nn(A, Bm)
    _check_close(nn(A, Bm), ref, absref, 700)
    At = np.ascontiguousarray(A.T)
    _check_close(tn(At, Bm), ref, absref, 700)


def test_empty_dimensions(simd_path):
    rng = np.random.default_rng(4)
    # n_in = 0: y = b
    b = _rand(rng, 5)
    y = linear(np.zeros((3, 0), np.float32), np.zeros((5, 0), np.float32), b)
    assert np.array_equal(y, np.broadcast_to(b, (3, 5)))
    y = linear(np.zeros((3, 0), np.float32), np.zeros((5, 0), np.float32), b, relu=True)
    assert np.array_equal(y, np.broadcast_to(np.maximum(b, 0), (3, 5)))
    # K = 0: C = 0
    assert np.array_equal(nn(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)),
                          np.zeros((3, 4), np.float32))
    assert np.array_equal(tn(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32)),
                          np.zeros((3, 4), np.float32))
    # no rows / no columns: nothing to do, no crash
    assert linear(np.zeros((0, 4), np.float32), _rand(rng, 3, 4), None).shape == (0, 3)
    assert linear(_rand(rng, 2, 4), np.zeros((0, 4), np.float32), None).shape == (2, 0)
    assert nn(np.zeros((0, 4), np.float32), _rand(rng, 4, 3)).shape == (0, 3)
    assert tn(_rand(rng, 4, 2), np.zeros((4, 0), np.float32)).shape == (2, 0)


def test_relu_keeps_nan(simd_path):
    x = np.array([[np.nan, 1.0], [1.0, 1.0]], np.float32)
    W = np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32)
    y = linear(x, W, None, relu=True)
    assert np.isnan(y[0, 0]) and np.isnan(y[0, 1])
    assert y[1, 0] == 2.0 and y[1, 1] == 0.0


def test_matches_numpy_float32_closely(simd_path):
    # the training shapes: agreement with numpy's float32 product
    rng = np.random.default_rng(5)
    for B, n_in, n_out in [(10, 784, 500), (100, 500, 500), (100, 500, 10)]:
        x, W, b = _rand(rng, B, n_in), _rand(rng, n_out, n_in), _rand(rng, n_out)
        np.testing.assert_allclose(linear(x, W, b, True), np.maximum(x @ W.T + b, 0),
                                   rtol=1e-4, atol=1e-4)
        dy = _rand(rng, B, n_out)
        np.testing.assert_allclose(nn(dy, W), dy @ W, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(tn(dy, x), dy.T @ x, rtol=1e-4, atol=1e-4)


# ---- determinism -------------------------------------------------------------

# big enough for a team of 2 (work >= MIN_WORK multiply-adds), splitting the
# output columns (W rows / C columns) or, when those are few, the rows
PAR_LINEAR = [(101, 777, 203), (1001, 523, 9), (64, 1000, 130), (10, 2000, 999)]
PAR_MATMUL = [(100, 500, 784), (1000, 300, 17), (1000, 50, 90), (17, 3000, 100),
              (257, 301, 203)]


@pytest.mark.parametrize("shape", PAR_LINEAR, ids=lambda s: "x".join(map(str, s)))
def test_linear_thread_count_bit_identical(simd_path, shape):
    B, n_in, n_out = shape
    assert B * n_in * n_out >= MIN_WORK
    rng = np.random.default_rng(6)
    x, W, b = _rand(rng, B, n_in), _rand(rng, n_out, n_in), _rand(rng, n_out)
    y1 = linear(x, W, b, True, nthreads=1)
    for t in (2, 3, 8):
        assert np.array_equal(linear(x, W, b, True, nthreads=t), y1)
    ref, absref = ref_linear(x, W, b, True)
    _check_close(y1, ref, absref, n_in)


@pytest.mark.parametrize("shape", PAR_MATMUL, ids=lambda s: "x".join(map(str, s)))
def test_matmul_thread_count_bit_identical(simd_path, shape):
    M, K, N = shape
    assert M * K * N >= MIN_WORK
    rng = np.random.default_rng(7)
    A, Bm, At = _rand(rng, M, K), _rand(rng, K, N), _rand(rng, K, M)
    c1, d1 = nn(A, Bm, 1), tn(At, Bm, 1)
    for t in (2, 3, 8):
        assert np.array_equal(nn(A, Bm, t), c1)
        assert np.array_equal(tn(At, Bm, t), d1)
    ref, absref = ref_nn(A, Bm)
    _check_close(c1, ref, absref, K)
    ref, absref = ref_tn(At, Bm)
    _check_close(d1, ref, absref, K)


def _zero_blocks(rng, x, p=0.5, width=16):
    """x with whole row segments of `width` floats zeroed (per row and segment,
    with probability p; the last segment may be partial): the MNIST-like
    inputs whose all-zero 16-float blocks the AVX-512 forward skips, and
    whose 48-float segments (the tn tile width) matmul_tn skips."""
    x = x.copy()
    nb = -(-x.shape[1] // width)
    for r in range(x.shape[0]):
        for kb in np.flatnonzero(rng.random(nb) < p):
            x[r, width * kb:width * kb + width] = 0.0
    return x


@pytest.mark.parametrize("shape", [(1, 784, 37), (5, 784, 20), (6, 33, 9), (7, 800, 13),
                                   (10, 784, 500), (13, 64, 64), (100, 784, 60),
                                   (64, 1000, 130)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("p", [0.3, 0.9, 1.0])
def test_linear_forward_with_zero_blocks(simd_path, shape, p):
    """Zero blocks (skipped on AVX-512) give the same products as the reference,
    and the same bits as the same rows with one more zero block elsewhere in
    the batch (a tile's skip list depends on its rows) and for any thread count."""
    B, n_in, n_out = shape
    rng = np.random.default_rng(B * n_in + int(10 * p))
    x = _zero_blocks(rng, _rand(rng, B, n_in), p)
    W, b = _rand(rng, n_out, n_in), _rand(rng, n_out)
    y = linear(x, W, b)
    ref, absref = ref_linear(x, W, b, False)
    _check_close(y, ref, absref, n_in)
    for t in (2, 3):
        assert np.array_equal(linear(x, W, b, nthreads=t), y)
    if B > 1:   # row 0 alone: its own tile, its own skip list
        assert np.array_equal(linear(x[:1], W, b)[0], y[0])


def test_zero_block_skip_keeps_nan_and_inf_inputs():
    rng = np.random.default_rng(3)
    x = np.zeros((6, 784), np.float32)
    x[:, 300:310] = 1.0
    W, b = _rand(rng, 20, 784), _rand(rng, 20)
    x[2, 5] = np.nan          # in a block that is zero in every other row
    x[4, 700] = np.inf
    y = linear(x, W, b)
    assert np.isnan(y[2]).all() and not np.isfinite(y[4]).any()
    others = [0, 1, 3, 5]
    assert np.isfinite(y[others]).all()
    ref, absref = ref_linear(x[others], W, b, False)
    _check_close(y[others], ref, absref, 784)


@pytest.mark.parametrize("shape", [(1, 5, 40), (8, 100, 784), (24, 100, 784), (131, 100, 784),
                                   (474, 100, 784), (30, 700, 97), (200, 37, 50),
                                   (500, 10, 784)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("p", [0.3, 0.9, 1.0])
def test_matmul_tn_with_zero_row_segments(simd_path, shape, p):
    """dW = dy^T x with x rows holding all-zero 48-float segments (skipped on
    AVX-512): the reference result, bit-identical for any thread count, in both
    the packed (many row tiles) and the unpacked (few) panel forms, and with
    -0.0 in place of +0.0."""
    M, K, N = shape
    rng = np.random.default_rng(M * K + int(10 * p))
    A, Bm = _rand(rng, K, M), _zero_blocks(rng, _rand(rng, K, N), p, width=48)
    c = tn(A, Bm)
    ref, absref = ref_tn(A, Bm)
    _check_close(c, ref, absref, K)
    for t in (2, 3):
        assert np.array_equal(tn(A, Bm, t), c)
    negz = np.where(Bm == 0, np.float32(-0.0), Bm)
    assert np.array_equal(tn(A, negz), c)


def test_matmul_tn_skip_keeps_nan_and_inf_rows(simd_path):
    """A NaN or Inf in an otherwise zero row segment of Bm must still reach C
    (NaN * a = NaN, Inf * 0 = NaN): such a segment is not skipped."""
    rng = np.random.default_rng(4)
    A, Bm = _rand(rng, 50, 200), np.zeros((50, 784), np.float32)
    Bm[:, 300:310] = 1.0
    Bm[7, 5] = np.nan
    Bm[9, 700] = np.inf
    A[9, 3] = 0.0
    c = tn(A, Bm)
    assert np.isnan(c[:, 5]).all()
    assert np.isnan(c[3, 700]) and not np.isfinite(c[:, 700]).any()
    rest = np.ones(784, bool)
    rest[[5, 700]] = False
    assert np.isfinite(c[:, rest]).all()
    ref, absref = ref_tn(A, np.where(np.isfinite(Bm), Bm, 0.0).astype(np.float32))
    _check_close(c[:, rest], ref[:, rest], absref[:, rest], 50)


def _at_offset(a, offset_floats):
    """A C-contiguous copy of a whose data starts offset_floats past a 64-byte boundary."""
    buf = np.empty(a.size + 32, np.float32)
    start = (-(buf.ctypes.data // 4)) % 16 + offset_floats
    out = buf[start:start + a.size].reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and out.ctypes.data % 64 == 4 * offset_floats
    return out


@pytest.mark.parametrize("shape", [(100, 784, 500), (40, 500, 64), (9, 48, 40)],
                         ids=lambda s: "x".join(map(str, s)))
def test_alignment_does_not_change_bits(simd_path, shape):
    # misaligned x is copied to an aligned buffer internally: same arithmetic
    B, n_in, n_out = shape
    rng = np.random.default_rng(8)
    x, W, b = _rand(rng, B, n_in), _rand(rng, n_out, n_in), _rand(rng, n_out)
    y0 = linear(_at_offset(x, 0), _at_offset(W, 0), b)
    for ox, ow in [(4, 0), (0, 4), (3, 7), (8, 8)]:
        assert np.array_equal(linear(_at_offset(x, ox), _at_offset(W, ow), b), y0)


def test_paths_agree_closely():
    rng = np.random.default_rng(9)
    x, W, b = _rand(rng, 33, 300), _rand(rng, 70, 300), _rand(rng, 70)
    A, Bm = _rand(rng, 33, 300), _rand(rng, 300, 70)
    outs = []
    for level in (2, 1, 0):
        old = _core.set_simd_limit(level)
        try:
            outs.append((linear(x, W, b), nn(A, Bm), tn(np.ascontiguousarray(A.T), Bm)))
        finally:
            _core.set_simd_limit(old)
    for other in outs[1:]:
        for got, ref in zip(other, outs[0]):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_one_switch_caps_every_kernel():
    """set_simd_limit is the extension's only switch: it caps the dense products
    and the AVX-512 selection kernels alike, and refuses other levels."""
    old = _core.set_simd_limit(1)
    try:
        assert _core.dense_level() <= 1 and not _core.avx512_paths()
        _core.set_simd_limit(0)
        assert _core.dense_level() == 0 and not _core.avx512_paths()
        with pytest.raises(ValueError, match="level"):
            _core.set_simd_limit(3)
    finally:
        _core.set_simd_limit(old)
