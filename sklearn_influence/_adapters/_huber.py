"""Adapter for scikit-learn's ``HuberRegressor``: a loss whose output curvature needs t.

scikit-learn minimises, over the coefficients w, the intercept c and the scale σ > 0,

    Σ_i w_i [σ + H_ε(r_i / σ) σ] + α‖w‖²,    r_i = y_i − x_iᵀw − c,

with H_ε(z) = z² for |z| ≤ ε and 2ε|z| − ε² beyond (sample weights w_i, all 1 by default;
the intercept and σ are not penalised). Divided by W = Σ w_i this is the package's form
(DESIGN.md §2) exactly:

    θ = (w, c, σ),   h(θ, x) = (xᵀw + c, σ),
    L(h, t) = σ + r²/σ (|r| ≤ εσ), σ + 2ε|r| − σε² (beyond)   (:class:`._losses.HuberLoss`),
    R(θ) = (α/W)‖w‖²   (r = 2α/W on the coefficients, 0 on c and σ).

σ is a parameter like the others, so removing a point also moves the fitted scale, as a
refit does. h is linear in θ, so the Gauss-Newton matrix is the Hessian of J (away from the
kinks |r| = εσ): per row (2/σ) v vᵀ with v = (1, r/σ) inside the threshold, 0 beyond — an
output curvature that depends on the target, which is why
:meth:`~._losses.OutputLoss.hessian_factor` takes the targets. The PBRF's Bregman term
uses the generic definition (it depends on t too). A label-free query is measured by the
prediction xᵀw + c.

Retraining is scikit-learn's own fit on the rows kept (their weights kept); a warm start
sets ``warm_start=True`` on a copy of the fitted model (scikit-learn then starts from its
``coef_``, ``intercept_`` and ``scale_``).
"""

import copy

import numpy as np
import scipy.sparse
import torch
from sklearn.base import clone
from sklearn.linear_model import HuberRegressor
from sklearn.utils import _safe_indexing

from ._base import LayerStructure, ModelAdapter, ParameterBlock
from ._losses import HuberLoss

HUBER_MODELS = (HuberRegressor,)


def check_huber_configuration(estimator):
    """Every ``HuberRegressor`` setting maps onto the package's form; nothing is refused."""
    return type(estimator).__name__


class HuberAdapter(ModelAdapter):
    """Functional view of a fitted ``HuberRegressor`` (see the module notes).

    Parameters
    ----------
    estimator : fitted HuberRegressor
    n_train : int
        Number of training samples N.
    preprocess : callable or None
        Maps raw X to the model's input (the earlier steps of a pipeline).
    device : torch.device or None
    fit_state : None
        Unused (scikit-learn's fit is deterministic).
    sample_weight : ndarray of shape (N,) or None
        The weights the model was fitted with.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import HuberRegressor
    >>> from sklearn_influence._adapters._huber import HuberAdapter
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 3))
    >>> y = X @ [1.0, -2.0, 0.5] + rng.standard_t(2, 40)
    >>> adapter = HuberAdapter(HuberRegressor().fit(X, y), 40)
    >>> adapter.parameters().shape  # 3 coefficients, the intercept, σ
    torch.Size([5])
    >>> adapter.outputs(adapter.parameters(), adapter.inputs(X)).shape  # (prediction, σ)
    torch.Size([40, 2])
    """

    is_convex = True
    #: the measurement of a label-free query is the first output (σ is the second)
    single_prediction = True

    def __init__(
        self, estimator, n_train, *, preprocess=None, device=None, fit_state=None,
        sample_weight=None,
    ):  # fmt: skip
        if not hasattr(estimator, "scale_"):
            raise ValueError(
                "HuberRegressor is not fitted; fit it first or let the estimator fit it."
            )
        self.estimator = estimator
        self.n_train = n_train
        self.preprocess = preprocess
        self.fit_state = fit_state
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = torch.float64
        self.n_features = estimator.coef_.shape[0]
        self.n_outputs = 2
        self.is_classifier = False
        self.classes_ = None
        self.fit_intercept = bool(estimator.fit_intercept)
        self.loss = HuberLoss(estimator.epsilon)
        self._set_sample_weight(sample_weight)
        self._theta = self._pack(estimator)
        diagonal = np.zeros(self._theta.numel())
        diagonal[: self.n_features] = 2.0 * float(estimator.alpha) / self.total_weight
        self._decay = self._tensor(diagonal)

    def _pack(self, estimator):
        intercept = [float(estimator.intercept_)] if self.fit_intercept else []
        values = np.r_[np.ravel(estimator.coef_), intercept, float(estimator.scale_)]
        return self._tensor(values.astype(np.float64))

    # -- data ---------------------------------------------------------------------------
    def _model_input(self, X):
        return X if self.preprocess is None else self.preprocess(X)

    def inputs(self, X):
        Z = self._model_input(X)
        Z = Z.toarray() if scipy.sparse.issparse(Z) else np.asarray(Z)
        return self._tensor(self._checked_feature_matrix(Z.astype(np.float64), "HuberRegressor"))

    def targets(self, y):
        """The targets as a column (n, 1); the second output σ has none."""
        values = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if values.shape[1] != 1 or not np.all(np.isfinite(values)):
            raise ValueError(
                f"HuberRegressor takes one finite target per row; got y_test of shape "
                f"{np.shape(y)}{'' if np.all(np.isfinite(values)) else ' with NaN or infinity'}."
            )
        return self._tensor(values)

    # -- model --------------------------------------------------------------------------
    def parameters(self):
        return self._theta

    def outputs(self, theta, inputs):
        d = self.n_features
        prediction = inputs @ theta[:d]
        if self.fit_intercept:
            prediction = prediction + theta[d]
        return torch.stack([prediction, theta[-1].expand_as(prediction)], dim=-1)

    def regularizer_diagonal(self):
        return self._decay

    def layer_structure(self):
        """No Kronecker-factorable layer (the outputs mix a linear map and the scale σ): a
        factored curvature takes the exact diagonal block of every parameter."""
        n = self._theta.numel()
        return LayerStructure((), (ParameterBlock("theta", slice(0, n), (n,)),), n)

    # -- retraining ---------------------------------------------------------------------
    def retrain(self, X, y, *, exclude=(), warm_start=True):
        """Refit with scikit-learn on (X, y) without the rows in ``exclude``; a warm start
        begins at the fitted coefficients and scale."""
        if warm_start:
            model = copy.deepcopy(self.estimator).set_params(warm_start=True)
        else:
            model = clone(self.estimator)
        keep = np.setdiff1d(np.arange(len(y)), np.asarray(exclude, dtype=np.int64))
        fit_params = {}
        if self.sample_weight is not None:
            fit_params["sample_weight"] = self.sample_weight[keep]
        Z = self._model_input(X)
        model.fit(_safe_indexing(Z, keep), _safe_indexing(np.asarray(y), keep), **fit_params)
        return self._pack(model)


__all__ = ["HUBER_MODELS", "HuberAdapter", "check_huber_configuration"]
