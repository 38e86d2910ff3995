"""Per-example gradients and measurements: closed form for linear models, else :mod:`torch.func`.

The measurement of a query is its loss L(h(θ, x_q), t_q); with ``targets=None`` it is the
model's prediction itself (single-output regressors: ``adapter.prediction``, the output, or
μ = link⁻¹(η) for a GLM). Classifier queries without a label use the
predicted class as target, resolved once at θˢ by :func:`resolve_query_targets`.
"""

import torch
from torch.func import grad, vmap


def batch_slices(n, batch_size):
    """Consecutive slices covering ``range(n)`` in blocks of ``batch_size``."""
    batch_size = max(1, int(batch_size))
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def measure(adapter, theta, inputs, targets):
    """Measurement f(θ) of each row: its loss, or its prediction when ``targets`` is None."""
    outputs = adapter.outputs(theta, inputs)
    if targets is None:
        return adapter.prediction(outputs)
    return adapter.loss(outputs, targets)


def resolve_query_targets(adapter, theta, inputs, targets):
    """Targets for the measurement: the given ones, else the prediction (classifiers)."""
    if targets is not None:
        return targets
    if adapter.is_classifier:
        with torch.no_grad():
            return adapter.loss.predicted_targets(adapter.outputs(theta, inputs))
    if adapter.n_outputs != 1 and not getattr(adapter, "single_prediction", False):
        raise ValueError(
            f"Without y_test the measurement of a regressor is its prediction, which needs a "
            f"single output, but this model has {adapter.n_outputs}; pass y_test to measure "
            "the loss instead."
        )
    return None


def per_example_gradients(adapter, theta, inputs, targets, batch_size=1024):
    """∇_θ f_i(θ) for every row i, shape (n, p).

    For a model linear in its parameters (``adapter.linear_layout``: h = W̃ z̃, θ = W̃.ravel()
    row-major) the gradient is the outer product (∂f/∂h)_i ⊗ z̃_i, with ∂f/∂h the loss's
    :meth:`~sklearn_influence._adapters._losses.OutputLoss.output_gradient` (or e₀ when the
    measurement is the output itself): no per-example autodiff. Otherwise each row is
    differentiated with vmap(grad), in batches of ``batch_size`` rows.
    """
    if getattr(adapter, "linear_layout", False):
        return _linear_gradients(adapter, theta, inputs, targets)
    return _vmap_gradients(adapter, theta, inputs, targets, batch_size)


def output_gradients(adapter, theta, inputs, targets):
    """∂f_i/∂h at the outputs of every row, shape (n, k): the loss's output gradient, or the
    prediction's (``adapter.prediction_gradient``: e₀ when the prediction is the first output)
    when ``targets`` is None."""
    outputs = adapter.outputs(theta, inputs)
    if targets is None:
        return adapter.prediction_gradient(outputs)
    return adapter.loss.output_gradient(outputs, targets)


def _linear_gradients(adapter, theta, inputs, targets):
    """(∂f/∂h)_i ⊗ z̃_i for h = W̃ z̃, flattened like θ = W̃.ravel(): shape (n, k · width)."""
    residual = output_gradients(adapter, theta, inputs, targets)  # (n, k)
    n, k = residual.shape
    if k == 1:
        return inputs * residual
    return (residual.unsqueeze(2) * inputs.unsqueeze(1)).reshape(n, k * inputs.shape[1])


def _vmap_gradients(adapter, theta, inputs, targets, batch_size):
    """∇_θ f_i(θ) for every row by vmap(grad) over single-row measurements, in batches."""

    def single(theta_, x, t):
        t = None if t is None else t.unsqueeze(0)
        return measure(adapter, theta_, x.unsqueeze(0), t)[0]

    gradient = vmap(grad(single), in_dims=(None, 0, None if targets is None else 0))
    blocks = [
        gradient(theta, inputs[rows], None if targets is None else targets[rows])
        for rows in batch_slices(len(inputs), batch_size)
    ]
    if not blocks:
        return theta.new_zeros((0, theta.numel()))
    return torch.cat(blocks)
