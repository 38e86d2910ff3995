"""RegressionDiagnostics: leverage, Cook's distance, DFBETAS, DFFITS, studentized residuals."""

import joblib
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._adapters import unwrap
from ._base import (
    MODEL_CONSTRAINTS,
    WeightedFitRouterMixin,
    fit_model_and_adapter,
    routed_fit_params,
    warn_if_not_stationary,
)
from ._responses._diagnostics import METHODS, check_single_output, regression_diagnostics
from ._responses._newton import minimize_convex
from ._torch_utils import resolve_device, to_numpy
from ._validation import validate_query_data, validate_sample_weight, validate_training_data

#: the columns of transform before the DFBETAS, in order
COLUMNS = (
    "leverage",
    "studentized_residual",
    "external_studentized_residual",
    "cooks_distance",
    "dffits",
)


class RegressionDiagnostics(WeightedFitRouterMixin, TransformerMixin, BaseEstimator):
    """Case-deletion diagnostics of a linear model or GLM: which rows move the fit.

    Fits the model (or takes a :class:`~sklearn.frozen.FrozenEstimator`) and computes, for
    every training row i, the classic regression diagnostics (Belsley, Kuh & Welsch 1980;
    Cook & Weisberg 1982; for GLMs Pregibon 1981 and Williams 1987), with X̃ the design
    with its intercept column, W the prior weights (``sample_weight``), Ω the Fisher (IRLS)
    weights ωᵢ = wᵢ (dμ/dη)²/V(μ) (for least squares Ω = W), I = X̃ᵀΩX̃ + the penalty's
    Hessian, p the number of parameters (for a penalised model the effective number
    Σᵢ hᵢ), rᵢ the Pearson residual √wᵢ (yᵢ − μᵢ)/√V(μᵢ) (least squares: √wᵢ eᵢ), φ the
    dispersion (σ² for least squares, estimated as Σ rᵢ²/(n − p); 1 for the binomial and
    Poisson families) and φ₍ᵢ₎ = ((n − p)φ − rᵢ²/(1 − hᵢ))/(n − p − 1) the same without row i:

    * **leverage** hᵢ = ωᵢ x̃ᵢᵀ I⁻¹ x̃ᵢ, the diagonal of the hat matrix Ω½X̃I⁻¹X̃ᵀΩ½;
    * **internally studentized residual** rᵢ / √(φ (1 − hᵢ));
    * **externally studentized residual** (studentized deletion residual)
      sign(rᵢ) √(dᵢ + hᵢ rᵢ²/(1 − hᵢ)) / √φ₍ᵢ₎ with dᵢ the squared deviance residual — for
      least squares exactly eᵢ√wᵢ / (σ₍ᵢ₎ √(1 − hᵢ)), for GLMs Williams' likelihood residual
      (R's ``rstudent.glm``);
    * **Cook's distance** Dᵢ = (θ̂ − θ̂₍ᵢ₎)ᵀ I (θ̂ − θ̂₍ᵢ₎) / (p φ), for least squares
      rᵢ² hᵢ / (p σ² (1 − hᵢ)²);
    * **DFFITS** √ωᵢ x̃ᵢᵀ(θ̂ − θ̂₍ᵢ₎) / √(φ₍ᵢ₎ hᵢ), the change of the fitted value (linear
      predictor) at row i, for least squares eᵢ√wᵢ √hᵢ / (σ₍ᵢ₎ (1 − hᵢ));
    * **DFBETAS** (θ̂ⱼ − θ̂₍ᵢ₎ⱼ) / √(φ* (I⁻¹)ⱼⱼ), φ* = φ₍ᵢ₎ for least squares (as
      statsmodels' ``OLSInfluence``) and φ for GLMs (as its ``GLMInfluence``);

    where θ̂₍ᵢ₎ is the model refit without row i — exactly (``method="exact"``: scikit-learn's
    own refit, computed for all rows at once at about the cost of a fit) or by its one-step
    approximation θ̂ + I₍ᵢ₎⁻¹∇ℓᵢ (``method="one_step"``, the Newton step from θ̂ with the
    leave-one-out Fisher information; what statsmodels' ``GLMInfluence`` uses). For least
    squares both are exact. Penalised models (``Ridge``, ``LogisticRegression`` with a
    finite ``C``, GLMs with ``alpha > 0``) use the penalised information.

    Parameters
    ----------
    estimator : estimator object
        A single-output linear model or GLM: ``LinearRegression``, ``Ridge``, ``RidgeCV``,
        binary ``LogisticRegression``(``CV``), ``PoissonRegressor``, ``GammaRegressor``,
        ``TweedieRegressor``, ``SGDRegressor``, binary ``RidgeClassifier`` or
        ``SGDClassifier(loss="log_loss")``; a :class:`~sklearn.pipeline.Pipeline` ending in one
        (the earlier steps are held fixed), or a :class:`~sklearn.frozen.FrozenEstimator`.
    method : {"exact", "one_step"}, default="exact"
        How θ̂₍ᵢ₎ is obtained (Cook's distance, DFFITS, DFBETAS); see above.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``; results are returned as numpy on the CPU.

    Attributes
    ----------
    estimator_ : estimator object
        The fitted model.
    leverage_ : ndarray of shape (n_samples,)
        Hat-matrix diagonal hᵢ.
    studentized_residuals_ : ndarray of shape (n_samples,)
        Internally studentized residuals.
    external_studentized_residuals_ : ndarray of shape (n_samples,)
        Externally studentized (deletion) residuals.
    cooks_distance_ : ndarray of shape (n_samples,)
    dffits_ : ndarray of shape (n_samples,)
    dfbetas_ : ndarray of shape (n_samples, n_parameters)
        Columns in the order of ``parameter_names_``.
    loo_parameters_ : ndarray of shape (n_samples, n_parameters)
        θ̂₍ᵢ₎, the parameters refit without each row (``[coef, intercept]``).
    parameters_ : ndarray of shape (n_parameters,)
        θ̂, the fitted parameters (refined to the exact optimum).
    parameter_names_ : ndarray of str
        The model's feature names (``x0``, … without names) and ``"intercept"``.
    covariance_ : ndarray of shape (n_parameters, n_parameters)
        φ I⁻¹.
    dispersion_ : float
        φ.
    effective_parameters_ : float
        p = Σᵢ hᵢ (the number of parameters for an unpenalised full-rank model).
    converged_ : ndarray of bool, shape (n_samples,)
        Whether each exact refit reached the rounding level of its parameters.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Defined when X has string column names.

    See Also
    --------
    RegressionDiagnosticsDisplay : Index plot of Cook's distance and the leverage plot.
    LeaveOneOut : Exact refits of any supported model, with their effect on queries.

    Notes
    -----
    :meth:`transform` describes the training rows, so it accepts only the data passed to
    ``fit`` (use :meth:`fit_transform`). With ``set_output(transform="pandas")`` the table is
    a DataFrame indexed like X.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LinearRegression
    >>> from sklearn_influence import RegressionDiagnostics
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(50, 2))
    >>> y = X @ [1.0, -2.0] + rng.normal(size=50)
    >>> y[7] += 10  # an outlier
    >>> diagnostics = RegressionDiagnostics(LinearRegression()).fit(X, y)
    >>> int(np.argmax(diagnostics.cooks_distance_))
    7
    >>> diagnostics.get_feature_names_out()[[0, 3, 4]].tolist()
    ['leverage', 'cooks_distance', 'dffits']
    >>> bool(np.isclose(diagnostics.leverage_.sum(), 3))  # trace of the hat matrix = p
    True
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"])],
        "method": [StrOptions(set(METHODS))],
        "device": MODEL_CONSTRAINTS["device"],
    }

    def __init__(self, estimator, *, method="exact", device="cpu"):
        self.estimator = estimator
        self.method = method
        self.device = device

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None):
        """Fit the model (unless frozen) and compute every row's diagnostics.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,)
            Training targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Positive prior weights of the rows (WLS, weighted GLMs).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X, y = validate_training_data(self, X, y)
        sample_weight = validate_sample_weight(self, sample_weight, len(y))
        device = resolve_device(self.device)
        fit_params = routed_fit_params(self, sample_weight)
        self.estimator_, adapter = fit_model_and_adapter(self.estimator, X, y, device, fit_params)
        check_single_output(adapter, type(self).__name__)
        warn_if_not_stationary(adapter, type(self).__name__)
        inputs, targets = adapter.inputs(X), adapter.targets(y)
        reference = minimize_convex(
            adapter, adapter.parameters(), inputs, targets, adapter.row_weights
        )
        result = regression_diagnostics(
            adapter, reference, inputs, targets, adapter.sample_weight, method=self.method
        )
        self._store(result, reference, adapter)
        self._training_hash = joblib.hash(X)
        return self

    def _store(self, result, reference, adapter):
        self.leverage_ = result.leverage
        self.studentized_residuals_ = result.studentized_residual
        self.external_studentized_residuals_ = result.external_studentized_residual
        self.cooks_distance_ = result.cooks_distance
        self.dffits_ = result.dffits
        self.dfbetas_ = result.dfbetas
        self.loo_parameters_ = result.loo_parameters
        self.parameters_ = to_numpy(reference)
        self.covariance_ = result.covariance
        self.dispersion_ = result.dispersion
        self.effective_parameters_ = result.effective_parameters
        self.converged_ = result.converged
        self.parameter_names_ = self._parameter_names(adapter)

    def _parameter_names(self, adapter):
        _, model = unwrap(self.estimator_)
        names = getattr(model, "feature_names_in_", None)
        if names is None and model is self.estimator_:
            names = getattr(self, "feature_names_in_", None)
        if names is None:
            names = [f"x{j}" for j in range(adapter.n_features)]
        names = [str(name) for name in names]
        return np.asarray(names + (["intercept"] if adapter.fit_intercept else []), dtype=object)

    def transform(self, X):
        """The diagnostics table of the training rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The training inputs passed to ``fit`` (the diagnostics describe those rows).

        Returns
        -------
        table : ndarray of shape (n_samples, 5 + n_parameters)
            Columns :meth:`get_feature_names_out`: leverage, internally and externally
            studentized residuals, Cook's distance, DFFITS, then one DFBETAS per parameter.
        """
        check_is_fitted(self, "leverage_")
        X = validate_query_data(self, X)
        if joblib.hash(X) != self._training_hash:
            raise ValueError(
                "RegressionDiagnostics describes the rows it was fitted on, and X is not that "
                "data. Call fit_transform(X, y) on the rows you want to diagnose."
            )
        columns = [
            self.leverage_,
            self.studentized_residuals_,
            self.external_studentized_residuals_,
            self.cooks_distance_,
            self.dffits_,
        ]
        return np.column_stack([*columns, self.dfbetas_])

    def fit_transform(self, X, y, sample_weight=None):
        """Fit, then return the diagnostics table of the rows (see :meth:`transform`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        table : ndarray of shape (n_samples, 5 + n_parameters)
        """
        return self.fit(X, y, sample_weight=sample_weight).transform(X)

    def get_feature_names_out(self, input_features=None):
        """Names of the diagnostics columns.

        Parameters
        ----------
        input_features : None
            Unused; the columns do not depend on it.

        Returns
        -------
        names : ndarray of str
            The five per-row diagnostics, then ``dfbetas_<parameter>`` per parameter.
        """
        check_is_fitted(self, "leverage_")
        dfbetas = [f"dfbetas_{name}" for name in self.parameter_names_]
        return np.asarray([*COLUMNS, *dfbetas], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.sparse = False
        return tags
