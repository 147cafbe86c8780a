"""CIFAR-10 reader, tested on a tiny synthetic data set written in the official python-pickle layout."""

import pickle
import tarfile

import numpy as np
import pytest

from minidni.data import load_cifar10
from minidni.data.cifar10 import CIFAR10_FOLDER, CIFAR10_TARBALL, TEST_BATCH, TRAIN_BATCHES, write_cifar10_batches

PER_BATCH = 6  # 5 training batches -> 30 training images
TEST_SIZE = 4


@pytest.fixture
def raw():
    """Synthetic batches {name: (data uint8 (N, 3072), labels (N,))}."""
    rng = np.random.default_rng(0)
    batches = {}
    for k, name in enumerate(TRAIN_BATCHES):
        labels = (np.arange(PER_BATCH) + k) % 10
        batches[name] = (rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8), labels)
    batches[TEST_BATCH] = (rng.integers(0, 256, size=(TEST_SIZE, 3072), dtype=np.uint8), np.arange(TEST_SIZE))
    return batches


@pytest.fixture
def folder(tmp_path, raw):
    return write_cifar10_batches(tmp_path / CIFAR10_FOLDER, raw)


@pytest.fixture
def tarball(tmp_path, folder):
    path = tmp_path / "archive" / CIFAR10_TARBALL
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR10_FOLDER)
    return path


def train_data(raw):
    return (np.concatenate([raw[n][0] for n in TRAIN_BATCHES]), np.concatenate([raw[n][1] for n in TRAIN_BATCHES]))


def test_folder_shapes_layout_and_range(folder, raw):
    ds = load_cifar10(folder, validation=0)
    assert ds.train.x.shape == (30, 3, 32, 32) and ds.test.x.shape == (TEST_SIZE, 3, 32, 32)
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int64 and ds.val is None
    data, labels = train_data(raw)
    np.testing.assert_array_equal(ds.train.y, labels)
    # row layout: 1024 red, 1024 green, 1024 blue, each 32x32 row-major
    i, c, h, w = 7, 2, 5, 30
    assert ds.train.x[i, c, h, w] == np.float32(data[i, c * 1024 + h * 32 + w] / 255.0)
    assert 0.0 <= ds.train.x.min() and ds.train.x.max() <= 1.0
    assert np.bincount(ds.train.y, minlength=10).tolist() == np.bincount(labels, minlength=10).tolist()
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10


def test_tarball_matches_folder(folder, tarball):
    a = load_cifar10(folder, validation=0)
    b = load_cifar10(tarball, validation=0)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)


def test_parent_folder_holding_folder_or_tarball(folder, tarball):
    assert load_cifar10(folder.parent, validation=0).source == folder
    assert load_cifar10(tarball.parent, validation=0).source == tarball


def test_validation_split(folder, raw):
    ds = load_cifar10(folder, validation=10, seed=3)
    assert len(ds.train) == 20 and len(ds.val) == 10
    full = load_cifar10(folder, validation=0)
    rows = {full.train.x[i].tobytes(): i for i in range(30)}
    train_rows = {rows[x.tobytes()] for x in ds.train.x}
    val_rows = {rows[x.tobytes()] for x in ds.val.x}
    assert train_rows.isdisjoint(val_rows) and len(train_rows | val_rows) == 30
    again = load_cifar10(folder, validation=10, seed=3)
    np.testing.assert_array_equal(again.val.x, ds.val.x)
    other = load_cifar10(folder, validation=10, seed=4)
    assert not np.array_equal(other.val.y, ds.val.y) or not np.array_equal(other.val.x, ds.val.x)


def test_per_channel_standardisation(folder):
    ds = load_cifar10(folder, validation=5, standardize=True)
    assert ds.mean.shape == (3,) and ds.std.shape == (3,)
    np.testing.assert_allclose(ds.train.x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.std(axis=(0, 2, 3)), 1.0, atol=1e-5)


def test_missing_path_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"looked for .*data_batch_1.*cifar-10-batches-py"):
        load_cifar10(tmp_path)
    monkeypatch.delenv("MINIDNI_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="MINIDNI_DATA is not set"):
        load_cifar10()


def test_env_var_root(folder, monkeypatch):
    monkeypatch.setenv("MINIDNI_DATA", str(folder.parent))
    assert len(load_cifar10(validation=0).train) == 30


def test_missing_batch_names_it(folder):
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(folder)


def test_truncated_tarball(tarball):
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="incomplete"):
        load_cifar10(tarball)


def test_pickle_that_runs_code_is_refused(folder):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar10(folder)


def test_wrong_shape_is_reported(folder):
    bad = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: expected b'data' uint8 of shape \(N, 3072\)"):
        load_cifar10(folder)


def test_too_large_validation(folder):
    with pytest.raises(ValueError, match="between 0 and 29"):
        load_cifar10(folder)  # the default 5000 is for the real 50000-image set


def test_numpy1_module_names_in_pickles_are_accepted(folder, raw):
    # The official files (and anything pickled under NumPy 1) name numpy.core.multiarray, which NumPy 2 renamed.
    path = folder / "test_batch"
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data  # protocol 2 stores globals as plain text
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    ds = load_cifar10(folder, validation=0)
    np.testing.assert_array_equal(ds.test.y, raw[TEST_BATCH][1])
