"""Tests of the bundled data-set loaders."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from sklearn_influence.datasets import load_digits_split


def test_split_matches_the_bundled_digits():
    digits = load_digits()
    data = load_digits_split(n_train=700, n_test=300, random_state=3)
    assert data.X_train.shape == (700, 64) and data.X_test.shape == (300, 64)
    assert data.images_train.shape == (700, 8, 8) and data.images_test.shape == (300, 8, 8)
    # features are the pixels scaled from 0..16 to [0, 1], in the stated positions
    np.testing.assert_array_equal(data.X_train, digits.data[data.train_indices] / 16.0)
    np.testing.assert_array_equal(data.X_test, digits.data[data.test_indices] / 16.0)
    np.testing.assert_array_equal(data.images_train.reshape(700, 64), data.X_train)
    np.testing.assert_array_equal(data.y_train, digits.target[data.train_indices])
    np.testing.assert_array_equal(data.y_test, digits.target[data.test_indices])
    assert data.X_train.min() == 0.0 and data.X_train.max() == 1.0
    assert not set(data.train_indices) & set(data.test_indices)
    assert len(data.flipped_indices) == 0
    np.testing.assert_array_equal(data.target_names, np.arange(10))


def test_default_test_set_is_the_rest():
    data = load_digits_split(n_train=1500)
    assert len(data.y_test) == 1797 - 1500


def test_split_is_seeded():
    first = load_digits_split(n_train=100, flip_fraction=0.2, random_state=7)
    second = load_digits_split(n_train=100, flip_fraction=0.2, random_state=7)
    other = load_digits_split(n_train=100, flip_fraction=0.2, random_state=8)
    np.testing.assert_array_equal(first.train_indices, second.train_indices)
    np.testing.assert_array_equal(first.y_train, second.y_train)
    assert not np.array_equal(first.train_indices, other.train_indices)


def test_flipped_labels_change_class_exactly_where_reported():
    data = load_digits_split(n_train=1000, flip_fraction=0.1, random_state=0)
    changed = np.flatnonzero(data.y_train != data.y_train_clean)
    np.testing.assert_array_equal(changed, data.flipped_indices)
    assert len(changed) == 100
    assert set(np.unique(data.y_train)) <= set(range(10))
    # the new class is drawn uniformly among the 9 others: over many flips every offset occurs
    many = load_digits_split(n_train=1700, flip_fraction=0.9, random_state=0)
    offsets = (many.y_train - many.y_train_clean)[many.flipped_indices] % 10
    counts = np.bincount(offsets, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.6 * counts[1:].mean()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_train": 0}, ValueError, "n_train=0 is out of range.*between 1 and 1796"),
        ({"n_train": 1797}, ValueError, "n_train=1797 is out of range"),
        ({"n_train": 1700, "n_test": 200}, ValueError, "n_test=200 is out of range.*1 and 97"),
        ({"n_train": 10.5}, TypeError, "n_train must be an integer"),
        ({"flip_fraction": 1.0}, ValueError, r"flip_fraction must be a number in \[0, 1\)"),
        ({"flip_fraction": -0.1}, ValueError, "flip_fraction must be"),
        ({"flip_fraction": "0.1"}, ValueError, "flip_fraction must be"),
    ],
)
def test_bad_arguments_are_explained(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_digits_split(**kwargs)
