"""pytest setup shared by the test files: nothing but assertion rewriting.

kernel_helpers.py holds the helpers of the kernel test files (assert_bit_equal,
the guarded workspace checks); registering it here keeps pytest's detailed
assertion messages for them, as when they lived in a test module. Fixtures
are deliberately not defined here: an autouse fixture in conftest.py would
apply to every test file (kernel_helpers.simd_path is imported by the files
that want it)."""
import pytest

pytest.register_assert_rewrite("kernel_helpers")
