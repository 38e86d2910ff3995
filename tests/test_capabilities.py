"""Contract: every registered curvature × solver × model family gives a finite influence
matrix, or the named UnsupportedCombinationError before any training.

The expectations are written out here (not derived from the declarations they check): the
``factored`` solver needs a factored curvature; K-FAC/EK-FAC (as curvature or as CG's
preconditioner) need a model family with layer structure, which scikit-learn's MLPs lack.
"""

import warnings

import numpy as np
import pytest
import torch
from _nets import TanhMLP
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction
from sklearn_influence._engine._capabilities import UnsupportedCombinationError
from sklearn_influence._engine._curvature import CURVATURES
from sklearn_influence._engine._solvers import SOLVERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: small settings that keep every solver quick on tiny models (damping 10 keeps the
#: Hessian of the barely trained net positive definite: its smallest eigenvalue is -1.2)
FAST = {"lissa": {"depth": 30}, "cg": {"maxiter": 50}, "near_exact": {"maxiter": 50}}


def _families():
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        TanhMLP, module__hidden=3, module__out_features=3, criterion=torch.nn.CrossEntropyLoss,
        train_split=None, max_epochs=2, verbose=0,
    )  # fmt: skip
    return {
        "ridge": Ridge(),
        "logistic": LogisticRegression(max_iter=200),
        "sklearn_mlp": MLPClassifier(hidden_layer_sizes=(3,), max_iter=30, random_state=0),
        "skorch": net,
    }


FAMILIES = sorted(_families())


def _refused(family, curvature, solver, options):
    if solver == "factored" and not CURVATURES[curvature].factored:
        return True
    needs_layers = curvature in ("kfac", "ekfac") or options.get("preconditioner") in (
        "kfac", "ekfac")  # fmt: skip
    return family == "sklearn_mlp" and needs_layers


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(n_class=3, return_X_y=True)
    return X[:40] / 16.0, y[:40]


@pytest.mark.parametrize("solver", ["auto", *sorted(SOLVERS)])
@pytest.mark.parametrize("curvature", sorted(CURVATURES))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_pairing_answers_or_is_refused_by_name(family, curvature, solver, data):
    X, y = data
    model = _families()[family]
    options = FAST.get(solver, {})
    influence = InfluenceFunction(
        model, curvature=curvature, solver=solver, damping=10.0, solver_options=options or None,
        random_state=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _refused(family, curvature, solver, options):
            with pytest.raises(UnsupportedCombinationError, match=f"{curvature}|{solver}"):
                influence.fit(X, y)
            return
        influence.fit(X, y)
        matrix = influence.transform(X[:2], y[:2])
    assert matrix.shape == (2, len(X)) and np.isfinite(matrix).all()


@pytest.mark.parametrize("preconditioner", ["kfac", "ekfac"])
def test_a_factored_preconditioner_needs_layer_structure(preconditioner, data):
    X, y = data
    model = MLPClassifier(hidden_layer_sizes=(3,), max_iter=30, random_state=0)
    refused = "solver='cg' is not supported|preconditioner.*not available"
    with pytest.raises(UnsupportedCombinationError, match=refused):
        InfluenceFunction(model, solver="cg",
                          solver_options={"preconditioner": preconditioner}).fit(X, y)  # fmt: skip
