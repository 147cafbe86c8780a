"""Copy and Repeat Copy generators (Graves et al. 2014): shapes, the episode layout, masks and seeding."""

import numpy as np
import pytest

from minidni.data import copy_task, repeat_copy_task


def test_copy_fixed_length_layout():
    batch = copy_task(5, rng=0, width=8, length=6)
    T = 2 * 6 + 1
    assert batch.inputs.shape == (T, 5, 9) and batch.targets.shape == (T, 5, 8) and batch.mask.shape == (T, 5)
    assert batch.inputs.dtype == batch.targets.dtype == batch.mask.dtype == np.float32
    assert batch.lengths.tolist() == [6] * 5 and batch.repeats is None
    bits = batch.inputs[:6, :, :8]
    assert set(np.unique(bits)) <= {0.0, 1.0}
    np.testing.assert_array_equal(batch.targets[7:13], bits)  # the copy comes after the delimiter
    np.testing.assert_array_equal(batch.inputs[6, :, 8], 1.0)  # delimiter at t = L
    assert batch.inputs[:, :, 8].sum() == 5  # and nowhere else
    np.testing.assert_array_equal(batch.mask[:7], 0.0)
    np.testing.assert_array_equal(batch.mask[7:], 1.0)
    assert batch.inputs[7:].sum() == 0 and batch.targets[:7].sum() == 0


def test_copy_variable_lengths_are_padded():
    batch = copy_task(64, rng=np.random.default_rng(1), width=4, length=(1, 10))
    L = batch.lengths
    assert L.min() >= 1 and L.max() <= 10 and len(np.unique(L)) > 1
    assert batch.num_steps == 2 * L.max() + 1 and batch.batch_size == 64
    for b, l in enumerate(L):
        np.testing.assert_array_equal(batch.targets[l + 1 : 2 * l + 1, b], batch.inputs[:l, b, :4])
        assert batch.inputs[l, b, 4] == 1.0
        assert batch.mask[:, b].sum() == l and batch.mask[l + 1 : 2 * l + 1, b].all()
        assert batch.inputs[l + 1 :, b].sum() == 0 and batch.targets[2 * l + 1 :, b].sum() == 0


def test_repeat_copy_layout():
    batch = repeat_copy_task(16, rng=3, width=5, length=(2, 4), repeats=(1, 3))
    w = 5
    assert batch.inputs.shape[1:] == (16, w + 2) and batch.targets.shape[1:] == (16, w + 1)
    assert batch.num_steps == int((batch.lengths * (batch.repeats + 1) + 2).max())
    for b, (l, r) in enumerate(zip(batch.lengths, batch.repeats)):
        vectors = batch.inputs[:l, b, :w]
        end = l + 1 + r * l
        np.testing.assert_array_equal(batch.targets[l + 1 : end, b, :w], np.tile(vectors, (r, 1)))
        assert batch.inputs[l, b, w] == 1.0
        assert batch.inputs[l, b, w + 1] == pytest.approx(r / 3)  # normalised by the largest repeat count
        assert batch.targets[end, b, w] == 1.0 and batch.targets[:, b, w].sum() == 1.0
        assert batch.mask[:, b].sum() == r * l + 1 and batch.mask[l + 1 : end + 1, b].all()


def test_repeat_scale_is_fixed_when_given():
    batch = repeat_copy_task(8, rng=0, length=3, repeats=(1, 2), repeat_scale=10)
    for b, (l, r) in enumerate(zip(batch.lengths, batch.repeats)):
        assert batch.inputs[l, b, -1] == pytest.approx(r / 10)


@pytest.mark.parametrize("task", [copy_task, repeat_copy_task])
def test_seeding(task):
    a, b = task(8, rng=42), task(8, rng=np.random.default_rng(42))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.mask, b.mask)
    c = task(8, rng=43)
    assert a.inputs.shape != c.inputs.shape or not np.array_equal(a.inputs, c.inputs)
    rng = np.random.default_rng(0)
    first, second = task(8, rng=rng), task(8, rng=rng)  # a shared generator moves on
    assert first.inputs.shape != second.inputs.shape or not np.array_equal(first.inputs, second.inputs)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"length must be an int >= 1 or a pair \(lo, hi\)"):
        copy_task(4, rng=0, length=(5, 2))
    with pytest.raises(ValueError, match="repeats"):
        repeat_copy_task(4, rng=0, repeats=0)
    with pytest.raises(TypeError, match="np.random.Generator"):
        copy_task(4, rng=np.random.RandomState(0))
