"""Networks as users have them: modules returning dicts or output objects, and a
torchvision-style ResNet-18 (BatchNorm, residual additions, AdaptiveAvgPool2d, Flatten)
end to end through skorch with EK-FAC and CG."""

import warnings

import numpy as np
import pytest
import torch
from _nets import DictOutputMLP, ModelOutputMLP, SplitInputMLP, TanhMLP
from _resnet import ResNet18
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction
from sklearn_influence._adapters._skorch_outputs import module_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0)[:80], y[:80]


def _net(module, **kwargs):
    settings = {"module__in_features": 64, "module__hidden": 6, "train_split": None,
                "criterion": torch.nn.CrossEntropyLoss, "max_epochs": 3, "verbose": 0}  # fmt: skip
    return NeuralNetClassifier(module, **{**settings, **kwargs})


def _with_weights_of(module_class, trained):
    """An initialised net with ``module_class`` carrying the weights of ``trained``."""
    net = _net(module_class).initialize()
    net.module_.load_state_dict(trained.module_.state_dict())
    return net


@pytest.mark.parametrize("module_class", [DictOutputMLP, ModelOutputMLP])
def test_dict_and_object_outputs_give_the_matrix_of_the_logits(digits, module_class):
    """A module returning {"logits": …} or an object with ``.logits`` (Hugging Face style)
    gives exactly the influence of the same weights returning the logits tensor."""
    X, y = digits
    plain = InfluenceFunction(_net(TanhMLP), damping=1e-2, random_state=0).fit(X, y)
    other = _with_weights_of(module_class, plain.estimator_)
    reduced = InfluenceFunction(FrozenEstimator(other), damping=1e-2).fit(X, y)
    np.testing.assert_array_equal(reduced.transform(X[:5], y[:5]), plain.transform(X[:5], y[:5]))
    np.testing.assert_array_equal(reduced.self_influence(), plain.self_influence())


def test_output_rule_refuses_what_it_cannot_reduce():
    with pytest.raises(TypeError, match=r"keys \['a', 'b'\] and no 'logits'.*under 'logits'"):
        module_logits({"a": torch.ones(1), "b": torch.ones(1)})
    with pytest.raises(TypeError, match="returned a str"):
        module_logits("logits")
    single = torch.ones(2)
    assert module_logits({"scores": single, "n": 3}) is single


def test_resnet18_end_to_end_with_ekfac_and_cg(digits):
    """A reduced-width ResNet-18 (p = 3,584) trained by skorch: CG equals the direct solve of
    the same Gauss-Newton system, EK-FAC runs (BatchNorm's affine parameters get their exact
    diagonal block, with a warning) and agrees with it in sign and order of magnitude."""
    X, y = digits
    X = X.reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        ResNet18, criterion=torch.nn.CrossEntropyLoss, train_split=None, max_epochs=2, lr=0.1,
        batch_size=32, verbose=0, optimizer__weight_decay=1e-3,
    )  # fmt: skip
    exact = InfluenceFunction(net, damping=1e-2, random_state=0, solver="cholesky").fit(X, y)
    assert exact.engine_.adapter.parameters().numel() == 3584
    reference = exact.transform(X[:4], y[:4])
    frozen = FrozenEstimator(exact.estimator_)
    cg = InfluenceFunction(frozen, damping=1e-2, solver="cg", solver_options={"tol": 1e-10})
    np.testing.assert_allclose(
        cg.fit(X, y).transform(X[:4], y[:4]), reference, rtol=1e-6, atol=1e-8 * abs(reference).max()
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ekfac = InfluenceFunction(frozen, damping=1e-2, curvature="ekfac").fit(X, y)
    assert any("bn1.weight" in str(w.message) for w in caught)
    approximate = ekfac.transform(X[:4], y[:4])
    assert np.isfinite(approximate).all() and (ekfac.self_influence() >= 0).all()
    assert np.corrcoef(approximate.ravel(), reference.ravel())[0, 1] > 0.5


def test_dict_inputs_give_the_matrices_of_the_stacked_array(digits):
    """skorch's dict X (named arrays for forward(**X)), trained and explained by the package,
    gives the matrices of the same network on the concatenated array: influence, the cold
    leave-one-out refits, and with sample weights."""
    from sklearn_influence import LeaveOneOut

    X, y = digits
    named = {"left": X[:, :40], "right": X[:, 40:]}
    weights = np.random.RandomState(0).uniform(0.5, 2.0, len(y))
    for fit_params in ({}, {"sample_weight": weights}):
        stacked = InfluenceFunction(_net(TanhMLP), damping=1e-2, random_state=0)
        split = InfluenceFunction(_net(SplitInputMLP), damping=1e-2, random_state=0)
        stacked.fit(X, y, **fit_params)
        split.fit(named, y, **fit_params)
        query = {"left": X[:5, :40], "right": X[:5, 40:]}
        np.testing.assert_allclose(
            split.transform(query, y[:5]), stacked.transform(X[:5], y[:5]), rtol=1e-10
        )
    loo = [LeaveOneOut(_net(module), train_indices=[3], warm_start=False, random_state=0)
           for module in (TanhMLP, SplitInputMLP)]  # fmt: skip
    np.testing.assert_allclose(
        loo[1].fit(named, y).parameters_, loo[0].fit(X, y).parameters_, rtol=1e-10
    )
    with pytest.raises(ValueError, match="named inputs of shapes"):
        split.transform({"left": X[:5, :40]}, y[:5])


class _Rows(torch.utils.data.Dataset):
    """A user's data set: items are inputs, or (input, target) pairs."""

    def __init__(self, X, y=None):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] if self.y is None else (self.X[i], self.y[i])


def test_datasets_stream_and_give_the_matrices_of_the_array(digits):
    """A torch Dataset (inputs, or (input, target) pairs) or a skorch Dataset as X: the
    engine loads it a block at a time (never one array) and every result equals the array's:
    influence (Gauss-Newton and EK-FAC), self-influence, weights, cold LOO and the PBRF."""
    from skorch.dataset import Dataset as SkorchDataset

    from sklearn_influence import PBRF, LeaveOneOut
    from sklearn_influence._adapters._rows import DatasetRows

    X, y = digits
    weights = np.random.RandomState(1).uniform(0.5, 2.0, len(y))
    for settings, fit_params in (({}, {}), ({"curvature": "ekfac"}, {"sample_weight": weights})):
        array = InfluenceFunction(_net(TanhMLP), damping=1e-2, random_state=0, **settings)
        streamed = InfluenceFunction(_net(TanhMLP), damping=1e-2, random_state=0, **settings)
        array.fit(X, y, **fit_params)
        streamed.fit(_Rows(X, y), None, **fit_params)
        assert isinstance(streamed.engine_.inputs, DatasetRows)
        np.testing.assert_array_equal(
            streamed.transform(_Rows(X[:5]), y[:5]), array.transform(X[:5], y[:5])
        )
        np.testing.assert_array_equal(streamed.self_influence(), array.self_influence())
    loo = [LeaveOneOut(_net(TanhMLP), train_indices=[3], warm_start=False, random_state=0)
           for _ in range(2)]  # fmt: skip
    np.testing.assert_array_equal(
        loo[1].fit(_Rows(X), y).parameters_, loo[0].fit(X, y).parameters_
    )
    pbrf = [PBRF(_net(TanhMLP), train_indices=[3, 7], n_iter=20, random_state=0)
            for _ in range(2)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 20 steps do not converge; the same 20 steps
        np.testing.assert_array_equal(
            pbrf[1].fit(SkorchDataset(X, y), None).parameters_, pbrf[0].fit(X, y).parameters_
        )
    with pytest.raises(ValueError, match="not .input, target. pairs, so pass the targets"):
        InfluenceFunction(_net(TanhMLP)).fit(_Rows(X), None)
