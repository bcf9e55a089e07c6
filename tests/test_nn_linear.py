"""meprop_cpu.nn.Linear on top of the kernels: its backward switches to the
masked dense-product form above k = n_out / 4 and, in either form, gives the
gradient and the meSimp counts of the naive references (tests/reference.py).
Runs on the native and the portable kernels (the `simd_path` fixture of
kernel_helpers.py). The wider Linear / MLP tests are in test_nn.py."""
import numpy as np

from meprop_cpu.nn import Linear

from kernel_helpers import make_values
from kernel_helpers import simd_path  # noqa: F401  (autouse: native + portable)
from reference import assert_close_sum, ref_hits, ref_sparse_backward, ref_topk_rows


def test_linear_backward_uses_the_masked_form_above_a_quarter():
    rng = np.random.default_rng(0)
    x = make_values(rng, (8, 30), "normal")
    for k, factored in ((10, True), (11, False)):       # n_out = 40: the rule is 4 k > 40
        lin = Linear(30, 40, k=k, mode="topk", seed=1)
        lin.track_hits = True
        lin.forward(x)
        dy = make_values(rng, (8, 40), "zeros")
        dx = lin.backward(dy)
        assert lin.W.grad.factored is factored and dx.shape == (8, 30)
        # either form: the gradient and the meSimp counts of the selected pairs
        idx, val = ref_topk_rows(dy, k)
        np.testing.assert_array_equal(lin.hits, ref_hits(idx, val, 40))
        assert lin.seen == 8
        rdx, rows, rvalues, absdx, absvalues = ref_sparse_backward(x, lin.W.data, idx, val)
        np.testing.assert_array_equal(lin.W.grad.rows, rows)
        assert_close_sum(lin.W.grad.values, rvalues, absvalues, 8, "dW values")
        assert_close_sum(dx, rdx, absdx, k, "dx")
