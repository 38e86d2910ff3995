"""Adapter for scikit-learn's own neural networks, ``MLPClassifier`` and ``MLPRegressor``.

θ is scikit-learn's own packing of the weights (``sklearn.neural_network`` packs them the
same way for L-BFGS): every ``coefs_[l]`` (shape (fan_in, fan_out)) flattened row-major, layer
by layer, followed by every ``intercepts_[l]``:

    θ = [W_0.ravel(), W_1.ravel(), …, W_{L−1}.ravel(), b_0, b_1, …, b_{L−1}].

h(θ, x) is scikit-learn's forward pass in float64 (``a_{l+1} = act(a_l W_l + b_l)`` with the
hidden ``activation``) **without** the output activation: logits for classifiers,
predictions for regressors.

The objective. For a batch of n rows scikit-learn's ``_backprop`` minimises
``mean_batch L + α/(2n) Σ_l ‖W_l‖²`` (biases are not penalised):

============================  ==========================  =====================================
estimator (output layer)      L(h, t)                     r on weights (0 on biases)
============================  ==========================  =====================================
MLPClassifier, ≥ 3 classes     softmax cross-entropy       lbfgs: α/N
(softmax)                                                 sgd/adam: α·mean_b(1/B_b)
MLPClassifier, 2 classes       binary log-loss, one logit  same
(one logistic unit)            (target 1 = ``classes_[1]``)
MLPRegressor (identity)        ½‖h − t‖² (see below)       same
============================  ==========================  =====================================

* ``solver="lbfgs"`` evaluates the whole training set as one batch, so J = mean L +
  (α/(2N))‖W‖² and r = α/N exactly; ``loss_`` is this J at the returned weights.
* ``solver="sgd"``/``"adam"`` take one step per minibatch b of size B_b (B = ``batch_size``,
  ``"auto"`` = min(200, N), clipped to N; the last batch holds the remaining N mod B rows),
  each on the gradient of ``mean_b L + α/(2B_b)‖W‖²``. Every row lands in the last batch
  with probability B'/N, so the mean step over an epoch is, in expectation over the
  shuffles, the gradient of mean L + (α/2)·mean_b(1/B_b)·‖W‖²: r = α·mean_b(1/B_b), which is
  α/B when B divides N. (With ``shuffle=False`` and B not dividing N the same fixed rows
  form the short last batch every epoch and weigh B/B' times more in the descended loss;
  the adapter keeps the plain mean.) scikit-learn's epoch ``loss_`` weights the batch
  losses by their sizes and so reports the penalty as α·n_batches/(2N)‖W‖² instead, at
  moving weights; the two agree when B divides N. Like every network adapter this is the
  objective the optimiser descends, not one it necessarily reached.
* ``MLPRegressor`` with k > 1 outputs: scikit-learn's reported ``squared_loss`` averages
  ½(y − ŷ)² over the samples *and* the k outputs, but the gradient it descends
  (``_backprop``: δ = ŷ − y, divided by the number of samples only) is that of ½‖h − t‖²
  *summed* over the outputs — k times the reported data term (scikit-learn issue #8349; the
  open fix, PR #34830, makes the loss match the gradient). The adapter follows the gradient,
  which is what trains the network and what influence is made of: L = ½‖h − t‖², so for
  k > 1 ``loss_`` − penalty is J − penalty divided by k. With one output they coincide.
* The reported log-loss clips probabilities to [eps, 1 − eps]; the gradient scikit-learn
  descends (p − t) is that of the unclipped loss, which the adapter uses. They differ only
  for rows predicted with probability below 2.2e-16.

Sample weights (scikit-learn ≥ 1.7, ``fit(X, y, sample_weight=w)``). ``_backprop`` weighs
each row's output error by w_i and divides the data term *and* the penalty by the batch's
weight sum W_b (not its row count): it descends Σ_b w_i L_i / W_b + α/(2W_b)‖W‖². With
lbfgs (one batch, W_b = W) that is J = Σ w_i L_i / W + (α/(2W))‖W‖² exactly, so r = α/W and
the data term is the engine's weighted mean (1/N) Σ w̃_i L_i, w̃_i = N w_i / W (DESIGN.md §2).
For sgd/adam the adapter takes W_b at its expected value B_b·W/N, i.e. r = α·mean_b(1/B_b)·N/W
(exact for equal weights). Removing row m down-weights it by ε_m = w_m / W; a refit keeps
the remaining rows' weights.

Retraining runs scikit-learn itself on the rows kept. A cold start refits a clone with the
same integer ``random_state``: the initial weights are identical, but for ``sgd``/``adam``
scikit-learn shuffles the N − 1 remaining indices with that seed, so removing a row changes
the whole epoch order (not only drops the row, as the skorch adapter does) — scikit-learn
has no hook to replay the original order. The refit objective is scikit-learn's own on the
kept rows (its mean over N − 1 rows; for sgd/adam its batch structure on N − 1 rows). A
warm start copies the fitted network, sets ``warm_start=True`` and fits again: ``max_iter``
more iterations from θˢ (for sgd/adam with a fresh optimiser state, as scikit-learn's warm
start does). Networks rarely converge in ``max_iter``, so scikit-learn's
``ConvergenceWarning`` is expected there; it is passed on, not hidden.
"""

import copy
from numbers import Integral

import numpy as np
import scipy.sparse
import sklearn
import torch
from sklearn.base import clone
from sklearn.neural_network import MLPClassifier
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import has_fit_parameter

from .._torch_utils import draw_seed
from ._base import ModelAdapter
from ._losses import BinaryLogLoss, SoftmaxCrossEntropy, SquaredError
from ._sklearn_mlp_checks import (
    _STOCHASTIC_SOLVERS,
    SKLEARN_MLPS,
    check_mlp_configuration,
    check_mlp_targets,
)

__all__ = [
    "SKLEARN_MLPS",
    "SklearnMLPAdapter",
    "check_mlp_configuration",
    "check_mlp_sample_weight",
    "fit_sklearn_mlp",
]


def fit_sklearn_mlp(estimator, X, y, sample_weight=None):
    """Training hook for scikit-learn MLPs: fit reproducibly and record the seed.

    A network whose ``random_state`` is not an integer (None: numpy's global RNG, or a
    RandomState instance) could not be refit from the same initial weights, so it is given a
    seed drawn with :func:`~.._torch_utils.draw_seed` (``InfluenceFunction`` seeds it from
    its own ``random_state``, thread-locally) with ``set_params`` before fitting; the fitted
    ``estimator_`` shows it. ``sample_weight`` goes to scikit-learn's ``fit`` (scikit-learn
    ≥ 1.7).

    Returns
    -------
    fit_state : dict
        ``seed`` (the network's integer ``random_state``) and ``n_train``.
    """
    check_mlp_configuration(estimator)
    check_mlp_targets(estimator, y)
    seed = estimator.random_state
    if not isinstance(seed, Integral):
        seed = draw_seed()
        estimator.set_params(random_state=seed)
    check_mlp_sample_weight(estimator, sample_weight)
    fit_params = {} if sample_weight is None else {"sample_weight": sample_weight}
    estimator.fit(X, y, **fit_params)
    return {"seed": int(seed), "n_train": len(X)}


def check_mlp_sample_weight(estimator, sample_weight):
    """Refuse weights for a scikit-learn whose MLP ``fit`` takes none (before 1.7)."""
    if sample_weight is not None and not has_fit_parameter(estimator, "sample_weight"):
        raise ValueError(
            f"{type(estimator).__name__}.fit takes no sample_weight in scikit-learn "
            f"{sklearn.__version__}; upgrade to scikit-learn >= 1.7, or repeat each row as "
            "many times as its integer weight (np.repeat(X, weights, axis=0))."
        )


def penalty_scale(estimator, n_train):
    """c with r = α·c on the weights: 1/N for lbfgs, mean_b(1/B_b) for sgd/adam."""
    if estimator.solver not in _STOCHASTIC_SOLVERS:
        return 1.0 / n_train
    batch = estimator.batch_size
    batch = min(200, n_train) if batch == "auto" else int(np.clip(batch, 1, n_train))
    n_full, remainder = divmod(n_train, batch)
    sizes = [batch] * n_full + ([remainder] if remainder else [])
    return float(np.mean([1.0 / size for size in sizes]))


_ACTIVATIONS = {
    "identity": lambda z: z,
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
}


class SklearnMLPAdapter(ModelAdapter):
    """Functional view of a fitted ``MLPClassifier``/``MLPRegressor`` (see the module notes).

    Parameters
    ----------
    estimator : fitted MLPClassifier or MLPRegressor
    n_train : int
        Number of training samples N.
    preprocess : callable or None
        Maps raw X to the network's input (the earlier steps of a pipeline).
    device : torch.device or None
    fit_state : dict or None
        What :func:`fit_sklearn_mlp` recorded; None for a network fitted elsewhere.
    sample_weight : ndarray of shape (N,) or None
        The weights the network was fitted with (see the module notes).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neural_network import MLPClassifier
    >>> from sklearn_influence._adapters._sklearn_mlp import SklearnMLPAdapter
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    >>> net = MLPClassifier((5,), solver="lbfgs", max_iter=1000, random_state=0).fit(X, y)
    >>> adapter = SklearnMLPAdapter(net, 30)
    >>> adapter.parameters().shape  # 4·5 + 5·3 weights, 5 + 3 biases
    torch.Size([43])
    >>> adapter.outputs(adapter.parameters(), adapter.inputs(X)).shape
    torch.Size([30, 3])
    """

    def __init__(
        self, estimator, n_train, *, preprocess=None, device=None, fit_state=None,
        sample_weight=None,
    ):  # fmt: skip
        check_mlp_configuration(estimator)
        if not hasattr(estimator, "coefs_"):
            raise ValueError(
                f"{type(estimator).__name__} is not fitted; fit it first or let "
                "InfluenceFunction fit it."
            )
        self.estimator = estimator
        self.n_train = n_train
        self.preprocess = preprocess
        self.fit_state = fit_state
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = torch.float64
        self._shapes = [w.shape for w in estimator.coefs_] + [
            b.shape for b in estimator.intercepts_
        ]
        self._sizes = [int(np.prod(shape)) for shape in self._shapes]
        self._n_layers = len(estimator.coefs_)
        self.n_features = estimator.coefs_[0].shape[0]
        self.n_outputs = estimator.coefs_[-1].shape[1]
        self.is_classifier = isinstance(estimator, MLPClassifier)
        self.classes_ = estimator.classes_ if self.is_classifier else None
        if not self.is_classifier:
            self.loss = SquaredError(0.5)  # the gradient's loss (see the module notes)
        elif estimator.out_activation_ == "softmax":
            self.loss = SoftmaxCrossEntropy()
        else:  # binary: one logistic output unit
            self.loss = BinaryLogLoss()
        self._activation = _ACTIVATIONS[estimator.activation]
        self._theta = self._pack(estimator)
        self._set_sample_weight(sample_weight)
        # scikit-learn divides the penalty by the batch's weight sum: N/W times its row count
        scale = penalty_scale(estimator, n_train) * n_train / self.total_weight
        n_weights = sum(self._sizes[: self._n_layers])
        diagonal = np.zeros(sum(self._sizes))
        diagonal[:n_weights] = float(estimator.alpha) * scale
        self._decay = self._tensor(diagonal)

    # -- layout -------------------------------------------------------------------------
    def _pack(self, estimator):
        pieces = [np.ravel(w) for w in estimator.coefs_] + [
            np.ravel(b) for b in estimator.intercepts_
        ]
        return self._tensor(np.concatenate(pieces).astype(np.float64))

    def _unflatten(self, theta):
        pieces = [
            piece.view(shape)
            for piece, shape in zip(torch.split(theta, self._sizes), self._shapes, strict=True)
        ]
        return pieces[: self._n_layers], pieces[self._n_layers :]

    # -- data ---------------------------------------------------------------------------
    def _network_input(self, X):
        """X after the earlier pipeline steps, as scikit-learn's network would receive it."""
        return X if self.preprocess is None else self.preprocess(X)

    def features(self, X):
        Z = self._network_input(X)
        Z = Z.toarray() if scipy.sparse.issparse(Z) else np.asarray(Z)
        Z = Z.astype(np.float64)
        return self._checked_feature_matrix(Z, "network")

    def inputs(self, X):
        return self._tensor(self.features(X))

    # -- model --------------------------------------------------------------------------
    def parameters(self):
        return self._theta

    def outputs(self, theta, inputs):
        weights, biases = self._unflatten(theta)
        activation = inputs
        for layer, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            activation = activation @ weight + bias
            if layer < self._n_layers - 1:
                activation = self._activation(activation)
        return activation

    def regularizer_diagonal(self):
        return self._decay

    # -- retraining ---------------------------------------------------------------------
    def retrain(self, X, y, *, exclude=(), warm_start=True):
        """Refit the network with scikit-learn on (X, y) without the rows in ``exclude``.

        Parameters
        ----------
        X, y : array-like
            The full training set passed to ``fit`` (raw: earlier pipeline steps stay fixed).
        exclude : sequence of int
            Rows to leave out.
        warm_start : bool
            True: a copy of the fitted network with ``warm_start=True`` is fitted again
            (``max_iter`` more iterations from θˢ). False: a clone with the same integer
            ``random_state`` (same initial weights) is fitted from scratch;
            ``exclude=()`` reproduces the original fit exactly.

        Returns
        -------
        theta : Tensor of shape (p,)
        """
        if warm_start:
            model = copy.deepcopy(self.estimator)
            model.set_params(warm_start=True)
        else:
            if not isinstance(self.estimator.random_state, Integral):
                raise ValueError(
                    f"A cold-start retraining of {type(self.estimator).__name__} needs the "
                    "initial weights of the original fit, which only an integer random_state "
                    f"reproduces (got random_state={self.estimator.random_state!r}). Set "
                    "random_state to an int, pass the unfitted network so that "
                    "InfluenceFunction seeds it, or use warm_start=True."
                )
            model = clone(self.estimator)
        keep = np.setdiff1d(np.arange(len(y)), np.asarray(exclude, dtype=np.int64))
        Z = self._network_input(X)
        fit_params = {}
        if self.sample_weight is not None:  # the remaining rows keep their weights
            fit_params["sample_weight"] = self.sample_weight[keep]
        model.fit(_safe_indexing(Z, keep), _safe_indexing(np.asarray(y), keep), **fit_params)
        return self._pack(model)
