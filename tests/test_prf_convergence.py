"""The proximal response function (PRF) converges with its default settings on an unconverged
regression MLP, agrees with an independent reference, and says per point when it cannot;
response optimisations running in threads give the serial answer bitwise."""

import threading
import warnings

import numpy as np
import pytest
import torch
from joblib import parallel_config
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from skorch import NeuralNetRegressor
from torch.func import functional_call

from sklearn_influence import PBRF, InfluenceDecomposition, ProximalResponse
from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._losses import OutputLoss
from sklearn_influence._responses._functions import ResponseProblem, proximal_response
from sklearn_influence.datasets import TanhMLP, load_digits_split

WEIGHT_DECAY, DAMPING = 1e-3, 1e-3
REMOVED = [3, 41, 97, 150, 188]


@pytest.fixture(scope="module")
def regression():
    """An MLP regressor (digit value / 9) trained too briefly to be at an optimum: the PRF
    has to finish its training, far from θˢ, which SGD's defaults do not manage."""
    data = load_digits_split(n_train=200, n_test=20, random_state=0)
    y = (data.y_train / 9.0).reshape(-1, 1)
    net = NeuralNetRegressor(
        TanhMLP,
        module__hidden=8,
        module__out_features=1,
        module__dtype=torch.float64,
        optimizer=torch.optim.SGD,
        lr=0.05,
        optimizer__momentum=0.9,
        optimizer__weight_decay=WEIGHT_DECAY,
        max_epochs=20,
        batch_size=64,
        train_split=None,
        verbose=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net.fit(data.X_train, y)
    return net, data.X_train, y, data.X_test, (data.y_test / 9.0).reshape(-1, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread is faster (and the timing budget is for one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prf_objective(net, X, y, removed):
    """The PRF objective of one removed point, written from DESIGN.md §2 without the
    package: mean squared error (skorch's MSELoss) + (wd/2)‖θ‖² − (1/N)·the removed point's
    loss + (λ/2)‖θ − θˢ‖², on the flattened parameters of the net's module."""
    module = net.module_
    names = [name for name, _ in module.named_parameters()]
    shapes = [value.shape for _, value in module.named_parameters()]
    start = torch.cat([value.detach().reshape(-1) for _, value in module.named_parameters()])
    inputs = torch.as_tensor(X, dtype=torch.float64)
    targets = torch.as_tensor(y, dtype=torch.float64)

    def objective(theta):
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[offset : offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        squared = (functional_call(module, params, (inputs,)) - targets) ** 2
        return (
            squared.mean()
            + 0.5 * WEIGHT_DECAY * (theta**2).sum()
            - squared[removed].sum() / len(X)
            + 0.5 * DAMPING * ((theta - start) ** 2).sum()
        )

    return objective, start


def _gradient_norm(objective, theta):
    theta = torch.as_tensor(theta, dtype=torch.float64).clone().requires_grad_(True)
    return float(torch.autograd.grad(objective(theta), theta)[0].norm())


def _exact_minimiser(objective, theta):
    """Newton's method with the exact dense Hessian (torch.func.hessian) from ``theta``:
    the exact minimiser of the basin ``theta`` lies in, checked to be a minimum (positive
    definite Hessian) at a gradient norm below 1e-10."""
    theta = torch.as_tensor(theta, dtype=torch.float64).clone()
    for _ in range(20):
        gradient = torch.func.grad(objective)(theta)
        if float(gradient.norm()) < 1e-10:
            break
        theta = theta - torch.linalg.solve(torch.func.hessian(objective)(theta), gradient)
    assert float(torch.func.grad(objective)(theta).norm()) < 1e-10  # the reference converged
    assert float(torch.linalg.eigvalsh(torch.func.hessian(objective)(theta))[0]) > 0
    return theta


def _query_losses(net, theta, X, y):
    module = net.module_
    params, offset = {}, 0
    for name, value in module.named_parameters():
        params[name] = torch.as_tensor(theta[offset : offset + value.numel()]).reshape(value.shape)
        offset += value.numel()
    with torch.no_grad():
        outputs = functional_call(module, params, (torch.as_tensor(X),)).numpy()
    return ((outputs - y) ** 2).ravel()


def test_default_prf_converges_and_matches_an_independent_reference(regression):
    """Every point converges with the defaults (no warning), to a point the test's own
    objective confirms as stationary, within 1% of the exact minimiser there.

    The PRF of a network is non-convex: it is the minimiser reached from θˢ, and another
    optimiser from θˢ may end in another minimum (torch's L-BFGS does, for some of these
    points). So the reference is the exact minimiser of the basin the PRF ended in, found
    by Newton's method with the exact Hessian, to a gradient norm 10⁵ times smaller."""
    net, X, y, X_test, y_test = regression
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # no point may miss the tolerance
        prf = ProximalResponse(FrozenEstimator(net), train_indices=REMOVED).fit(X, y)
    assert prf.converged_.all()
    assert (prf.gradient_norm_ <= 1e-4).all()
    start = prf.reference_parameters_
    expected = []
    for j, removed in enumerate(REMOVED):
        objective, theta_s = _prf_objective(net, X, y, removed)
        np.testing.assert_array_equal(theta_s.numpy(), start)
        at_start = _gradient_norm(objective, start)
        assert _gradient_norm(objective, prf.parameters_[j]) <= 1e-4 * at_start
        exact = _exact_minimiser(objective, prf.parameters_[j]).numpy()
        move = np.linalg.norm(exact - start)
        assert move > 1.0  # the net was not at an optimum: the PRF moves far
        # gradient norm 1e-4 of its value at θˢ leaves a parameter error below 0.5% of the
        # move (measured: 0.07-0.1%)
        assert np.linalg.norm(prf.parameters_[j] - exact) < 5e-3 * move
        expected.append(
            _query_losses(net, exact, X_test, y_test) - _query_losses(net, start, X_test, y_test)
        )
    # what the estimator reports, the change of each query's loss, to 0.5% (measured 0.1%)
    expected, changes = np.stack(expected, 1), prf.transform(X_test, y_test)
    np.testing.assert_allclose(changes, expected, rtol=0, atol=5e-3 * np.abs(expected).max())
    # most of that change is the training the PRF finishes, common to all points; what tells
    # the points apart (the change minus its mean over the points) is resolved to 2%
    # (measured 0.4%)
    specific = expected - expected.mean(1, keepdims=True)
    np.testing.assert_allclose(
        changes - changes.mean(1, keepdims=True), specific, rtol=0,
        atol=2e-2 * np.abs(specific).max(),
    )  # fmt: skip


def test_sgd_settings_stop_short_and_say_which_setting_to_raise(regression):
    """The former defaults (SGD, step and momentum from the curvature at θˢ, 1000 steps) do
    not converge here, and a budget too small for L-BFGS is reported the same way: one
    ConvergenceWarning with the count and the setting to raise, never silently."""
    net, X, y, _, _ = regression
    with pytest.warns(ConvergenceWarning, match=r"2 of 2 .* n_iter=1000") as records:
        sgd = ProximalResponse(FrozenEstimator(net), train_indices=REMOVED[:2], optimizer="sgd",
                               n_iter=1000).fit(X, y)  # fmt: skip
    assert "Increase n_iter" in str(records[0].message)
    assert not sgd.converged_.any() and (sgd.gradient_norm_ > 1e-4).all()
    with pytest.warns(ConvergenceWarning, match=r"2 of 2 .* n_iter=50\b") as records:
        short = ProximalResponse(FrozenEstimator(net), train_indices=REMOVED[:2], n_iter=50)
        short.fit(X, y)
    assert "Increase n_iter" in str(records[0].message) and "history" in str(records[0].message)
    np.testing.assert_array_equal(short.n_iter_, [50, 50])
    assert not short.converged_.any()


def test_pbrf_defaults_are_lbfgs_as_the_prf():
    # issue 18: SGD tuned at θˢ stalls on networks' PBRF; L-BFGS (auto) converges
    assert PBRF(None).get_params()["optimizer"] == "auto"
    assert PBRF(None).get_params()["n_iter"] == 3000
    params = ProximalResponse(None).get_params()
    assert (params["optimizer"], params["n_iter"]) == ("auto", 3000)


def test_lbfgs_copies_do_not_depend_on_each_other(regression):
    """Each removed point's L-BFGS keeps its own pairs and line search: the points together,
    one at a time, or in two threaded chunks give the same parameters and step counts, up
    to the round-off of evaluating one copy or several at once. (On this non-convex
    objective any optimiser amplifies that round-off along its path: measured 1e-14 after
    10 steps, 7e-13 after 20, 6e-7 after 60, so the comparison is made after 10 steps.)"""
    net, X, y, _, _ = regression
    problem = ResponseProblem(make_adapter(net, len(y), torch.device("cpu")), X, y)
    settings = {"damping": DAMPING, "n_iter": 10, "tol": 0.0, "optimizer": "lbfgs"}
    indices = [5, 60, 120]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 10 steps: not converged
        together = proximal_response(problem, "prf", indices, **settings)
        alone = [proximal_response(problem, "prf", [m], **settings) for m in indices]
        with parallel_config(backend="threading"):
            chunked = proximal_response(problem, "prf", indices, n_jobs=2, **settings)
    torch.testing.assert_close(
        together.parameters, torch.cat([one.parameters for one in alone]), rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(together.n_iter, [10, 10, 10])
    torch.testing.assert_close(chunked.parameters, together.parameters, rtol=0, atol=1e-12)


def test_lbfgs_refuses_mini_batches(regression):
    net, X, y, _, _ = regression
    with pytest.raises(ValueError, match="needs full batches"):
        ProximalResponse(FrozenEstimator(net), train_indices=[0], optimizer="lbfgs",
                         batch_size=32).fit(X, y)  # fmt: skip


class _DefinitionOnly(OutputLoss):
    """The model's loss without its closed-form Bregman divergence, so the PBRF takes the
    generic forward-mode (jvp) path."""

    def __init__(self, loss):
        self.inner = loss

    def __call__(self, outputs, targets):
        return self.inner(outputs, targets)


def test_threads_give_the_serial_answer_bitwise(regression):
    """Two PBRFs (through forward-mode AD) and a PRF in three threads at once, several
    rounds: every result is bitwise the serial one."""
    net, X, y, _, _ = regression
    problem = ResponseProblem(make_adapter(net, len(y), torch.device("cpu")), X, y)
    problem.adapter.loss = _DefinitionOnly(problem.adapter.loss)
    settings = {"damping": DAMPING, "n_iter": 25, "tol": 0.0}
    jobs = {
        "pbrf a": lambda: proximal_response(problem, "pbrf", [5, 60], **settings),
        "pbrf b": lambda: proximal_response(problem, "pbrf", [7, 90, 120], **settings),
        "prf": lambda: proximal_response(problem, "prf", [5, 60], **settings),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 25 steps: not converged
        serial = {name: job().parameters for name, job in jobs.items()}
        for _ in range(2):
            results, errors = {}, []

            def run(name, results=results, errors=errors):
                try:
                    results[name] = jobs[name]().parameters
                except Exception as error:  # reported by the main thread
                    errors.append(error)

            threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not errors, errors
            for name in jobs:
                assert torch.equal(results[name], serial[name]), name


def test_decomposition_defaults_converge_prf_and_pbrf(regression):
    """InfluenceDecomposition's defaults (optimizer and n_iter "auto") give its PRF stage
    L-BFGS with 3000 steps, so on the same unconverged net every removed point converges
    there, and the PRF parameters equal the ProximalResponse estimator's (same optimiser,
    same settings, same points)."""
    net, X, y, _, _ = regression
    points = REMOVED[:2]  # the decomposition's cold leave-one-out retrains an unfitted net
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        decomposition = InfluenceDecomposition(
            clone(net), damping=DAMPING, train_indices=points, random_state=0
        ).fit(X, y)
        response = ProximalResponse(
            clone(net), damping=DAMPING, train_indices=points, random_state=0
        ).fit(X, y)
    assert decomposition.converged_["prf"].all() and decomposition.converged_["pbrf"].all()
    np.testing.assert_allclose(
        decomposition.parameters_["prf"], response.parameters_, rtol=1e-10, atol=1e-12
    )
