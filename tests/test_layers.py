"""Layer structure of the adapters and the recorded layer inputs / output gradients:
Σ_b g_b a_bᵀ must be autograd's gradient of each layer's weight slice of θ."""

import numpy as np
import pytest
import torch
from _nets import TanhMLP
from sklearn.linear_model import LogisticRegression, Ridge
from skorch import NeuralNetClassifier

from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._skorch import fit_skorch
from sklearn_influence._engine._layers import (
    layer_inputs_and_output_gradients,
    unfold_conv_inputs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyConvNet(torch.nn.Module):
    """conv ('same') → tanh → strided conv → LayerNorm → linear: two conv layers, one linear
    layer and a LayerNorm whose parameters no layer covers."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding="same", dtype=torch.float64)
        self.down = torch.nn.Conv2d(2, 3, 2, stride=2, dtype=torch.float64)
        self.norm = torch.nn.LayerNorm(12, dtype=torch.float64)
        self.head = torch.nn.Linear(12, 3, dtype=torch.float64)

    def forward(self, X):
        out = self.down(torch.tanh(self.conv(X)))
        return self.head(self.norm(torch.tanh(out).flatten(1)))


def _skorch_adapter(module, X, y, **params):
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        max_epochs=2,
        lr=0.1,
        verbose=0,
        **params,
    )
    state = fit_skorch(net, X, y)
    return make_adapter(net, len(X), torch.device("cpu"), state)


def _check_partition(structure):
    """Layer weights, biases and uncovered parameters tile range(p) exactly once."""
    spans = [layer.weight for layer in structure.layers]
    spans += [layer.bias for layer in structure.layers if layer.bias is not None]
    spans += [block.span for block in structure.uncovered]
    covered = np.zeros(structure.n_params, dtype=int)
    for span in spans:
        covered[span] += 1
    assert np.all(covered == 1)


def _check_gradients(adapter, inputs, seed=0):
    """Σ_b g_b a_bᵀ (unfolded for convolutions) and Σ g_b equal autograd's slices of ∇θ⟨u, h⟩."""
    theta = adapter.parameters()
    generator = torch.Generator().manual_seed(seed)
    n_outputs = adapter.outputs(theta, inputs[:1]).shape[1]
    u = torch.randn(len(inputs), n_outputs, generator=generator, dtype=theta.dtype)
    expected = torch.func.grad(lambda t: (adapter.outputs(t, inputs) * u).sum())(theta)
    tapes = layer_inputs_and_output_gradients(adapter, theta, inputs, u)
    structure = adapter.layer_structure()
    assert [tape.layer for tape in tapes] == list(structure.layers)
    for tape in tapes:
        layer = tape.layer
        ((a,), (g,)) = tape.inputs, tape.output_gradients
        out_features = layer.weight_shape[0]
        if layer.kind == "linear":
            a, g = a.reshape(-1, a.shape[-1]), g.reshape(-1, out_features)
            weight = g.T @ a
            bias = g.sum(0)
        else:
            patches = unfold_conv_inputs(layer, a)  # (n, C·kh·kw, L)
            g = g.reshape(len(g), out_features, -1)  # (n, out, L)
            weight = torch.einsum("bol,bcl->oc", g, patches)
            bias = g.sum((0, 2))
        torch.testing.assert_close(
            weight.reshape(-1), expected[layer.weight], rtol=1e-10, atol=1e-12
        )
        if layer.bias is not None:
            torch.testing.assert_close(bias, expected[layer.bias], rtol=1e-10, atol=1e-12)
    return structure


@pytest.mark.parametrize(
    "model", [Ridge(alpha=1.0), LogisticRegression(), Ridge(fit_intercept=False)]
)
def test_a_linear_model_is_one_layer_over_theta(model):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    adapter = make_adapter(model.fit(X, y), 30, torch.device("cpu"))
    structure = adapter.layer_structure()
    (layer,) = structure.layers
    assert layer.kind == "linear" and layer.bias is None and layer.module is None
    assert layer.weight == slice(0, adapter.parameters().numel()) and not structure.uncovered
    assert layer.weight_shape == (adapter.n_outputs, 4 + int(model.fit_intercept))
    _check_partition(structure)
    _check_gradients(adapter, adapter.inputs(X))


def test_skorch_mlp_layers_and_gradients():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(25, 6)), rng.integers(0, 3, 25)
    adapter = _skorch_adapter(
        TanhMLP, X, y, module__in_features=6, module__hidden=5, module__out_features=3
    )
    structure = _check_gradients(adapter, adapter.inputs(X))
    assert [(layer.name, layer.kind) for layer in structure.layers] == [
        ("hidden", "linear"),
        ("output", "linear"),
    ]
    assert structure.layers[0].weight_shape == (5, 6) and not structure.uncovered
    _check_partition(structure)


def test_skorch_conv_net_layers_gradients_and_uncovered_parameters():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(12, 1, 4, 4)), rng.integers(0, 3, 12)
    adapter = _skorch_adapter(TinyConvNet, X, y)
    structure = _check_gradients(adapter, adapter.inputs(X))
    assert [(layer.name, layer.kind) for layer in structure.layers] == [
        ("conv", "conv2d"),
        ("down", "conv2d"),
        ("head", "linear"),
    ]
    assert structure.layers[1].conv["stride"] == (2, 2)
    assert [block.name for block in structure.uncovered] == ["norm.weight", "norm.bias"]
    _check_partition(structure)


def test_a_frozen_bias_is_not_part_of_the_layer():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(20, 6)), rng.integers(0, 3, 20)
    torch.manual_seed(0)
    module = TanhMLP(in_features=6, hidden=4, out_features=3)
    module.hidden.bias.requires_grad_(False)
    adapter = _skorch_adapter(module, X, y)
    structure = _check_gradients(adapter, adapter.inputs(X))
    assert structure.layers[0].bias is None and structure.layers[1].bias is not None
    _check_partition(structure)
