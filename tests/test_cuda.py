"""CUDA: parameters, gradients, curvature products and solves stay on the GPU and agree with
the CPU. Skipped cleanly without a GPU."""

import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class CudaMLP(torch.nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.hidden = torch.nn.Linear(64, hidden, dtype=torch.float64)
        self.out = torch.nn.Linear(hidden, 10, dtype=torch.float64)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X)))


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16.0, y[:400], X[1000:1030] / 16.0, y[1000:1030]


@pytest.fixture(scope="module")
def net(data):
    X, y, _, _ = data
    model = NeuralNetClassifier(
        CudaMLP,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=1e-3,
        train_split=None,
        max_epochs=15,
        lr=0.2,
        verbose=0,
    )
    influence = InfluenceFunction(model, random_state=0).fit(X, y)
    return influence.estimator_


def _on_gpu(tensor):
    return tensor.device.type == "cuda"


@pytest.mark.parametrize(
    ("solver", "options"),
    [("direct", {}), ("cg", {"tol": 1e-8}), ("lissa", {"depth": 50, "minibatch_size": 100})],
)
def test_gpu_matches_cpu_and_stays_on_the_gpu(net, data, solver, options):
    X, y, X_query, y_query = data
    results = {}
    for device in ("cpu", "cuda"):
        influence = InfluenceFunction(
            FrozenEstimator(net),
            solver=solver,
            solver_options=options,
            device=device,
            random_state=0,
        ).fit(X, y)
        start = time.perf_counter()
        results[device] = influence.transform(X_query, y_query)
        elapsed = time.perf_counter() - start
        print(f"{solver} transform on {device}: {elapsed:.3f} s")  # quoted in the report
        engine = influence.engine_
        if device == "cuda":
            assert _on_gpu(engine.theta) and _on_gpu(engine.train_gradients(slice(0, 4)))
            solver_object = engine.solver
            if solver == "direct":
                assert _on_gpu(solver_object.matrix)
            else:
                assert _on_gpu(solver_object.curvature.inputs)
            if solver == "cg":
                assert _on_gpu(solver_object.preconditioner._basis)
        assert isinstance(results[device], np.ndarray)
    np.testing.assert_allclose(
        results["cuda"], results["cpu"], rtol=1e-6, atol=1e-9 * np.abs(results["cpu"]).max()
    )


def test_auto_device_picks_the_gpu(net, data):
    X, y, X_query, y_query = data
    influence = InfluenceFunction(FrozenEstimator(net), device="auto").fit(X, y)
    assert _on_gpu(influence.engine_.theta)
    assert influence.transform(X_query, y_query).shape == (len(X_query), len(X))


def test_net_trained_on_the_gpu(data):
    X, y, X_query, y_query = data
    model = NeuralNetClassifier(
        CudaMLP,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        max_epochs=3,
        device="cuda",
        verbose=0,
    )
    on_gpu = InfluenceFunction(model, device="cuda", random_state=0).fit(X, y)
    on_cpu = InfluenceFunction(FrozenEstimator(on_gpu.estimator_), device="cpu").fit(X, y)
    np.testing.assert_allclose(
        on_gpu.transform(X_query, y_query), on_cpu.transform(X_query, y_query), rtol=1e-6
    )
    adapter = on_gpu.engine_.adapter
    again = adapter.retrain(X, y, warm_start=False)
    assert _on_gpu(again)
    torch.testing.assert_close(again, adapter.parameters(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["lenet", "resnet", "transformer"])
def test_networks_beyond_mlps_on_the_gpu(name):
    """The conv net, the residual net with batch norm and the Transformer (attention steered
    to its math kernel on CUDA too): trained on the GPU, cg there equals direct on the CPU."""
    from sklearn_influence.datasets import (
        LeNet,
        ResNet,
        TransformerClassifier,
        load_digits_split,
    )

    module, settings, shape = {
        "lenet": (LeNet, {"channels": (2, 3), "hidden": 6}, (1, 8, 8)),
        "resnet": (ResNet, {"width": 3, "n_blocks": 1}, (1, 8, 8)),
        "transformer": (TransformerClassifier, {"d_model": 4, "dim_feedforward": 8}, (8, 8)),
    }[name]
    digits = load_digits_split(n_train=60, n_test=5, random_state=0)
    X, X_query = digits.images_train.reshape(-1, *shape), digits.images_test.reshape(-1, *shape)
    model = NeuralNetClassifier(
        module,
        **{f"module__{key}": value for key, value in settings.items()},
        module__dtype=torch.float64,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=1e-3,
        train_split=None,
        max_epochs=3,
        lr=0.1,
        device="cuda",
        verbose=0,
    )
    on_gpu = InfluenceFunction(
        model, solver="cg", solver_options={"tol": 1e-10}, damping=1e-2, device="cuda"
    ).fit(X, digits.y_train)
    assert _on_gpu(on_gpu.engine_.theta)
    on_cpu = InfluenceFunction(
        FrozenEstimator(on_gpu.estimator_), solver="direct", damping=1e-2, device="cpu"
    ).fit(X, digits.y_train)
    expected = on_cpu.transform(X_query, digits.y_test)
    np.testing.assert_allclose(
        on_gpu.transform(X_query, digits.y_test),
        expected,
        rtol=0,
        atol=1e-6 * np.abs(expected).max(),
    )
