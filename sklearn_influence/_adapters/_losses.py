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

    def hessian_factor(self, outputs):
        """A matrix A (shape ``(..., r, k)``) with AᵀA = ∇²_h L, independent of the target."""
        raise NotImplementedError

    def output_hessian(self, outputs):
        """∇²_h L at ``outputs``, shape ``(..., k, k)``."""
        factor = self.hessian_factor(outputs)
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

    def hessian_factor(self, outputs):
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

    def hessian_factor(self, outputs):
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

    def hessian_factor(self, outputs):
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

    def hessian_factor(self, outputs):
        k = outputs.shape[-1]
        eye = torch.eye(k, dtype=outputs.dtype, device=outputs.device)
        return 2.0**0.5 * eye.expand(*outputs.shape[:-1], k, k)

    def bregman(self, outputs, reference_outputs):
        return ((outputs - reference_outputs) ** 2).sum(-1)

    def predicted_targets(self, outputs):
        if outputs.shape[-1] == 1:
            return (outputs > 0).to(outputs.dtype)
        return F.one_hot(outputs.argmax(-1), outputs.shape[-1]).to(outputs.dtype)
