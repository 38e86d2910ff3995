"""The adapter contract: a functional torch view of one fitted model.

An adapter maps its estimator's own training objective onto the package's form
J(θ) = (1/N) Σ_i L(h(θ, x_i), t_i) + R(θ) with R(θ) = ½ Σ_j r_j θ_j², exactly, scale
included (see DESIGN.md §2). Everything downstream — gradients, curvature, solvers,
responses — talks to a model only through this interface.

It also describes the model's layer structure (:class:`LayerStructure`): which parts of θ
are the weights and biases of Kronecker-factorable layers (``nn.Linear``, ``nn.Conv2d``),
and which parameters no such layer covers — what factored curvatures (K-FAC) need.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .._torch_utils import array_to_tensor


@dataclass(frozen=True)
class Layer:
    """One Kronecker-factorable layer of a model: out = W a (+ b) per position.

    Attributes
    ----------
    name : str
        The module's name (``""`` for a model that is one layer).
    kind : {"linear", "conv2d"}
    weight : slice
        θ[weight] is the weight, flattened row-major in ``weight_shape`` (out, in) for a
        linear layer, (out, in / groups, kh, kw) for a convolution.
    weight_shape : tuple of int
    bias : slice or None
        θ[bias] is the bias (shape (out,)); None when the layer has no trainable bias.
    conv : dict or None
        For ``"conv2d"``: ``stride``, ``padding``, ``dilation``, ``groups`` of the module.
    module : torch.nn.Module or None
        The adapter's own module of this layer (its forward pass runs through it); None when
        the layer is the whole model, whose input is the adapter's input and whose output
        is h.
    """

    name: str
    kind: str
    weight: slice
    weight_shape: tuple
    bias: slice | None = None
    conv: dict | None = None
    module: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ParameterBlock:
    """A parameter that no :class:`Layer` covers: θ[span] reshaped to ``shape``."""

    name: str
    span: slice
    shape: tuple


@dataclass(frozen=True)
class LayerStructure:
    """The layers of a model and the parameters outside them; together they cover θ once.

    Attributes
    ----------
    layers : tuple of Layer
    uncovered : tuple of ParameterBlock
        Parameters of other modules (LayerNorm, embeddings, …), listed so that nothing is
        silently dropped.
    n_params : int
        p, the length of θ.
    """

    layers: tuple
    uncovered: tuple
    n_params: int


class ModelAdapter:
    """Base class of the adapters.

    Attributes set by subclasses
    ----------------------------
    loss : OutputLoss
        The per-example loss on outputs.
    is_classifier : bool
    classes_ : ndarray or None
        Class labels in output order (classifiers).
    n_outputs : int
        Number of model outputs k.
    device, dtype : torch device and dtype of every tensor the adapter returns.
    is_convex : bool
        True when J is convex in θ, so that a fitted model should sit at its minimiser: the
        stationarity check of ``fit`` warns when it does not (:func:`check_stationarity`).
    linear_layout : bool
        True when h(θ, z) = W̃ [z, 1] with θ = W̃.ravel() row-major, shape (k, d+1) — lets the
        curvature module use the Kronecker structure of linear models.
    """

    linear_layout = False
    is_convex = False
    #: the estimator's per-row training weights w_i (sample_weight times any class weights,
    #: a float64 ndarray of shape (N,)), or None when every row has weight 1
    sample_weight = None
    #: w̃_i = N w_i / W with W = Σ w_i (a tensor of shape (N,), mean 1), or None: the weights
    #: of the engine's mean form (1/N) Σ w̃_i L_i = Σ w_i L_i / W (see :meth:`removal_weights`)
    row_weights = None

    @property
    def total_weight(self):
        """W = Σ w_i, the total training weight (N without weights)."""
        return self.n_train if self.sample_weight is None else float(self.sample_weight.sum())

    def _set_sample_weight(self, sample_weight):
        """Record per-row training weights w (or none): :attr:`sample_weight` and the mean-1
        :attr:`row_weights` w̃ = N w / W of the engine's mean form."""
        if sample_weight is None:
            return
        weights = np.asarray(sample_weight, dtype=np.float64)
        if weights.shape != (self.n_train,):
            raise ValueError(
                f"sample_weight has shape {weights.shape} but the model has {self.n_train} "
                "training rows; pass one weight per training row."
            )
        self.sample_weight = weights
        self.row_weights = self._tensor(weights * (self.n_train / float(weights.sum())))

    def removal_weights(self, indices):
        """N ε_m = w̃_m for the training rows ``indices`` (a tensor), or None without weights.

        Removing point m removes all of its weight: ε_m = w_m / W = w̃_m / N (1/N unweighted).
        """
        if self.row_weights is None:
            return None
        return self.row_weights[indices]

    def prediction(self, outputs):
        """The measurement of a query without a label (single-output regressors): the
        prediction itself, here the first output (shape (n,))."""
        return outputs[..., 0]

    def prediction_gradient(self, outputs):
        """∂ prediction / ∂h for every row, shape like ``outputs`` (here e₀)."""
        gradient = torch.zeros_like(outputs)
        gradient[..., 0] = 1.0
        return gradient

    # -- data ---------------------------------------------------------------------------
    def inputs(self, X):
        """Inputs as the tensor that :meth:`outputs` consumes (after any preprocessing)."""
        raise NotImplementedError

    def targets(self, y):
        """Targets as a float tensor of shape (n, k): one-hot rows for classifiers."""
        y = np.asarray(y)
        if self.is_classifier:
            return self._one_hot(y)
        values = y.astype(np.float64, copy=False).reshape(len(y), -1)
        if values.shape[1] != self.n_outputs:
            raise ValueError(
                f"y_test has {values.shape[1]} target column(s) but the model predicts "
                f"{self.n_outputs}; pass targets shaped like the training targets."
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("y_test contains NaN or infinity; remove or impute those rows.")
        return self._tensor(values)

    def _one_hot(self, y):
        y = np.ravel(y)
        classes = self.classes_
        positions = np.searchsorted(classes, y)
        positions = np.clip(positions, 0, len(classes) - 1)
        unseen = classes[positions] != y
        if np.any(unseen):
            raise ValueError(
                f"y_test contains labels the model was not trained on: "
                f"{np.unique(y[unseen]).tolist()[:10]}. Known classes: {classes.tolist()[:20]}."
            )
        width = self.n_outputs
        if width == 1:  # binary model with one logit: target is 1 for the positive class
            return self._tensor(positions.reshape(-1, 1).astype(np.float64))
        one_hot = np.zeros((len(y), width))
        one_hot[np.arange(len(y)), positions] = 1.0
        return self._tensor(one_hot)

    def _tensor(self, array):
        return array_to_tensor(array, dtype=self.dtype, device=self.device)

    def _checked_feature_matrix(self, Z, model_noun):
        """``Z`` if it is a finite (n, n_features) matrix, else a ValueError naming the fix."""
        if Z.ndim != 2 or Z.shape[1] != self.n_features:
            raise ValueError(
                f"The {model_noun} expects {self.n_features} features but got an array of shape "
                f"{Z.shape}; pass data with the same columns as the training data."
            )
        if not np.all(np.isfinite(Z)):
            raise ValueError(
                f"The {model_noun}'s input features contain NaN or infinity; impute or drop them "
                "(for example with sklearn.impute.SimpleImputer in the pipeline)."
            )
        return Z

    # -- model --------------------------------------------------------------------------
    def parameters(self):
        """The fitted parameters θˢ as a flat tensor of shape (p,)."""
        raise NotImplementedError

    def outputs(self, theta, inputs):
        """Model outputs h(θ, x), shape (n, k), differentiable in θ (torch.func-friendly)."""
        raise NotImplementedError

    def regularizer_diagonal(self):
        """r with R(θ) = ½ Σ r_j θ_j², shape (p,)."""
        raise NotImplementedError

    def layer_structure(self):
        """The model's Kronecker-factorable layers and its other parameters (LayerStructure)."""
        raise NotImplementedError

    def regularizer(self, theta):
        return 0.5 * (self.regularizer_diagonal() * theta**2).sum()

    def objective(self, theta, inputs, targets, weights=None):
        """J(θ) = (1/N) Σ_i w_i L_i(θ) + R(θ) on (inputs, targets); w_i = 1 by default.

        With w_m = 0 this is the leave-one-out objective (1/N) Σ_{i≠m} L_i + R of DESIGN.md §2
        (the 1/N of the full training set is kept). ``weights`` are used as given: for a
        weighted model pass its :attr:`row_weights` (times any removal mask).
        """
        losses = self.loss(self.outputs(theta, inputs), targets)
        if weights is not None:
            losses = losses * weights
        return losses.sum() / len(inputs) + self.regularizer(theta)

    # -- retraining ---------------------------------------------------------------------
    def retrain(self, X, y, *, exclude=(), warm_start=True):
        """Refit the model on the training data (X, y) without the rows in ``exclude``.

        ``X`` and ``y`` are the full training set passed to ``fit`` (so that a family can keep
        the original data order); returns the refit parameters as a flat tensor.
        ``warm_start=True`` starts from θˢ, else from the family's cold start.
        """
        raise NotImplementedError


def fit_model(estimator, X, y, **fit_params):
    """Default training hook: fit the estimator; families may record more (returned state).

    ``fit_params`` (``sample_weight``) go to the estimator's ``fit``.
    """
    estimator.fit(X, y, **fit_params)
    return None
