"""BatchIterator: coverage of every example, seeded per-epoch orders, buffer reuse, and bit-identical resume."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidni.data import BatchIterator


def make_data(n=23, features=(3, 2)):
    x = np.arange(n * int(np.prod(features)), dtype=np.float32).reshape(n, *features)
    y = np.arange(n, dtype=np.int64)  # y[i] = i, so a batch's labels are its example indices
    return x, y


def one_epoch(it):
    """The batches of one epoch, copied (the iterator reuses its buffers)."""
    return [(xb.copy(), yb.copy()) for xb, yb in it]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), drop_last=st.booleans(), shuffle=st.booleans())
def test_every_example_once_per_epoch(n, batch_size, drop_last, shuffle):
    x, y = make_data(n)
    it = BatchIterator(x, y, batch_size, shuffle=shuffle, seed=3, drop_last=drop_last)
    batches = one_epoch(it)
    assert len(batches) == len(it) == (n // batch_size if drop_last else -(-n // batch_size))
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], dtype=np.int64)
    assert len(np.unique(seen)) == len(seen) == (n // batch_size * batch_size if drop_last else n)
    for xb, yb in batches:
        np.testing.assert_array_equal(xb, x[yb])  # inputs and labels travel together
        assert len(yb) <= batch_size
    assert it.epoch == 1 and it.batch == 0


def test_same_seed_same_batches_and_new_order_each_epoch():
    x, y = make_data(50)
    a, b = BatchIterator(x, y, 8, seed=7), BatchIterator(x, y, 8, seed=7)
    ea0, ea1 = one_epoch(a), one_epoch(a)
    eb0, eb1 = one_epoch(b), one_epoch(b)
    for (xa, ya), (xb, yb) in zip(ea0 + ea1, eb0 + eb1):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    order0 = np.concatenate([yb for _, yb in ea0])
    order1 = np.concatenate([yb for _, yb in ea1])
    assert not np.array_equal(order0, order1)
    other_seed = np.concatenate([yb for _, yb in one_epoch(BatchIterator(x, y, 8, seed=8))])
    assert not np.array_equal(order0, other_seed)


def test_order_depends_only_on_seed_and_epoch():
    x, y = make_data(30)
    it = BatchIterator(x, y, 4, seed=1)
    third = it.order(2).copy()
    np.testing.assert_array_equal(BatchIterator(x, y, 4, seed=1).order(2), third)
    np.testing.assert_array_equal(third, np.random.default_rng([1, 2]).permutation(30))


def test_no_shuffle_is_file_order():
    x, y = make_data(10)
    batches = one_epoch(BatchIterator(x, y, 4, shuffle=False))
    assert [yb.tolist() for _, yb in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_resume_mid_epoch_gives_identical_remaining_batches():
    x, y = make_data(37)
    reference = BatchIterator(x, y, 5, seed=11)
    expected = [tuple(a.copy() for a in reference.next_batch()) for _ in range(25)]  # crosses 3 epoch boundaries

    it = BatchIterator(x, y, 5, seed=11)
    for _ in range(10):
        it.next_batch()
    state = it.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 2)

    resumed = BatchIterator(x, y, 5, seed=11)
    resumed.load_state_dict(dict(state))
    for xe, ye in expected[10:]:
        xb, yb = resumed.next_batch()
        np.testing.assert_array_equal(xb, xe)
        np.testing.assert_array_equal(yb, ye)


def test_resume_inside_a_for_loop():
    x, y = make_data(20)
    it = BatchIterator(x, y, 3, seed=2)
    full = one_epoch(BatchIterator(x, y, 3, seed=2))
    for k, _ in enumerate(it):
        if k == 2:
            state = it.state_dict()  # three batches consumed
            break
    resumed = BatchIterator(x, y, 3, seed=2)
    resumed.load_state_dict(state)
    rest = one_epoch(resumed)
    assert len(rest) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(rest, full[3:]):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    assert resumed.epoch == 1


def test_state_saved_after_last_batch_starts_next_epoch():
    x, y = make_data(9)
    it = BatchIterator(x, y, 3, seed=0)
    for _ in range(3):
        it.next_batch()
    assert it.state_dict()["batch"] == 3  # the epoch is used up but not yet rolled over
    resumed = BatchIterator(x, y, 3, seed=0)
    resumed.load_state_dict(it.state_dict())
    batches = one_epoch(resumed)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), resumed.order(1))


def test_buffers_are_reused_or_fresh():
    x, y = make_data(12)
    it = BatchIterator(x, y, 4, seed=0)
    x1, _ = it.next_batch()
    x2, _ = it.next_batch()
    assert np.shares_memory(x1, x2)  # one buffer: a batch is valid until the next one
    fresh = BatchIterator(x, y, 4, seed=0, reuse_buffers=False)
    f1, _ = fresh.next_batch()
    f2, _ = fresh.next_batch()
    assert not np.shares_memory(f1, f2) and not np.shares_memory(f1, x)


def test_load_state_dict_checks_settings():
    x, y = make_data(12)
    state = BatchIterator(x, y, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="saved with seed=0 but this iterator has seed=1"):
        BatchIterator(x, y, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="0 <= batch <= 3"):
        BatchIterator(x, y, 4, seed=0).load_state_dict({"epoch": 0, "batch": 9})


def test_bad_inputs_have_clear_messages():
    x, y = make_data(12)
    with pytest.raises(ValueError, match=r"x with 12 .* y with 11"):
        BatchIterator(x, y[:11], 4)
    with pytest.raises(ValueError, match="positive integer"):
        BatchIterator(x, y, 0)
    with pytest.raises(ValueError, match="no batches"):
        BatchIterator(x, y, 20, drop_last=True).next_batch()


def test_split_unpacks_and_counts_examples():
    from minidni.data import Split

    split = Split(np.zeros((5, 2)), np.arange(5))
    x, y = split
    assert x.shape == (5, 2) and len(split) == 5
    with pytest.raises(ValueError, match="x has 5 examples but y has 4"):
        Split(np.zeros((5, 2)), np.arange(4))
