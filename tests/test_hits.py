"""meSimp hit counts: the `hits` array that topk_rows accumulates onto (a
selected entry counts only when it is non-zero; nothing is counted when the
call fails). The counts of every selection are also checked against
reference.ref_hits in test_topk.py (check_topk_rows, check_topk_mask_rows)
and test_nn_linear.py. Every test runs on the native and the portable kernels."""
import numpy as np
import pytest

from meprop_cpu import kernels as K

from kernel_helpers import simd_path  # noqa: F401  (autouse: native + portable)


def test_topk_rows_hits_accumulate_and_skip_zeros():
    g = np.array([[3, 0, -0.0, 1],
                  [0, 2, -0.0, 0],
                  [0, 0, 0, 0]], dtype=np.float32)
    hits = np.zeros(4, dtype=np.int64)
    K.topk_rows(g, 2, hits=hits)
    np.testing.assert_array_equal(hits, [1, 1, 0, 1])
    K.topk_rows(g, 2, hits=hits)
    np.testing.assert_array_equal(hits, [2, 2, 0, 2])
    K.topk_rows(g, 4, hits=hits)       # zeros selected but never counted
    np.testing.assert_array_equal(hits, [3, 3, 0, 3])


def test_topk_rows_hits_untouched_on_error():
    g = np.ones((2, 5), dtype=np.float32)
    g[1, 3] = np.nan
    hits = np.zeros(5, dtype=np.int64)
    with pytest.raises(ValueError, match="g"):
        K.topk_rows(g, 2, hits=hits)
    assert not hits.any()
