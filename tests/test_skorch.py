"""skorch nets through the adapter: objective mapping, gradients, retraining, pipelines,
bad input and scikit-learn's estimator checks."""

import warnings

import numpy as np
import pytest
import torch
from _nets import LazyTanhMLP, TanhMLP
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor

from sklearn_influence import InfluenceFunction
from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._skorch import SkorchAdapter, fit_skorch
from sklearn_influence._adapters._skorch_training import _EpochOrderSampler
from sklearn_influence._engine._gradients import per_example_gradients

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- modules (top level so that nets clone and pickle) ------------------------------------
class NormDropMLP(torch.nn.Module):
    """Batch normalisation (buffers) and dropout (training randomness)."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(64, 16, dtype=torch.float64)
        self.norm = torch.nn.BatchNorm1d(16, dtype=torch.float64)
        self.drop = torch.nn.Dropout(0.2)
        self.out = torch.nn.Linear(16, 10, dtype=torch.float64)

    def forward(self, X):
        return self.out(self.drop(torch.tanh(self.norm(self.hidden(X)))))


class DataDependentModule(torch.nn.Module):
    """Python control flow on tensor values: trains with skorch, cannot be vmapped."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10, dtype=torch.float64)

    def forward(self, X):
        out = self.linear(X)
        if out.sum().item() > 0:
            return out
        return -out


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16.0, y[:400]


def _net(kind="nll", **params):
    """A tiny float64 skorch net on digits (64 inputs) of the given flavour."""
    settings = dict(train_split=None, max_epochs=3, lr=0.2, batch_size=32, verbose=0)
    settings.update(params)
    if kind == "nll":
        return NeuralNetClassifier(TanhMLP, module__probabilities=True, **settings)
    if kind == "cross_entropy":
        return NeuralNetClassifier(TanhMLP, criterion=torch.nn.CrossEntropyLoss, **settings)
    if kind == "binary":
        return NeuralNetBinaryClassifier(TanhMLP, module__out_features=1, **settings)
    return NeuralNetRegressor(TanhMLP, module__out_features=2, **settings)


def _targets(kind, y):
    if kind == "binary":
        return (y % 2).astype(np.float64)
    if kind == "regression":
        return np.column_stack([y / 9.0, (y % 3) / 2.0])
    return y


def _fitted_adapter(kind, X, y, **params):
    net = _net(kind, **params)
    state = fit_skorch(net, X, _targets(kind, y))
    return net, make_adapter(net, len(X), torch.device("cpu"), state)


# -- objective mapping ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nll", "cross_entropy", "binary", "regression"])
def test_per_example_gradients_match_skorch_loss_autograd_loop(digits, kind):
    X, y = digits[0][:60], digits[1][:60]
    net, adapter = _fitted_adapter(kind, X, y, optimizer__weight_decay=1e-3)
    targets = _targets(kind, y)
    gradients = per_example_gradients(
        adapter, adapter.parameters(), adapter.inputs(X), adapter.targets(targets)
    )
    net.module_.eval()
    params = [p for p in net.module_.parameters() if p.requires_grad]
    y_tensor = torch.as_tensor(
        targets.astype(np.int64) if kind in ("nll", "cross_entropy") else targets
    )
    for i in range(len(X)):
        # skorch's own loss path (get_loss adds log(p + eps) for NLLLoss)
        loss = net.get_loss(net.infer(torch.as_tensor(X[i : i + 1])), y_tensor[i : i + 1])
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(gradients[i], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["nll", "binary", "regression"])
def test_objective_is_mean_skorch_loss_plus_weight_decay(digits, kind):
    X, y = digits
    wd = 3e-3
    net, adapter = _fitted_adapter(kind, X, y, optimizer__weight_decay=wd)
    theta = adapter.parameters()
    objective = adapter.objective(theta, adapter.inputs(X), adapter.targets(_targets(kind, y)))
    net.module_.eval()
    targets = _targets(kind, y)
    y_tensor = torch.as_tensor(targets.astype(np.int64) if kind == "nll" else targets)
    with torch.no_grad():
        mean_loss = net.get_loss(net.infer(torch.as_tensor(X)), y_tensor)
    expected = mean_loss + 0.5 * wd * (theta**2).sum()
    torch.testing.assert_close(objective, expected, rtol=1e-10, atol=1e-12)


def test_param_groups_give_per_parameter_decay(digits):
    X, y = digits
    net, adapter = _fitted_adapter(
        "cross_entropy",
        X,
        y,
        optimizer__weight_decay=1e-2,
        optimizer__param_groups=[("*.bias", {"weight_decay": 0.0})],
    )
    decay = adapter.regularizer_diagonal()
    sizes = [p.numel() for _, p in net.module_.named_parameters()]
    names = [n for n, _ in net.module_.named_parameters()]
    for block, name in zip(torch.split(decay, sizes), names, strict=True):
        assert torch.all(block == (0.0 if name.endswith("bias") else 1e-2))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # fit for shapes only
def test_linear_net_matches_logistic_regression(digits):
    """nn.Linear + CrossEntropyLoss + decay on the weights only is L2 logistic regression."""
    X, y = digits[0][:200], digits[1][:200] % 3
    n, wd = len(X), 1e-2
    net = NeuralNetClassifier(
        torch.nn.Linear,
        module__in_features=64,
        module__out_features=3,
        module__dtype=torch.float64,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=wd,
        optimizer__param_groups=[("bias", {"weight_decay": 0.0})],
        train_split=None,
        max_epochs=5,
        lr=0.5,
        verbose=0,
    )
    influence_net = InfluenceFunction(net, random_state=0).fit(X, y)
    fitted = influence_net.estimator_
    # LogisticRegression minimises C Σ log-loss + ½‖w‖²: mean form r = 1/(C N) = wd
    logistic = LogisticRegression(C=1.0 / (wd * n), max_iter=5).fit(X, y)
    logistic.coef_ = fitted.module_.weight.detach().numpy().copy()
    logistic.intercept_ = fitted.module_.bias.detach().numpy().copy()
    influence_linear = InfluenceFunction(FrozenEstimator(logistic)).fit(X, y)
    queries, labels = digits[0][300:320], digits[1][300:320] % 3
    np.testing.assert_allclose(
        influence_net.transform(queries, labels),
        influence_linear.transform(queries, labels),
        rtol=1e-7,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        influence_net.self_influence(), influence_linear.self_influence(), rtol=1e-7
    )


# both sides are evaluated at the net's coefficients, which are near, not at, Ridge's optimum
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.NotStationaryWarning")
def test_linear_regressor_net_matches_ridge(digits):
    """MSELoss on one output with decay on the weights is ridge with α = wd·N/2."""
    X, y = digits[0][:150], digits[1][:150] / 9.0
    n, wd = len(X), 1e-2
    net = NeuralNetRegressor(
        torch.nn.Linear,
        module__in_features=64,
        module__out_features=1,
        module__dtype=torch.float64,
        optimizer__weight_decay=wd,
        optimizer__param_groups=[("bias", {"weight_decay": 0.0})],
        train_split=None,
        max_epochs=3,
        lr=0.1,
        verbose=0,
    )
    influence_net = InfluenceFunction(net, random_state=0).fit(X, y)
    fitted = influence_net.estimator_
    ridge = Ridge(alpha=wd * n / 2).fit(X, y)
    ridge.coef_ = fitted.module_.weight.detach().numpy().ravel().copy()
    ridge.intercept_ = float(fitted.module_.bias.detach().numpy()[0])
    influence_ridge = InfluenceFunction(FrozenEstimator(ridge)).fit(X, y)
    queries, targets = digits[0][300:310], digits[1][300:310] / 9.0
    np.testing.assert_allclose(
        influence_net.transform(queries, targets),
        influence_ridge.transform(queries, targets),
        rtol=1e-7,
        atol=1e-12,
    )


# -- retraining ----------------------------------------------------------------------------
def test_cold_start_retrain_reproduces_the_fit_exactly(digits):
    X, y = digits[0][:120], digits[1][:120]
    net = NeuralNetClassifier(
        NormDropMLP,
        criterion=torch.nn.CrossEntropyLoss,
        iterator_train__shuffle=True,
        optimizer=torch.optim.Adam,
        lr=1e-2,
        batch_size=32,
        max_epochs=3,
        train_split=None,
        verbose=0,
    )
    influence = InfluenceFunction(net, random_state=3).fit(X, y)
    adapter = influence.engine_.adapter
    again = adapter.retrain(X, y, exclude=(), warm_start=False)
    assert torch.equal(again, adapter.parameters())
    assert "norm.running_mean" in adapter._constants  # eval mode uses the running statistics
    # the user's net keeps its own settings (the seeded sampler was only lent for training)
    assert "iterator_train__sampler" not in influence.estimator_.get_params()
    assert influence.estimator_.get_params()["iterator_train__shuffle"] is True
    without = adapter.retrain(X, y, exclude=[5], warm_start=False)
    assert not torch.equal(without, adapter.parameters())
    warm = adapter.retrain(X, y, exclude=[5], warm_start=True)
    assert warm.shape == adapter.parameters().shape and bool(torch.isfinite(warm).all())


def test_epoch_order_drops_rows_without_reordering_the_others():
    full = _EpochOrderSampler(np.arange(10), 10, seed=4, shuffle=True)
    kept = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9])  # row 3 removed
    reduced = _EpochOrderSampler(kept, 10, seed=4, shuffle=True)
    for _ in range(3):  # three epochs, each with its own permutation
        order_full = [i for i in full if i != 3]
        order_reduced = [int(kept[position]) for position in reduced]
        assert order_full == order_reduced
    assert list(_EpochOrderSampler(kept, 10, seed=4, shuffle=False)) == list(range(9))


def test_frozen_net_refuses_cold_start(digits):
    X, y = digits[0][:80], digits[1][:80]
    net = _net("cross_entropy").fit(X, y)
    adapter = make_adapter(FrozenEstimator(net), len(X), torch.device("cpu"))
    adapter.inputs(X)
    with pytest.raises(ValueError, match="cold-start retraining needs the initial weights"):
        adapter.retrain(X, y, warm_start=False)


# -- containers, dtypes ----------------------------------------------------------------------
def test_pipeline_and_frozen_pipeline_agree(digits):
    X, y = digits[0][:150] * 16.0, digits[1][:150]
    pipeline = make_pipeline(StandardScaler(), _net("cross_entropy"))
    fitted = InfluenceFunction(pipeline, random_state=0).fit(X, y)
    frozen = InfluenceFunction(FrozenEstimator(fitted.estimator_)).fit(X, y)
    queries = digits[0][300:310] * 16.0
    matrix = fitted.transform(queries, digits[1][300:310])
    assert matrix.shape == (10, 150) and np.all(np.isfinite(matrix))
    np.testing.assert_allclose(matrix, frozen.transform(queries, digits[1][300:310]), rtol=1e-10)


def test_read_only_inputs_are_copied_without_a_torch_warning(digits):
    """Read-only arrays (joblib memmaps in workers) must not trigger torch's warning."""
    X, y = digits[0][:120].copy(), digits[1][:120].copy()
    expected = InfluenceFunction(_net("cross_entropy"), random_state=0).fit(X, y)
    expected = expected.transform(X[:5], y[:5])
    X.setflags(write=False)
    y.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch: "The given NumPy array is not writable"
        influence = InfluenceFunction(_net("cross_entropy"), random_state=0).fit(X, y)
        matrix = influence.transform(X[:5], y[:5])
    np.testing.assert_array_equal(matrix, expected)
    # torch warns only once per process, so check the mechanism too: a copy, only when needed
    from sklearn_influence._torch_utils import array_to_tensor

    assert not np.shares_memory(array_to_tensor(X).numpy(), X)
    writable = X.copy()
    assert np.shares_memory(array_to_tensor(writable).numpy(), writable)


def test_float32_net_takes_float64_input_and_matches_float64(digits):
    X, y = digits[0][:150], digits[1][:150]
    net32 = _net("cross_entropy", module__dtype=torch.float32)
    influence32 = InfluenceFunction(net32, random_state=0).fit(X, y)  # X is float64 numpy
    net64 = _net("cross_entropy")
    net64.initialize()
    net64.module_.load_state_dict(
        {k: v.double() for k, v in influence32.estimator_.module_.state_dict().items()}
    )
    influence64 = InfluenceFunction(FrozenEstimator(net64)).fit(X, y)
    assert influence32.engine_.theta.dtype == torch.float32
    m32 = influence32.transform(digits[0][300:320], digits[1][300:320])
    m64 = influence64.transform(digits[0][300:320], digits[1][300:320])
    assert np.corrcoef(m32.ravel(), m64.ravel())[0, 1] > 0.9999
    np.testing.assert_allclose(m32, m64, rtol=1e-2, atol=1e-4 * np.abs(m64).max())


def test_adapter_doctest_style_lazy_module_and_integer_input(digits):
    X = (digits[0][:100] * 16).astype(np.int64)  # integer features for a float module
    net = NeuralNetClassifier(
        LazyTanhMLP,
        module__n_out=10,
        train_split=None,
        max_epochs=2,
        verbose=0,
        criterion=torch.nn.CrossEntropyLoss,
    )
    influence = InfluenceFunction(net, random_state=0).fit(X, digits[1][:100])
    assert influence.transform(X[:5], digits[1][:5]).shape == (5, 100)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("net", "match"),
    [
        (NeuralNetClassifier(TanhMLP, max_epochs=1), r"train_split is not None.*train_split=None"),
        (
            NeuralNetClassifier(
                TanhMLP, train_split=None, optimizer=torch.optim.AdamW, max_epochs=1
            ),
            r"AdamW \(decoupled weight decay\) is not supported",
        ),
        (
            NeuralNetRegressor(TanhMLP, train_split=None, criterion=torch.nn.L1Loss),
            r"criterion L1Loss is not supported.*torch\.nn\.MSELoss",
        ),
        (
            NeuralNetClassifier(TanhMLP, train_split=None, criterion__reduction="sum"),
            r"reduction='sum' is not supported.*reduction='mean'",
        ),
        (
            NeuralNetClassifier(
                TanhMLP,
                train_split=None,
                optimizer=torch.optim.LBFGS,
                optimizer__weight_decay=1e-3,
            ),
            r"weight decay with optimizer 'LBFGS' is not supported",
        ),
    ],
)
def test_unsupported_configurations_are_refused_before_training(digits, net, match):
    with pytest.raises(ValueError, match=match):
        InfluenceFunction(net).fit(*digits)


def test_adamw_without_decay_is_accepted(digits):
    net = _net("cross_entropy", optimizer=torch.optim.AdamW, optimizer__weight_decay=0.0)
    influence = InfluenceFunction(net, random_state=0).fit(digits[0][:60], digits[1][:60])
    assert np.all(influence.engine_.adapter.regularizer_diagonal().numpy() == 0)


def test_untraceable_module_is_caught_when_the_adapter_is_built(digits):
    net = NeuralNetClassifier(
        DataDependentModule,
        criterion=torch.nn.CrossEntropyLoss,
        train_split=None,
        max_epochs=1,
        verbose=0,
    )
    with pytest.raises(ValueError, match=r"cannot be traced by torch\.func.*\.item\(\)"):
        InfluenceFunction(net).fit(digits[0][:60], digits[1][:60])


def test_nll_loss_on_logits_is_refused(digits):
    net = NeuralNetClassifier(TanhMLP, train_split=None, max_epochs=1, verbose=0, lr=1e-4)
    with pytest.raises(ValueError, match="expects the module to return probabilities"):
        InfluenceFunction(net).fit(digits[0][:60], digits[1][:60])


def test_string_labels_are_refused_with_the_fix(digits):
    labels = np.array(["a", "b"])[digits[1][:60] % 2]
    with pytest.raises(ValueError, match="LabelEncoder"):
        InfluenceFunction(_net("cross_entropy")).fit(digits[0][:60], labels)


def test_unfitted_net_is_refused_by_the_adapter():
    with pytest.raises(ValueError, match="is not fitted"):
        SkorchAdapter(_net("cross_entropy"), 10)


def test_two_dimensional_y_is_refused_before_label_ranges(digits):
    X, y = digits[0][:60], digits[1][:60]
    with pytest.raises(ValueError, match=r"1-d y .* of shape \(60, 2\).*argmax"):
        InfluenceFunction(_net("cross_entropy")).fit(X, np.column_stack([y, y]))
    with pytest.raises(ValueError, match=r"1-d y .*y\.ravel\(\)"):
        InfluenceFunction(_net("binary")).fit(X, (y % 2).reshape(-1, 1))
