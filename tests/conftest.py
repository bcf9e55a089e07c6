"""pytest setup shared by the test files: nothing but assertion rewriting.

kernel_helpers.py holds the helpers of the kernel test files (assert_bit_equal,
the guarded workspace checks); registering it here keeps pytest's detailed
assertion messages for them, as when they lived in a test module. Fixtures
are deliberately not defined here: an autouse fixture in conftest.py would
apply to every test file (kernel_helpers.simd_path is imported by the files
that want it)."""
import pytest

pytest.register_assert_rewrite("kernel_helpers")


@pytest.fixture
def thread_state():
    """Restore the library's thread setting (count and automatic flag) after a test."""
    from meprop_cpu import _config
    saved = dict(_config._state)
    yield
    _config._state.update(saved)
