"""Networks beyond MLPs through skorch: a LeNet-like CNN, a residual net with batch
normalisation and a Transformer classifier on n-d inputs (images, token sequences).

For each: per-example gradients against autograd on single examples, Gauss-Newton products
against a dense float64 Jacobian computation, every curvature × solver against the direct
solve, the PBRF against its linearisation; plus n-d input validation, the attention fast
path and the optimizer settings read without constructing an optimizer. Tiny float64 nets.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.frozen import FrozenEstimator
from skorch import NeuralNetClassifier

from sklearn_influence import PBRF, InfluenceDecomposition, InfluenceFunction, LinearizedPBRF
from sklearn_influence._adapters._skorch import SkorchAdapter, differentiable_attention
from sklearn_influence._adapters._skorch_checks import parameter_weight_decays
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence.datasets import LeNet, ResNet, TransformerClassifier, load_digits_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHT_DECAY = 1e-3
DAMPING = 1e-2

#: name → (module, tiny settings, whether it takes (n, 1, 8, 8) images or (n, 8, 8) rows)
ARCHITECTURES = {
    "lenet": (LeNet, {"channels": (2, 3), "hidden": 6}, True),
    "resnet": (ResNet, {"width": 3, "n_blocks": 1}, True),
    "transformer": (
        TransformerClassifier,
        {"d_model": 4, "n_heads": 2, "dim_feedforward": 8},
        False,
    ),
}


def _net(name, **params):
    module, settings, _ = ARCHITECTURES[name]
    options = dict(
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=WEIGHT_DECAY,
        lr=0.1,
        batch_size=16,
        max_epochs=5,
        iterator_train__shuffle=True,
        train_split=None,
        verbose=0,
        module__dtype=torch.float64,
        **{f"module__{key}": value for key, value in settings.items()},
    )
    options.update(params)
    return NeuralNetClassifier(module, **options)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(n_train=40, n_test=5, random_state=0)


def _data(name, digits):
    images = ARCHITECTURES[name][2]
    shape = (1, 8, 8) if images else (8, 8)
    return (
        digits.images_train.reshape(-1, *shape),
        digits.y_train,
        digits.images_test.reshape(-1, *shape),
        digits.y_test,
    )


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def fitted(request, digits):
    """(name, data, InfluenceFunction fitted with the direct solver, which trained the net)."""
    name = request.param
    X, y, X_query, y_query = _data(name, digits)
    influence = InfluenceFunction(_net(name), solver="direct", damping=DAMPING, random_state=0)
    return name, (X, y, X_query, y_query), influence.fit(X, y)


def _flat_jacobian(module, theta_names, theta, X):
    """Dense output Jacobian (n·k, p) by reverse mode, one row at a time (plain autograd)."""
    shapes = [p.shape for _, p in module.named_parameters() if p.requires_grad]
    sizes = [s.numel() for s in shapes]

    def outputs(flat):
        pieces = torch.split(flat, sizes)
        params = {n: v.view(s) for n, v, s in zip(theta_names, pieces, shapes, strict=True)}
        return torch.func.functional_call(module, params, (X,)).reshape(-1)

    return torch.autograd.functional.jacobian(outputs, theta)


# -- gradients and curvature -----------------------------------------------------------------
def test_per_example_gradients_match_autograd_on_single_examples(fitted):
    _name, (X, y, _, _), influence = fitted
    adapter = influence.engine_.adapter
    gradients = per_example_gradients(
        adapter, adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    )
    module = influence.estimator_.module_.eval()  # batch norm with its running statistics
    params = [p for p in module.parameters() if p.requires_grad]
    for i in range(0, len(X), 7):
        loss = torch.nn.functional.cross_entropy(
            module(torch.as_tensor(X[i : i + 1])), torch.as_tensor(y[i : i + 1])
        )
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(gradients[i], expected, rtol=1e-9, atol=1e-12)


def test_gauss_newton_products_equal_a_dense_float64_computation(fitted):
    """G V from forward-mode products (attention on its math path) equals JᵀHJ/N + diag(r)."""
    _name, (X, y, _, _), influence = fitted
    adapter = influence.engine_.adapter
    theta, inputs = adapter.parameters(), adapter.inputs(X)
    curvature = make_curvature("gauss_newton", adapter, theta, inputs, adapter.targets(y))
    V = torch.randn(3, theta.numel(), dtype=theta.dtype)
    module = influence.estimator_.module_.eval()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    n, k = len(X), 10
    J = _flat_jacobian(module, names, theta.clone(), inputs).reshape(n, k, -1)
    with torch.no_grad():
        p = torch.softmax(module(inputs), dim=1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    dense = torch.einsum("nkp,nkl,nlq->pq", J, H, J) / n
    dense += torch.diag(torch.full_like(theta, WEIGHT_DECAY))
    torch.testing.assert_close(adapter.regularizer_diagonal(), torch.full_like(theta, WEIGHT_DECAY))
    torch.testing.assert_close(curvature.matmul(V), V @ dense, rtol=1e-10, atol=1e-12)


def test_hessian_is_symmetric_and_equals_finite_differences_of_the_gradient(fitted):
    """Guards against PyTorch's wrong forward-mode derivative of layer_norm's backward (input
    and weight both depending on θ, as in every Transformer): the Hessian is reverse over
    reverse."""
    _name, (X, y, _, _), influence = fitted
    adapter = influence.engine_.adapter
    theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    dense = make_curvature("hessian", adapter, theta, inputs, targets).dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-12)

    def gradient(t):
        return torch.func.grad(lambda u: adapter.objective(u, inputs, targets))(t)

    rows = torch.randperm(theta.numel())[:12]
    basis = torch.eye(theta.numel(), dtype=theta.dtype)[rows]
    step = 1e-5
    finite = torch.stack(
        [(gradient(theta + step * e) - gradient(theta - step * e)) / (2 * step) for e in basis]
    )
    torch.testing.assert_close(dense[rows], finite, rtol=0, atol=1e-8)


def test_cg_equals_direct(fitted):
    _name, (X, y, X_query, y_query), influence = fitted
    direct = influence.transform(X_query, y_query)
    cg = InfluenceFunction(
        FrozenEstimator(influence.estimator_),
        solver="cg",
        solver_options={"tol": 1e-10},
        damping=DAMPING,
    ).fit(X, y)
    np.testing.assert_allclose(
        cg.transform(X_query, y_query), direct, rtol=0, atol=1e-6 * np.abs(direct).max()
    )
    np.testing.assert_allclose(
        cg.self_influence(), influence.self_influence(), rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize(
    ("curvature", "damping"), [("gauss_newton", DAMPING), ("hessian", 1.0), ("identity", DAMPING)]
)
# the shallow LiSSA series is measured here against direct (its residual warning is expected)
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.SolverConvergenceWarning")
def test_every_curvature_and_solver_agrees_with_direct(fitted, curvature, damping):
    """cholesky and cg (exact) and LiSSA (iterative) on each curvature; the Hessian is
    indefinite at these unconverged nets, hence its larger damping."""
    name, (X, y, X_query, y_query), influence = fitted
    frozen = FrozenEstimator(influence.estimator_)

    def matrix(solver, options=None):
        return (
            InfluenceFunction(
                frozen, curvature=curvature, solver=solver, solver_options=options, damping=damping
            )
            .fit(X, y)
            .transform(X_query, y_query)
        )

    reference = matrix("direct")
    scale = np.abs(reference).max()
    np.testing.assert_allclose(matrix("cholesky"), reference, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(matrix("cg", {"tol": 1e-10}), reference, rtol=0, atol=1e-6 * scale)
    if name == "lenet":  # the stochastic solver once, on the best conditioned net
        lissa = matrix("lissa", {"depth": 100})
        assert np.corrcoef(lissa.ravel(), reference.ravel())[0, 1] > 0.999


# -- response functions ----------------------------------------------------------------------
def test_pbrf_converges_and_matches_its_linearisation(fitted):
    _name, (X, y, X_query, y_query), influence = fitted
    frozen = FrozenEstimator(influence.estimator_)
    settings = dict(damping=1.0, n_points=3, random_state=0)
    pbrf = PBRF(frozen, tol=1e-3, **settings).fit(X, y)
    linearized = LinearizedPBRF(frozen, **settings).fit(X, y)
    assert pbrf.converged_.all()
    actual, predicted = pbrf.transform(X_query, y_query), linearized.transform(X_query, y_query)
    assert np.corrcoef(actual.ravel(), predicted.ravel())[0, 1] > 0.999


def test_float32_batch_norm_net_evaluates_in_float64_for_responses(digits):
    """The response functions work in float64: the buffers are cast with the parameters."""
    X, y, _, _ = _data("resnet", digits)
    net = _net("resnet", module__dtype=torch.float32, max_epochs=1)
    adapter = InfluenceFunction(net, random_state=0).fit(X, y).engine_.adapter
    theta, inputs = adapter.parameters(), adapter.inputs(X[:4])
    assert theta.dtype == torch.float32
    with torch.no_grad():
        low = adapter.outputs(theta, inputs)
        high = adapter.outputs(theta.double(), inputs.double())
    assert high.dtype == torch.float64
    torch.testing.assert_close(high.float(), low, rtol=1e-4, atol=1e-5)


def test_decomposition_runs_on_a_conv_net(digits):
    X, y, X_query, y_query = _data("lenet", digits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # proximal responses may stop at n_iter here
        parts = InfluenceDecomposition(
            _net("lenet", max_epochs=3), damping=1.0, n_points=2, n_iter=200, random_state=0
        ).fit(X, y)
    table = parts.decompose(X_query, y_query)
    assert next(iter(table.index)) == "warm_start_gap"
    assert np.all(np.isfinite(table["output_distance"].to_numpy()))


# -- inputs ----------------------------------------------------------------------------------
def test_nd_inputs_keep_their_shape_and_bookkeeping(fitted):
    _name, (X, _y, X_query, y_query), influence = fitted
    assert influence.n_features_in_ == X.shape[1]  # scikit-learn's rule for n-d arrays
    assert not hasattr(influence, "feature_names_in_")
    assert influence.transform(X_query, y_query).shape == (len(X_query), len(X))
    assert influence.transform(X_query.tolist(), y_query).shape == (len(X_query), len(X))


def test_bad_nd_inputs_are_refused_clearly(fitted):
    _name, (X, y, X_query, y_query), influence = fitted
    bad = X.copy()
    bad[3, ..., 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        InfluenceFunction(FrozenEstimator(influence.estimator_)).fit(bad, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        InfluenceFunction(FrozenEstimator(influence.estimator_)).fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"samples of shape .* fitted on samples of shape"):
        influence.transform(X_query.reshape(len(X_query), -1), y_query)
    with pytest.raises(ValueError, match="contains NaN"):
        influence.transform(np.full_like(X_query, np.nan), y_query)
    with pytest.raises(ValueError, match="named inputs of shapes .* fitted on"):
        influence.transform({"images": X_query}, y_query)


def test_two_dimensional_y_for_a_classifier_names_the_shape(digits):
    X, y, _, _ = _data("lenet", digits)
    with pytest.raises(ValueError, match=r"1-d y .* one-hot or multilabel y of shape \(40, 2\)"):
        InfluenceFunction(_net("lenet")).fit(X, np.column_stack([y, y]))


# -- attention and optimizer settings ------------------------------------------------------
def test_attention_settings_are_restored_after_the_influence_computation(fitted):
    before = torch.backends.mha.get_fastpath_enabled()
    with differentiable_attention(), differentiable_attention():
        assert not torch.backends.mha.get_fastpath_enabled()
    assert torch.backends.mha.get_fastpath_enabled() == before
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with differentiable_attention():
            pass
        assert not torch.backends.mha.get_fastpath_enabled()  # the user's choice is kept
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def test_transformer_fast_path_would_break_forward_mode(digits):
    """Without the context the eval-mode encoder takes fused kernels that jvp cannot trace."""
    module = TransformerClassifier(d_model=4, dim_feedforward=8, dtype=torch.float64).eval()
    params = dict(module.named_parameters())
    X = torch.as_tensor(digits.images_train[:3])
    tangent = {key: torch.ones_like(value) for key, value in params.items()}

    def outputs(p):
        return torch.func.functional_call(module, p, (X,))

    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.func.jvp(outputs, (params,), (tangent,))
    with differentiable_attention():
        assert torch.func.jvp(outputs, (params,), (tangent,))[1].shape == (3, 10)


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer__weight_decay": 3e-3},
        {"optimizer": torch.optim.Adam, "optimizer__weight_decay": 2e-3, "lr": 1e-2},
        {
            "optimizer__weight_decay": 1e-2,
            "optimizer__param_groups": [("*.bias", {"weight_decay": 0.0})],
        },
        {"optimizer__weight_decay": 0.0},
    ],
)
def test_weight_decays_are_read_without_constructing_an_optimizer(digits, monkeypatch, settings):
    X, y, X_query, y_query = _data("lenet", digits)
    influence = InfluenceFunction(_net("lenet", max_epochs=1, **settings), random_state=0)
    net = influence.fit(X, y).estimator_
    names = [n for n, p in net.module_.named_parameters() if p.requires_grad]
    from_optimizer = parameter_weight_decays(net, names)  # reads the constructed optimizer_
    optimizer = net.__dict__.pop("optimizer_")  # as if it had never been constructed
    try:
        constructed = []
        original = torch.optim.Optimizer.__init__

        def counting(self, *args, **kwargs):
            constructed.append(type(self).__name__)
            original(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.Optimizer, "__init__", counting)
        assert parameter_weight_decays(net, names) == from_optimizer
        adapter = SkorchAdapter(net, len(X))
        frozen = InfluenceFunction(FrozenEstimator(net), solver="cg").fit(X, y)
        frozen.transform(X_query, y_query)
        assert constructed == []
    finally:
        net.__dict__["optimizer_"] = optimizer
    decay = adapter.regularizer_diagonal()
    torch.testing.assert_close(decay, influence.engine_.adapter.regularizer_diagonal())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("curvature, solver", [("gauss_newton", "cg"), ("ekfac", "auto")])
def test_cuda_networks_give_the_cpu_answer(fitted, curvature, solver):
    """LeNet, ResNet and the Transformer on the GPU: the CPU influence matrix."""
    _, (X, y, X_query, y_query), influence = fitted
    net = influence.estimator_
    options = {"tol": 1e-10, "maxiter": 500} if solver == "cg" else None
    matrices = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the factored curvature's fallback note
        for device in ("cpu", "cuda"):
            on_device = InfluenceFunction(
                FrozenEstimator(net),
                curvature=curvature,
                solver=solver,
                solver_options=options,
                damping=DAMPING,
                device=device,
                random_state=0,
            ).fit(X, y)
            matrices.append(on_device.transform(X_query, y_query))
    cpu, cuda = matrices
    np.testing.assert_allclose(cuda, cpu, rtol=1e-6, atol=1e-9 * np.abs(cpu).max())
