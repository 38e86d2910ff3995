"""Per-example losses on model outputs, their output gradients and Hessians, Bregman divergences.

Every loss works on the last axis: ``outputs`` has shape ``(..., k)`` and ``targets`` the
same shape (one-hot rows for classifiers, values for regressors), so the same function
serves a single example inside :func:`torch.func.vmap` and a whole batch.
"""

import torch
from torch.func import grad
from torch.nn import functional as F


class OutputLoss:
    """A loss L(h, t) that is convex in the outputs h.

    Subclasses implement :meth:`__call__`, :meth:`hessian_factor` and :meth:`bregman`, and
    may override :meth:`output_gradient` with a closed form (the default differentiates
    :meth:`__call__`).
    """

    #: whether the loss belongs to a classifier (targets are one-hot rows)
    is_classification = False
    #: whether ∇²_h L depends on the target t (robust losses such as Huber's): the curvature
    #: then needs the training targets, and :meth:`hessian_factor` refuses ``targets=None``
    hessian_needs_targets = False

    def __call__(self, outputs, targets):
        raise NotImplementedError

    def output_gradient(self, outputs, targets):
        """∇_h L(h, t) for every row, shape ``(..., k)`` like ``outputs``.

        The generic fallback differentiates :meth:`__call__` with :func:`torch.func.grad`
        (each row's loss depends on its own outputs only, so the gradient of the sum is the
        per-row gradient); it composes with autograd and :mod:`torch.func` like the closed
        forms of the subclasses.
        """
        return grad(lambda h: self(h, targets).sum())(outputs)

    def hessian_factor(self, outputs, targets=None):
        """A matrix A (shape ``(..., r, k)``) with AᵀA = ∇²_h L(h, t).

        ``targets`` (shape like ``outputs``) are used only by losses whose output curvature
        depends on the target (:attr:`hessian_needs_targets`); the others ignore them.
        """
        raise NotImplementedError

    def output_hessian(self, outputs, targets=None):
        """∇²_h L at ``outputs`` (and ``targets``, see :meth:`hessian_factor`), shape
        ``(..., k, k)``."""
        factor = self.hessian_factor(outputs, targets)
        return factor.transpose(-1, -2) @ factor

    def bregman(self, outputs, reference_outputs):
        """D_L(h, h_ref) = L(h) − L(h_ref) − ∇L(h_ref)ᵀ(h − h_ref); it does not depend on t."""
        raise NotImplementedError

    def predicted_targets(self, outputs):
        """Targets at the model's own prediction (classifiers: one-hot of the arg-max)."""
        raise NotImplementedError


class SquaredError(OutputLoss):
    """L(h, t) = scale · ‖h − t‖² summed over the outputs."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, outputs, targets):
        return self.scale * ((outputs - targets) ** 2).sum(-1)

    def output_gradient(self, outputs, targets):
        return (2.0 * self.scale) * (outputs - targets)

    def hessian_factor(self, outputs, targets=None):
        k = outputs.shape[-1]
        eye = torch.eye(k, dtype=outputs.dtype, device=outputs.device)
        return (2.0 * self.scale) ** 0.5 * eye.expand(*outputs.shape[:-1], k, k)

    def bregman(self, outputs, reference_outputs):
        return self.scale * ((outputs - reference_outputs) ** 2).sum(-1)

    def predicted_targets(self, outputs):
        return outputs.detach()


class SoftmaxCrossEntropy(OutputLoss):
    """Multinomial log-loss on logits h: L = logsumexp(h) − hᵀt with one-hot t."""

    is_classification = True

    def __call__(self, outputs, targets):
        return torch.logsumexp(outputs, -1) - (outputs * targets).sum(-1)

    def output_gradient(self, outputs, targets):
        return torch.softmax(outputs, -1) - targets

    def hessian_factor(self, outputs, targets=None):
        # diag(p) − ppᵀ = AᵀA with A = diag(√p)(I − 1pᵀ)
        probs = torch.softmax(outputs, -1)
        k = outputs.shape[-1]
        eye = torch.eye(k, dtype=outputs.dtype, device=outputs.device)
        centred = eye - probs.unsqueeze(-2)
        return probs.sqrt().unsqueeze(-1) * centred

    def bregman(self, outputs, reference_outputs):
        # KL(softmax(h_ref) ‖ softmax(h))
        log_p = torch.log_softmax(outputs, -1)
        log_ref = torch.log_softmax(reference_outputs, -1)
        return (log_ref.exp() * (log_ref - log_p)).sum(-1)

    def predicted_targets(self, outputs):
        return F.one_hot(outputs.argmax(-1), outputs.shape[-1]).to(outputs.dtype)


def _softplus(x):
    """log(1 + eˣ) without torch.nn.functional.softplus's linear cut-off above x = 20, which
    would zero the second derivative of confident outputs."""
    return torch.logaddexp(x, torch.zeros_like(x))


class BinaryLogLoss(OutputLoss):
    """Binary log-loss on one logit per output: L = Σ softplus(h) − h·t.

    With ``k > 1`` outputs this is the one-vs-rest loss of ``SGDClassifier``: each output is an
    independent binary problem whose target is the one-hot row.
    """

    is_classification = True

    def __call__(self, outputs, targets):
        return (_softplus(outputs) - outputs * targets).sum(-1)

    def output_gradient(self, outputs, targets):
        return torch.sigmoid(outputs) - targets

    def hessian_factor(self, outputs, targets=None):
        # σ(h)σ(−h) rather than σ(1 − σ): no cancellation for confident outputs
        return torch.diag_embed((torch.sigmoid(outputs) * torch.sigmoid(-outputs)).sqrt())

    def bregman(self, outputs, reference_outputs):
        # Bernoulli KL(σ(h_ref) ‖ σ(h)), summed over outputs
        p_ref = torch.sigmoid(reference_outputs)
        return (
            _softplus(outputs)
            - _softplus(reference_outputs)
            - p_ref * (outputs - reference_outputs)
        ).sum(-1)

    def predicted_targets(self, outputs):
        if outputs.shape[-1] == 1:
            return (outputs > 0).to(outputs.dtype)
        return F.one_hot(outputs.argmax(-1), outputs.shape[-1]).to(outputs.dtype)


class SignedSquaredError(OutputLoss):
    """RidgeClassifier's loss: L(h, t) = ‖h − (2t − 1)‖² on its ±1 target coding.

    ``targets`` are one-hot rows (or the 0/1 positive-class indicator of a binary model with one
    output), as for every classifier; scikit-learn's ridge classifiers regress the decision
    values on the same rows mapped to {−1, +1}.
    """

    is_classification = True

    def __call__(self, outputs, targets):
        return ((outputs - (2.0 * targets - 1.0)) ** 2).sum(-1)

    def output_gradient(self, outputs, targets):
        return 2.0 * (outputs - (2.0 * targets - 1.0))

    def hessian_factor(self, outputs, targets=None):
        k = outputs.shape[-1]
        eye = torch.eye(k, dtype=outputs.dtype, device=outputs.device)
        return 2.0**0.5 * eye.expand(*outputs.shape[:-1], k, k)

    def bregman(self, outputs, reference_outputs):
        return ((outputs - reference_outputs) ** 2).sum(-1)

    def predicted_targets(self, outputs):
        if outputs.shape[-1] == 1:
            return (outputs > 0).to(outputs.dtype)
        return F.one_hot(outputs.argmax(-1), outputs.shape[-1]).to(outputs.dtype)


class HuberLoss(OutputLoss):
    """scikit-learn's ``HuberRegressor`` loss per row, on outputs h = (μ, σ) and target t.

    With r = t − μ: L = σ + r²/σ for |r| ≤ εσ, else σ + 2ε|r| − σε² (the objective of
    :func:`sklearn.linear_model._huber._huber_loss_and_gradient` per unit of sample weight;
    σ, the scale it fits, is the second output). L is jointly convex in (μ, σ) (a
    perspective of the Huber function). Its output Hessian depends on the target: inside the
    threshold ∇²_h L = (2/σ) v vᵀ with v = (1, r/σ) (rank one, A = √(2/σ) vᵀ), outside it is
    zero (L is linear in (μ, σ) there).
    """

    hessian_needs_targets = True

    def __init__(self, epsilon):
        self.epsilon = float(epsilon)

    def _parts(self, outputs, targets):
        mu, sigma = outputs[..., 0], outputs[..., 1]
        residual = targets[..., 0] - mu
        inside = residual.abs() <= self.epsilon * sigma
        return residual, sigma, inside

    def __call__(self, outputs, targets):
        residual, sigma, inside = self._parts(outputs, targets)
        quadratic = residual**2 / sigma
        linear = 2.0 * self.epsilon * residual.abs() - sigma * self.epsilon**2
        return sigma + torch.where(inside, quadratic, linear)

    def output_gradient(self, outputs, targets):
        residual, sigma, inside = self._parts(outputs, targets)
        ratio = residual / sigma
        d_mu = torch.where(inside, -2.0 * ratio, -2.0 * self.epsilon * torch.sign(residual))
        d_sigma = 1.0 - torch.where(inside, ratio**2, torch.full_like(ratio, self.epsilon**2))
        return torch.stack([d_mu, d_sigma], dim=-1)

    def hessian_factor(self, outputs, targets=None):
        if targets is None:
            raise ValueError(
                "The Huber loss's output curvature depends on the targets (inside or outside "
                "the threshold ε·σ); pass the training targets to the curvature."
            )
        residual, sigma, inside = self._parts(outputs, targets)
        scale = torch.where(inside, (2.0 / sigma).sqrt(), torch.zeros_like(sigma))
        factor = torch.stack([scale, scale * residual / sigma], dim=-1)
        return factor.unsqueeze(-2)  # (..., 1, 2)

    def predicted_targets(self, outputs):
        return outputs[..., :1].detach()
