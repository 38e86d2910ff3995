"""Gauss-Newton products are batched over training rows so that the vmapped forward and
reverse passes stay within scikit-learn's ``working_memory``; the batching changes nothing
but the summation order."""

import numpy as np
import sklearn
import torch
from skorch import NeuralNetClassifier

from sklearn_influence._adapters import make_adapter
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gauss_newton import MIN_PRODUCT_ROWS, activation_bytes_per_row
from sklearn_influence.datasets import TanhMLP


def _curvature(hidden, n_rows=150):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, 8))
    y = np.arange(n_rows) % 3
    net = NeuralNetClassifier(
        TanhMLP,
        module__in_features=8,
        module__hidden=hidden,
        module__out_features=3,
        module__dtype=torch.float64,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=2,
        train_split=None,
        verbose=0,
    ).fit(X, y)
    adapter = make_adapter(net, n_rows, torch.device("cpu"))
    theta, inputs = adapter.parameters(), adapter.inputs(X)
    # the matrix-free products (stored Jacobians would answer every product here)
    return make_curvature("gauss_newton", adapter, theta, inputs, None, batch_size=1024,
                          options={"jacobian_products": False})  # fmt: skip


def test_activation_bytes_grow_with_the_width_not_the_rows():
    """Per row, a wider hidden layer saves proportionally more (the weights, saved once
    per pass whatever the rows, do not count)."""
    narrow, wide = _curvature(4), _curvature(40)
    per_row = [activation_bytes_per_row(c.adapter, c.theta, c.inputs) for c in (narrow, wide)]
    # tanh MLP: input, hidden pre-activation and activation, output: (8 + 2h + 3) doubles
    assert per_row[0] < per_row[1] < 10 * per_row[0]
    assert per_row[1] < 8 * (8 + 3 * 40 + 3) * 2


def test_products_in_smaller_batches_equal_one_batch():
    curvature = _curvature(16)
    vectors = torch.randn(
        5, curvature.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert curvature.product_rows(len(vectors)) == curvature.batch_size  # the default 1 GiB
    whole = curvature.matmul(vectors)
    with sklearn.config_context(working_memory=1e-6):  # 1 byte: the floor of 64 rows
        rows = curvature.product_rows(len(vectors))
        batched = curvature.matmul(vectors)
    assert rows == MIN_PRODUCT_ROWS  # three batches of 64, 64 and 22 rows
    # independent truth: the dense Gauss-Newton matrix from the output Jacobians
    dense = curvature.dense()
    np.testing.assert_allclose(batched.numpy(), (vectors @ dense).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(batched.numpy(), whole.numpy(), rtol=1e-10, atol=1e-12)


def test_rows_follow_the_working_memory_between_the_floor_and_batch_size():
    """3 · n_vectors · rows · (activation bytes per row) ≤ working_memory / 2."""
    curvature = _curvature(16)
    per_row = activation_bytes_per_row(curvature.adapter, curvature.theta, curvature.inputs)
    working_memory = 200 * 3 * 5 * per_row * 2 / 2**20  # MiB for 200 rows of 5 vectors
    with sklearn.config_context(working_memory=working_memory):
        assert curvature.product_rows(5) == 200
        assert curvature.product_rows(10) == 100
        assert curvature.product_rows(50) == MIN_PRODUCT_ROWS  # 20 rows would fit: floor
