"""MNIST: the IDX reader/writer, hash checks, data-directory resolution, and the real shipped data set."""

import gzip
import hashlib

import numpy as np
import pytest

from minidni.data import ChecksumError, IdxFormatError, load_mnist, read_idx, write_idx
from minidni.data import mnist as mnist_module
from minidni.data.mnist import (
    MNIST_SHA256,
    PACKAGED_DIR,
    TEST_LABELS,
    TRAIN_LABELS,
    decode_idx,
    read_sha256sums,
    resolve_mnist_dir,
)

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def full():
    """The whole MNIST training set (no validation split), loaded once for this module."""
    return load_mnist(validation=0)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("MINIDNI_DATA", raising=False)


def mnist_dir_with(tmp_path, replace=None):
    """A folder holding the four MNIST files as symlinks to the packaged ones, except `replace` {name: bytes}."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    replace = replace or {}
    for name in MNIST_SHA256:
        if name in replace:
            (folder / name).write_bytes(replace[name])
        else:
            (folder / f"{name}.gz").symlink_to(PACKAGED_DIR / f"{name}.gz")
    return folder


def uncompressed(name):
    return gzip.decompress((PACKAGED_DIR / f"{name}.gz").read_bytes())


# ----------------------------------------------------------------------------------------------------------------------
# IDX format


def test_decode_hand_written_idx():
    # magic 00 00, dtype 0x08 (uint8), ndim 2, dims 2 and 3, then six values
    raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    array = decode_idx(raw)
    assert array.dtype == np.uint8 and array.shape == (2, 3)
    np.testing.assert_array_equal(array, [[0, 1, 2], [3, 4, 5]])


def test_decode_big_endian_int32():
    raw = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (258).to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True)
    array = decode_idx(raw)
    assert array.dtype == np.int32 and array.dtype.isnative
    np.testing.assert_array_equal(array, [258, -1])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"tiny-idx3{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_write_idx_header_bytes(tmp_path):
    path = write_idx(tmp_path / "labels-idx1-ubyte", np.array([7, 1, 9], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 1, 9])


def test_write_idx_rejects_int64(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad-magic"
    path.write_bytes(bytes([0x01, 0x02, 0x08, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(IdxFormatError, match=r"bad-magic.*magic.*00 00.*01 02"):
        read_idx(path)


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "bad-code"
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(IdxFormatError, match="dtype code 0x07"):
        read_idx(path)


def test_truncated_file(tmp_path):
    raw = uncompressed(TEST_LABELS)
    path = tmp_path / TEST_LABELS
    path.write_bytes(raw[:-100])
    with pytest.raises(IdxFormatError, match=r"t10k-labels-idx1-ubyte: truncated data.*10000 bytes.*9900 bytes"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(IdxFormatError, match="truncated header"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    gz = (PACKAGED_DIR / f"{TEST_LABELS}.gz").read_bytes()
    path = tmp_path / f"{TEST_LABELS}.gz"
    path.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(IdxFormatError, match="gzip stream is truncated or corrupt"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 1, 2, 3]))
    with pytest.raises(IdxFormatError, match="1 unexpected bytes"):
        read_idx(path)


# ----------------------------------------------------------------------------------------------------------------------
# Hashes


def test_pinned_hashes_match_shipped_sums_file():
    assert read_sha256sums(PACKAGED_DIR / "SHA256SUMS.uncompressed") == MNIST_SHA256


def test_packaged_files_match_pinned_hashes():
    for name, digest in MNIST_SHA256.items():
        assert hashlib.sha256(uncompressed(name)).hexdigest() == digest, name


def test_flipped_byte_fails_hash(tmp_path):
    raw = bytearray(uncompressed(TEST_LABELS))
    raw[5000] ^= 0x01  # a label byte: the file still parses, only the hash can tell
    path = tmp_path / TEST_LABELS
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as info:
        read_idx(path, sha256=MNIST_SHA256[TEST_LABELS])
    message = str(info.value)
    assert str(path) in message and MNIST_SHA256[TEST_LABELS] in message
    assert hashlib.sha256(bytes(raw)).hexdigest() in message and "verify=False" in message


def test_corrupt_file_in_load_mnist(tmp_path, no_env):
    raw = bytearray(uncompressed(TRAIN_LABELS))
    raw[-1] ^= 0x01
    folder = mnist_dir_with(tmp_path, replace={TRAIN_LABELS: bytes(raw)})
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte"):
        load_mnist(folder)
    ds = load_mnist(folder, verify=False, validation=0)  # the user may opt out
    assert ds.train.y[-1] != uncompressed(TRAIN_LABELS)[-1]


# ----------------------------------------------------------------------------------------------------------------------
# Where the files come from


def test_missing_file_names_file_and_folder(tmp_path, no_env):
    folder = mnist_dir_with(tmp_path)
    (folder / f"{TEST_LABELS}.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(folder)
    message = str(info.value)
    assert TEST_LABELS in message and str(folder) in message and "data_dir argument" in message


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIDNI_DATA", raising=False)
    assert resolve_mnist_dir()[0] == PACKAGED_DIR
    monkeypatch.setenv("MINIDNI_DATA", str(tmp_path))
    assert resolve_mnist_dir()[0] == tmp_path / "mnist"
    assert resolve_mnist_dir(tmp_path / "elsewhere")[0] == tmp_path / "elsewhere"


def test_env_var_folder_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDNI_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MINIDNI_DATA"):
        load_mnist()
    mnist_dir_with(tmp_path)  # creates tmp_path / "mnist"
    ds = load_mnist(validation=0)
    assert ds.data_dir == tmp_path / "mnist"


def test_raw_files_are_read_too(tmp_path, no_env):
    folder = mnist_dir_with(tmp_path, replace={TEST_LABELS: uncompressed(TEST_LABELS)})  # raw, not .gz
    assert np.bincount(load_mnist(folder, validation=0).test.y).tolist() == TEST_COUNTS


# ----------------------------------------------------------------------------------------------------------------------
# The real data set


def test_shapes_dtypes_and_range(full):
    assert full.train.x.shape == (60000, 784) and full.test.x.shape == (10000, 784)
    assert full.train.x.dtype == np.float32 and full.train.y.dtype == np.int64
    assert full.val is None and len(full.train) == 60000
    assert full.train.x.min() == 0.0 and full.train.x.max() == 1.0


def test_class_counts(full):
    assert np.bincount(full.train.y, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(full.test.y, minlength=10).tolist() == TEST_COUNTS


def test_validation_split_is_seeded_and_disjoint(full, no_env):
    ds = load_mnist(validation=10000, seed=0)
    assert len(ds.train) == 50000 and len(ds.val) == 10000 and len(ds.test) == 10000
    counts = np.bincount(ds.train.y, minlength=10) + np.bincount(ds.val.y, minlength=10)
    assert counts.tolist() == TRAIN_COUNTS
    # the split is the one split_off_validation describes, rows taken from the full training set
    train_idx, val_idx = mnist_module.split_off_validation(60000, 10000, 0)
    np.testing.assert_array_equal(ds.val.x, full.train.x[val_idx])
    np.testing.assert_array_equal(ds.train.y, full.train.y[train_idx])
    assert np.intersect1d(train_idx, val_idx).size == 0
    other = mnist_module.split_off_validation(60000, 10000, 1)[1]
    assert not np.array_equal(other, val_idx)


def test_standardize_uses_training_statistics(no_env):
    ds = load_mnist(validation=0, standardize=True)
    assert ds.mean == pytest.approx(0.1307, abs=1e-4) and ds.std == pytest.approx(0.3081, abs=1e-4)
    assert abs(float(ds.train.x.mean())) < 1e-4 and float(ds.train.x.std()) == pytest.approx(1.0, abs=1e-4)


def test_repeat_loads_hit_the_cache_and_return_fresh_arrays(full, no_env):
    before = mnist_module._read_cached.cache_info().hits
    again = load_mnist(validation=0, dtype=np.float64)
    assert mnist_module._read_cached.cache_info().hits >= before + 4
    assert again.train.x.dtype == np.float64
    again.train.x[0] = 5.0  # the caller's arrays are its own
    assert load_mnist(validation=0).train.x[0].max() <= 1.0


def test_bad_arguments(no_env):
    with pytest.raises(ValueError, match="validation must be between 0 and 59999"):
        load_mnist(validation=60000)
    with pytest.raises(TypeError, match="floating"):
        load_mnist(dtype=np.int32)
