"""Build and threading configuration: show_config(), set/get_num_threads, and a
guard that fails when OpenMP was silently lost from the build."""
import os

import numpy as np
import pytest

import meprop_cpu as mp


@pytest.fixture
def restore_threads():
    old = mp.get_num_threads()
    yield old
    mp.set_num_threads(old)
    assert mp.get_num_threads() == old


def test_show_config_keys_and_types():
    cfg = mp.show_config()
    for key in ("version", "openmp", "num_threads", "simd", "blas"):
        assert key in cfg, key
    assert cfg["version"] == mp.__version__
    assert isinstance(cfg["openmp"], bool)
    assert cfg["openmp"] == mp.openmp_enabled()
    assert isinstance(cfg["num_threads"], int) and cfg["num_threads"] >= 1
    assert cfg["num_threads"] == mp.get_num_threads()
    assert isinstance(cfg["simd"], str) and cfg["simd"]
    assert isinstance(cfg["blas"], dict)
    assert isinstance(cfg.get("parallel_min_work"), int) and cfg["parallel_min_work"] >= 1


def test_show_config_print(capsys):
    cfg = mp.show_config(print_out=True)
    out = capsys.readouterr().out
    for key in cfg:
        assert key in out


def test_set_get_num_threads_round_trip(restore_threads):
    for n in (1, 2, 3, 7, np.int64(2)):
        mp.set_num_threads(n)
        want = int(n) if mp.openmp_enabled() else 1
        assert mp.get_num_threads() == want
        assert isinstance(mp.get_num_threads(), int)
        assert mp.show_config()["num_threads"] == want


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-2, ValueError), (5000, ValueError),
                                     ("2", TypeError), (2.0, TypeError), (True, TypeError),
                                     (None, TypeError)])
def test_set_num_threads_rejects_bad_values(restore_threads, bad, exc):
    before = mp.get_num_threads()
    with pytest.raises(exc, match=r"\bn\b"):
        mp.set_num_threads(bad)
    assert mp.get_num_threads() == before


def test_openmp_present_in_build():
    """This project's machines have a compiler with OpenMP: a build without it
    is a regression (set MEPROP_ALLOW_NO_OPENMP=1 where a serial build is intended)."""
    if os.environ.get("MEPROP_ALLOW_NO_OPENMP") == "1":
        pytest.skip("MEPROP_ALLOW_NO_OPENMP=1: a serial build is allowed here")
    assert mp.show_config()["openmp"], (
        "meprop_cpu was built without OpenMP; rebuild with `pip install -e . "
        "--no-build-isolation` using a compiler that supports -fopenmp")
    assert mp.openmp_enabled()
