"""Responses that converge on real networks: truth, certificates, divergence, options.

The truth of the PBRF on each network is computed here, independently of the package: the
objective written out with torch (KL divergence of the logits from θˢ's, minus ε times the
removed point's cross-entropy, plus (λ/2)‖θ − θˢ‖²) and minimised by torch's own full-batch
float64 L-BFGS to a gradient norm of 1e-11.
"""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import InvalidParameterError
from skorch import NeuralNetClassifier
from torch import nn
from torch.func import functional_call

from sklearn_influence import PBRF, InfluenceFunction
from sklearn_influence._responses._optimizers import make_optimizer
from sklearn_influence._responses._second_order import sampled_gradient_norm
from sklearn_influence.datasets import ResNet, TransformerClassifier, load_digits_split
from sklearn_influence.exceptions import ResponseConvergenceWarning, ResponseDivergenceWarning

N_TRAIN = 60
REMOVED = [1, 7]
DAMPING = 0.1


class TinyReLUCNN(nn.Module):
    """Conv → ReLU → max-pool, twice, then a linear layer (8×8 digits)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.output = nn.Linear(16, 10)

    def forward(self, X):
        return self.output(self.features(X.reshape(len(X), 1, 8, 8)).flatten(1))


def _net(module, **params):
    return NeuralNetClassifier(
        module, criterion=nn.CrossEntropyLoss, optimizer=torch.optim.Adam, lr=1e-2,
        max_epochs=15, batch_size=16, train_split=None, verbose=0,
        **{f"module__{k}": v for k, v in params.items()},
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    data = load_digits_split(n_train=N_TRAIN, n_test=20, random_state=0)
    return data.X_train.astype(np.float32), data.y_train.astype(np.int64)


FAMILIES = {
    "relu_maxpool_cnn": lambda: _net(TinyReLUCNN),
    "batchnorm_resnet": lambda: _net(ResNet, width=2, n_blocks=1),
    "transformer": lambda: _net(TransformerClassifier, d_model=8, n_heads=2, dim_feedforward=8),
}


def _fitted(family, X, y):
    net = FAMILIES[family]()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net.fit(X, y)
    return net


def _truth(net, X, y, m, damping):
    """PBRF minimiser for removing m, by torch's L-BFGS on the objective written out here."""
    module = net.module_.double().eval()
    names = [name for name, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    reference = torch.cat([p.detach().reshape(-1) for _, p in module.named_parameters()])
    inputs = torch.as_tensor(X, dtype=torch.float64)
    targets = torch.as_tensor(y)

    def logits(theta):
        parts, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = int(np.prod(shape))
            parts[name] = theta[start : start + size].reshape(shape)
            start += size
        return functional_call(module, parts, (inputs,))

    with torch.no_grad():
        log_ref = torch.log_softmax(logits(reference), 1)

    def objective(theta):
        log_p = torch.log_softmax(logits(theta), 1)
        kl = (log_ref.exp() * (log_ref - log_p)).sum(1).mean()
        removed = nn.functional.cross_entropy(logits(theta)[m : m + 1], targets[m : m + 1])
        return kl - removed / len(X) + 0.5 * damping * ((theta - reference) ** 2).sum()

    theta = reference.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta], lr=1, max_iter=5000, tolerance_grad=1e-10, tolerance_change=0,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        value = objective(theta)
        value.backward()
        return value

    optimizer.step(closure)
    net.module_.float()
    return reference.numpy(), theta.detach().numpy()


@pytest.mark.parametrize(
    "family",
    [
        # minutes under load (its PBRF ends on a kink): run with pytest -m slow
        pytest.param("relu_maxpool_cnn", marks=pytest.mark.slow),
        "transformer",
        pytest.param(
            "batchnorm_resnet",
            marks=pytest.mark.xfail(
                reason="open: L-BFGS stalls at about 12% of the move on the BatchNorm net",
                strict=False,
            ),
        ),
    ],
)
def test_lbfgs_pbrf_matches_an_independent_lbfgs(digits, family):
    X, y = digits
    net = _fitted(family, X, y)
    with warnings.catch_warnings():
        # the ReLU net ends on a kink above the gradient tolerance (checked: the answer)
        warnings.simplefilter("ignore", ResponseConvergenceWarning)
        pbrf = PBRF(FrozenEstimator(net), damping=DAMPING, train_indices=REMOVED[:1],
                    optimizer="lbfgs", n_iter=3000).fit(X, y)  # fmt: skip
    if family == "transformer":
        assert pbrf.converged_.all()
    reference, truth = _truth(net, X, y, REMOVED[0], DAMPING)
    np.testing.assert_allclose(pbrf.reference_parameters_, reference, atol=1e-6)
    move = np.linalg.norm(truth - reference)
    error = np.linalg.norm(pbrf.parameters_[0] - truth)
    assert error <= 5e-3 * move, (family, error / move)


def test_auto_pbrf_is_preconditioned_lbfgs_and_matches_an_independent_lbfgs(digits):
    """optimizer="auto": L-BFGS started with the exact (G + λI)⁻¹ at θˢ, so its first step is
    the influence step; on the ReLU + max-pool CNN it converges in a few steps and lands on
    torch's float64 L-BFGS minimiser (λ = 1; at λ = 0.1 this net's minimisers sit on kinks)."""
    X, y = digits
    net = _fitted("relu_maxpool_cnn", X, y)
    removed = [0, 1, 2]
    pbrf = PBRF(FrozenEstimator(net), damping=1.0, train_indices=removed, optimizer="auto",
                n_iter=200).fit(X, y)  # fmt: skip
    assert pbrf.converged_.all()
    assert (pbrf.n_iter_ <= 10).all(), pbrf.n_iter_
    for j, m in enumerate(removed):
        reference, truth = _truth(net, X, y, m, 1.0)
        move = np.linalg.norm(truth - reference)
        error = np.linalg.norm(pbrf.parameters_[j] - truth)
        assert error <= 5e-3 * move, (m, error / move)
    # the fitted estimator pickles (its problem's lock and preconditioner factors are not
    # shipped) and a restored copy answers the same
    restored = pickle.loads(pickle.dumps(pbrf))
    np.testing.assert_array_equal(restored.transform(X[:5], y[:5]), pbrf.transform(X[:5], y[:5]))


def test_far_pbrf_minimiser_is_reported_not_converged(digits):
    """At λ = 0.01 the tiny ReLU net's PBRF is unbounded below (torch's L-BFGS runs off to
    ‖θ − θˢ‖ ≈ 1e4): the response stops at 10 influence steps and says so."""
    X, y = digits
    net = _fitted("relu_maxpool_cnn", X, y)
    with pytest.warns(ResponseConvergenceWarning, match="far from θˢ"):
        pbrf = PBRF(FrozenEstimator(net), damping=1e-2, train_indices=REMOVED[:1],
                    optimizer="lbfgs", n_iter=3000).fit(X, y)  # fmt: skip
    assert not pbrf.converged_.any()


def test_gauss_newton_optimizer_reaches_the_same_pbrf(digits):
    X, y = digits
    net = _fitted("relu_maxpool_cnn", X, y)
    common = {"damping": 1.0, "train_indices": REMOVED[:1], "tol": 1e-6}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResponseConvergenceWarning)
        lbfgs = PBRF(FrozenEstimator(net), **common).fit(X, y)
        newton = PBRF(FrozenEstimator(net), optimizer="gauss_newton", n_iter=15, **common)
        newton.fit(X, y)
    move = np.linalg.norm(lbfgs.parameters_ - lbfgs.reference_parameters_)
    assert np.linalg.norm(newton.parameters_ - lbfgs.parameters_) <= 0.05 * move


def test_sampled_gradients_certify_a_kink():
    """F(θ) = |θ₀| + θ₁²: at (0, 0) every gradient has norm ≥ 1, the Clarke one is 0."""

    def full(thetas, copies=None):
        values = thetas[:, 0].abs() + thetas[:, 1] ** 2
        gradients = torch.stack([torch.sign(thetas[:, 0]), 2 * thetas[:, 1]], 1)
        return values, gradients

    reference = torch.tensor([1.0, 1.0], dtype=torch.float64)
    at_kink = torch.tensor([[1e-12, 0.0]], dtype=torch.float64)
    gradient = full(at_kink)[1]
    assert float(gradient.norm()) >= 1
    assert float(sampled_gradient_norm(full, reference, at_kink, gradient, None)[0]) < 1e-3
    away = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    assert float(sampled_gradient_norm(full, reference, away, full(away)[1], None)[0]) > 0.9


def test_divergence_stops_early_and_names_the_fix(digits):
    X, y = digits
    net = _fitted("relu_maxpool_cnn", X, y)
    with pytest.warns(ResponseDivergenceWarning, match="diverged") as records:
        pbrf = PBRF(
            FrozenEstimator(net), damping=DAMPING, train_indices=REMOVED, optimizer="adam",
            learning_rate=1e6, n_iter=500,
        ).fit(X, y)  # fmt: skip
    message = next(str(r.message) for r in records if r.category is ResponseDivergenceWarning)
    assert "learning_rate" in message and "optimizer='auto'" in message
    assert not pbrf.converged_.any()
    assert (pbrf.n_iter_ < 500).all()  # stopped early
    assert np.isinf(pbrf.gradient_norm_).all()


def test_influence_function_warnings_name_score_options(digits):
    X, y = digits
    net = _fitted("relu_maxpool_cnn", X, y)
    influence = InfluenceFunction(
        FrozenEstimator(net), damping=DAMPING, score_target="pbrf", n_score_points=3,
        score_damping=DAMPING, score_options={"n_iter": 2}, random_state=0,
    ).fit(X, y)  # fmt: skip
    with pytest.warns(ResponseConvergenceWarning, match=r"score_options\['n_iter'\]"):
        influence.score(X[:10], y[:10])


def test_optimizer_options_are_declared_and_checked():
    with pytest.raises(InvalidParameterError, match="history"):
        make_optimizer("lbfgs", {"history": 0})
    with pytest.raises(InvalidParameterError, match="betas"):
        make_optimizer("adam", {"betas": (1.5, 0.9)})
    with pytest.raises(InvalidParameterError, match="Unknown optimizer_options"):
        make_optimizer("sgd", {"betas": (0.9, 0.99)})
    assert make_optimizer("lbfgs").settings == {
        "history": 30, "max_halvings": 30, "preconditioner": None, "patience": None,
    }  # fmt: skip
    with pytest.raises(InvalidParameterError, match="patience"):
        make_optimizer("lbfgs", {"patience": 0})
    with pytest.raises(InvalidParameterError, match="score_options"):
        from sklearn_influence._responses._removal import check_score_options

        check_score_options({"n_iter": 0})


def test_lbfgs_patience_stops_a_copy_whose_gradient_stalls():
    """Two copies in one batched L-BFGS: a smooth quadratic (converges to the threshold) and
    a kinked |x|₁ + ½‖x‖²/100 whose minimiser, 0, sits on the kinks, so its gradient norm
    never falls far below √p. With patience 5 the kinked copy stops within 5 steps of its
    last 10% improvement, unconverged; the quadratic's path is the same with or without."""
    from sklearn_influence._responses._optimizers import _lbfgs

    curvatures = torch.linspace(1.0, 4.0, 6, dtype=torch.float64)

    def full(thetas, copies):
        smooth = 0.5 * (curvatures * thetas**2).sum(1)
        kinked = thetas.abs().sum(1) + 0.005 * (thetas**2).sum(1)
        values = torch.where(copies == 0, smooth, kinked)
        gradients = torch.where(
            (copies == 0).unsqueeze(1), curvatures * thetas, thetas.sign() + 0.01 * thetas
        )
        return values, gradients

    def run(patience):
        start = torch.stack([torch.linspace(1.0, 2.0, 6), torch.linspace(-1.5, 0.7, 6)])
        thetas = start.to(torch.float64)
        values, gradients = full(thetas, torch.arange(2))
        active = torch.ones(2, dtype=torch.bool)
        n_steps = torch.zeros(2, dtype=torch.int64)
        thetas, gradients = _lbfgs(
            full, thetas, values, gradients, 1e-10, active, n_steps, first_step=0.1,
            n_iter=200, patience=patience,
        )  # fmt: skip
        return thetas, gradients.norm(dim=1), n_steps

    free_thetas, free_norms, free_steps = run(None)
    thetas, norms, steps = run(5)
    assert free_norms[0] <= 1e-10 and norms[0] <= 1e-10  # the smooth copy converges
    torch.testing.assert_close(thetas[0], free_thetas[0], rtol=0, atol=0)
    assert norms[1] > 1e-3  # the kinked copy cannot: no small gradient near its minimiser
    # its gradient norm never drops 10% below the start's: it stops after exactly 5 steps,
    # where without patience it spends the whole budget
    assert int(steps[1]) == 5 and int(free_steps[1]) == 200
    assert int(steps[0]) == int(free_steps[0])
