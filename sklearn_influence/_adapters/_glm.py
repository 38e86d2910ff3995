"""Adapter for scikit-learn's generalised linear models (Poisson, Gamma, Tweedie).

scikit-learn minimises (1/(2N)) Σ_i d(y_i, μ_i) + (α/2)‖w‖² with μ = link⁻¹(η), η = Xw + b,
the unit deviance d of the Tweedie distribution of the estimator's power p, and an
unpenalised intercept. The adapter keeps the output linear in θ, h = η (so everything linear
— Kronecker Gauss-Newton, exact Newton retraining, the PBRF — is reused), and maps the
objective exactly:

    L(η, y) = ½ d(y, link⁻¹(η))   (the full half deviance, zero at μ = y)
    R(θ)    = (α/2)‖w‖²            (r = α for the weights, 0 for the intercept)

With ``sample_weight`` scikit-learn minimises (1/(2W)) Σ_i w_i d(y_i, μ_i) + (α/2)‖w‖² with
W = Σ_i w_i, already the package's weighted mean Σ w_i L_i / W + R: r = α either way.

=====================  =====  ========  ===========================================
estimator              power  link      curvature in η: Hessian / Gauss-Newton (Fisher)
=====================  =====  ========  ===========================================
PoissonRegressor       1      log       μ / μ (canonical: equal)
GammaRegressor         2      log       y/μ / 1
TweedieRegressor       p      log       μ^(1−p)((2−p)μ + (p−1)y) / μ^(2−p)
TweedieRegressor       p      identity  μ^(−p−1)((1−p)μ + p·y) / μ^(−p)
=====================  =====  ========  ===========================================

(``link="auto"`` is the identity for p ≤ 0 and the log link otherwise, as in scikit-learn.
Every power scikit-learn accepts is supported, including 0 < p < 1, for which no distribution
exists but the deviance is still a strictly consistent loss; "Fisher information" then means
the Hessian at y = μ. The identity link with p ≠ 0 needs positive predictions μ = η, as
scikit-learn's own fit does.)

**Gauss-Newton.** For a non-canonical link the Hessian of L in η depends on y (it can even be
negative: Tweedie p > 2 or p < 1 with the log link). The package's label-free, positive
semi-definite output curvature is the GLM's Fisher information (dμ/dη)²/V(μ), V(μ) = μ^p:
the Hessian of L at y = μ, i.e. the Gauss-Newton matrix of the split at the canonical
parameter, the matrix of Fisher scoring (IRLS). For the canonical links (Poisson with log,
p = 0 with identity) it equals the Hessian; ``curvature="hessian"`` is always the exact
Hessian.

**Bregman divergence (PBRF).** D(η, ηˢ) = ½ d(μˢ, μ) = L(η, μ(ηˢ)): the Kullback-Leibler
divergence between the fitted distribution at ηˢ and the one at η (per unit dispersion),
label-free like the softmax/Bernoulli KL of the classifiers. It is the Bregman divergence of
the log-likelihood in the canonical parameter; its second derivative at η = ηˢ is the Fisher
weight, so the PBRF's Hessian at θˢ is exactly G + λI and the influence estimate is still its
first-order approximation. For the canonical links it is the Bregman divergence of L in η
itself.

**Measurement without labels.** A label-free regressor query is measured by its prediction
(DESIGN.md §2), here the mean μ = link⁻¹(η) that ``predict`` returns — not the linear
predictor η — with gradient (dμ/dη)·z̃ (μ·z̃ for the log link). With ``y_test`` the
measurement is the query's half deviance.
"""

import numpy as np
import torch
from sklearn.linear_model import GammaRegressor, PoissonRegressor, TweedieRegressor

from ._linear import LinearModelAdapter
from ._losses import OutputLoss

GLM_MODELS = (PoissonRegressor, GammaRegressor, TweedieRegressor)

LINKS = ("log", "identity")


def glm_power_and_link(estimator):
    """(power p, link) of a Poisson/Gamma/Tweedie estimator, resolving ``link="auto"``."""
    if isinstance(estimator, PoissonRegressor):
        return 1.0, "log"
    if isinstance(estimator, GammaRegressor):
        return 2.0, "log"
    power = float(estimator.power)
    link = estimator.link
    if link == "auto":
        link = "identity" if power <= 0 else "log"
    return power, link


def check_glm_configuration(estimator):
    """Refuse GLM settings the adapter cannot map (scikit-learn validates the rest at fit)."""
    power, link = glm_power_and_link(estimator)
    name = type(estimator).__name__
    if not np.isfinite(power):
        raise ValueError(f"{name}: power={power} is not supported. Use a finite power.")
    if link not in LINKS:
        raise ValueError(
            f"{name}: link={estimator.link!r} is not supported. Use 'auto', 'log' or 'identity'."
        )
    return name


class TweedieHalfDeviance(OutputLoss):
    """L(η, y) = ½ d_p(y, μ) with μ = link⁻¹(η): half the Tweedie unit deviance.

    d_p(y, μ) = 2[max(y,0)^(2−p)/((1−p)(2−p)) − y μ^(1−p)/(1−p) + μ^(2−p)/(2−p)] for general p,
    (y − μ)² for p = 0, 2[y log(y/μ) − y + μ] for p = 1, 2[log(μ/y) + y/μ − 1] for p = 2 —
    the deviance of :func:`sklearn.metrics.mean_tweedie_deviance`. One output (k = 1).
    """

    def __init__(self, power, link):
        if link not in LINKS:
            raise ValueError(f"Unknown link {link!r}; choose one of {LINKS}.")
        self.power = float(power)
        self.link = link

    # -- the model's mean -----------------------------------------------------------------
    def mean(self, outputs):
        """μ = link⁻¹(η)."""
        return torch.exp(outputs) if self.link == "log" else outputs

    def _mean_power(self, outputs, exponent):
        """μ^exponent, computed as exp(exponent·η) for the log link (no overflow of μ)."""
        if self.link == "log":
            return torch.exp(exponent * outputs)
        return outputs**exponent

    def _log_mean(self, outputs):
        return outputs if self.link == "log" else torch.log(outputs)

    # -- loss -----------------------------------------------------------------------------
    def half_deviance(self, outputs, targets):
        """½ d_p(y, μ(η)) elementwise."""
        p, y = self.power, targets
        if p == 0:
            return 0.5 * (y - self.mean(outputs)) ** 2
        if p == 1:
            return torch.special.xlogy(y, y) - y * self._log_mean(outputs) - y + self.mean(outputs)
        if p == 2:
            return self._log_mean(outputs) - torch.log(y) + y * self._mean_power(outputs, -1.0) - 1
        constant = torch.clamp(y, min=0) ** (2 - p) / ((1 - p) * (2 - p))
        return (
            constant
            - y * self._mean_power(outputs, 1 - p) / (1 - p)
            + self._mean_power(outputs, 2 - p) / (2 - p)
        )

    def __call__(self, outputs, targets):
        return self.half_deviance(outputs, targets).sum(-1)

    def output_gradient(self, outputs, targets):
        """∂L/∂η = (μ − y)(dμ/dη)/μ^p: μ^(2−p) − y μ^(1−p) (log link), (μ − y) μ^(−p) (identity)."""
        p, y = self.power, targets
        if self.link == "log":
            return self._mean_power(outputs, 2 - p) - y * self._mean_power(outputs, 1 - p)
        residual = outputs - y
        return residual if p == 0 else residual * self._mean_power(outputs, -p)

    # -- curvature ------------------------------------------------------------------------
    def fisher_weight(self, outputs):
        """(dμ/dη)² / μ^p: μ^(2−p) for the log link, μ^(−p) for the identity link."""
        if self.link == "log":
            return self._mean_power(outputs, 2 - self.power)
        if self.power == 0:
            return torch.ones_like(outputs)
        return self._mean_power(outputs, -self.power)

    def hessian_factor(self, outputs, targets=None):
        # the Fisher weight: label-free and ≥ 0 (the Hessian at y = μ)
        return torch.diag_embed(self.fisher_weight(outputs).sqrt())

    def bregman(self, outputs, reference_outputs):
        # KL between the fitted distribution at the reference and the one at η:
        # ½ d(μ_ref, μ) = L(η, μ_ref), whose value and slope vanish at η = η_ref
        return self(outputs, self.mean(reference_outputs))

    def predicted_targets(self, outputs):
        """The prediction μ = link⁻¹(η) (the target at which the loss is zero)."""
        return self.mean(outputs).detach()

    def check_targets(self, values):
        """Raise a clear error for targets outside the distribution's support."""
        p = self.power
        if 0 < p < 2 and np.any(values < 0):
            problem, fix = "negative values", "non-negative targets"
        elif p >= 2 and np.any(values <= 0):
            problem, fix = "zero or negative values", "strictly positive targets"
        else:
            return
        raise ValueError(
            f"y_test contains {problem}, outside the support of the Tweedie deviance with "
            f"power={p:g}; pass {fix}, as in training."
        )


class GeneralizedLinearModelAdapter(LinearModelAdapter):
    """Functional view of a fitted PoissonRegressor, GammaRegressor or TweedieRegressor.

    The output is the linear predictor η = W̃ z̃ (so the layout is the linear models' one);
    L(η, y) is half the unit deviance and R = (α/2)‖w‖². See the module docstring for the
    curvatures (the Gauss-Newton matrix is the Fisher information, which differs from the
    Hessian for a non-canonical link), the Bregman divergence of the PBRF, and the label-free
    measurement. Retraining refits the estimator with scikit-learn (warm-started from θˢ).
    """

    @property
    def is_convex(self):
        """Half the Tweedie deviance is convex in η for the log link with 1 ≤ p ≤ 2 (Poisson,
        Gamma, compound Poisson) and for the normal (p = 0, identity link); other settings
        need not be."""
        power, link = glm_power_and_link(self.estimator)
        return (link == "log" and 1 <= power <= 2) or (link == "identity" and power == 0)

    def _check_configuration(self, estimator):
        check_glm_configuration(estimator)

    def _make_loss(self, estimator):
        return TweedieHalfDeviance(*glm_power_and_link(estimator))

    def _penalty_for(self, estimator, total_weight, n_rows=None):
        # scikit-learn averages the deviance over the weight sum: r = α with or without weights
        return float(estimator.alpha)

    def prediction(self, outputs):
        """The prediction μ = link⁻¹(η), what ``predict`` returns (shape (n,))."""
        return self.loss.mean(outputs)[..., 0]

    def prediction_gradient(self, outputs):
        """dμ/dη: μ for the log link, 1 for the identity link (shape like ``outputs``)."""
        return self.loss.mean(outputs) if self.loss.link == "log" else torch.ones_like(outputs)

    def targets(self, y):
        values = super().targets(y)
        self.loss.check_targets(values.detach().cpu().numpy())
        return values
