"""Adapter for neural networks trained with skorch.

The network's objective is mapped onto J(θ) = (1/N) Σ_i L(h(θ, x_i), t_i) + ½ Σ_j r_j θ_j²
(DESIGN.md §2), with θ the flat concatenation of the module's trainable parameters:

=========================  ==========================  ============================  ==========
net                        criterion                   outputs h                     L(h, t)
=========================  ==========================  ============================  ==========
NeuralNetClassifier        NLLLoss (skorch default,    log(module(x) + eps), as      softmax CE
                           module returns probs)       skorch's ``get_loss`` does
NeuralNetClassifier        CrossEntropyLoss            module(x) (logits)            softmax CE
NeuralNetBinaryClassifier  BCEWithLogitsLoss           module(x), one logit          binary log
NeuralNetRegressor         MSELoss                     module(x), k outputs          ‖h − t‖²/k
=========================  ==========================  ============================  ==========

Softmax cross-entropy on h = log p equals NLLLoss on p, and because the output Hessian
diag(p) − ppᵀ annihilates the constant direction, its Gauss-Newton matrix is the one of the
logits. MSELoss with ``reduction='mean'`` averages over the batch and the k outputs, hence
the 1/k. ``optimizer__weight_decay = wd`` of an optimizer with coupled L2 decay (SGD, Adam,
…: the update uses grad + wd·θ) is R(θ) = (wd/2)‖θ‖², read per parameter from the fitted
optimizer's parameter groups. The module is evaluated in eval mode (no dropout, batch
normalisation with its running statistics) through :func:`torch.func.functional_call`.

Module outputs: ``forward`` may return a tensor, a tuple (its first element), a dict or a
Hugging Face–style output object (its ``logits``), see :func:`._skorch_outputs.module_logits`.

Attention: every functional evaluation runs inside :func:`differentiable_attention`, which
turns off PyTorch's fused Transformer fast path and restricts scaled-dot-product attention
to its math kernel. The fused kernels (``_transformer_encoder_layer_fwd``, flash attention
on CPU and CUDA) have no forward-mode derivatives, which the Gauss-Newton and Hessian
products (``jvp``) need; the math kernel is made of ordinary differentiable operations and
gives the same outputs up to round-off.
"""

import contextlib
import copy
import os
import threading
import warnings

import numpy as np
import torch
from sklearn.base import clone
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._torch_utils import array_to_tensor
from ..exceptions import NumericalWarning
from ._base import Layer, LayerStructure, ModelAdapter, ParameterBlock
from ._losses import BinaryLogLoss, SoftmaxCrossEntropy, SquaredError
from ._rows import DatasetRows, RowBatch, is_dataset
from ._skorch_checks import (
    SKORCH_NETS,
    _criterion_class_and_params,
    check_embedding_inputs,
    check_module,
    check_skorch_configuration,
    parameter_weight_decays,
)
from ._skorch_outputs import module_logits
from ._skorch_training import (
    _as_module_array,
    _flat_parameters,
    _module_dtype,
    _state,
    _takes_indices,
    _train,
    _trainable,
    fit_skorch,
)
from ._skorch_weights import mean_one

# -- attention ----------------------------------------------------------------------------
_ATTENTION_LOCK = threading.Lock()
#: held while a module runs with swapped-in parameters (:meth:`SkorchAdapter._raw_outputs`)
_MODULE_CALL_LOCK = threading.RLock()
_ATTENTION_STATE = {"depth": 0, "fastpath": None, "kernel": None}


@contextlib.contextmanager
def differentiable_attention():
    """Evaluate attention through differentiable operations only, restoring the settings after.

    Inside the context ``torch.backends.mha`` fast path is off (``nn.TransformerEncoderLayer``
    and ``nn.MultiheadAttention`` in eval mode would otherwise call fused kernels) and
    :func:`torch.nn.functional.scaled_dot_product_attention` uses its math backend (flash and
    memory-efficient attention have no forward-mode AD). Both settings are process-wide, so
    the context is reference-counted under a lock: the first entry (in any thread) saves the
    user's settings and the last exit restores them, which keeps concurrent influence
    computations safe. Attention run elsewhere in the process meanwhile takes the math path:
    slower, the same result up to round-off.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._adapters._skorch import differentiable_attention
    >>> with differentiable_attention():
    ...     torch.backends.mha.get_fastpath_enabled()
    False
    >>> torch.backends.mha.get_fastpath_enabled()
    True
    """
    with _ATTENTION_LOCK:
        if _ATTENTION_STATE["depth"] == 0:
            _ATTENTION_STATE["fastpath"] = torch.backends.mha.get_fastpath_enabled()
            kernel = sdpa_kernel([SDPBackend.MATH])
            kernel.__enter__()
            _ATTENTION_STATE["kernel"] = kernel
            torch.backends.mha.set_fastpath_enabled(False)
        _ATTENTION_STATE["depth"] += 1
    try:
        yield
    finally:
        with _ATTENTION_LOCK:
            _ATTENTION_STATE["depth"] -= 1
            if _ATTENTION_STATE["depth"] == 0:
                torch.backends.mha.set_fastpath_enabled(_ATTENTION_STATE["fastpath"])
                _ATTENTION_STATE["kernel"].__exit__(None, None, None)
                _ATTENTION_STATE["kernel"] = None


# -- adapter ------------------------------------------------------------------------------
#: module types whose parameters form a Kronecker-factorable layer (see layer_structure);
#: exact types only: a subclass may use its weight outside ``forward`` (attention's out_proj)
_LAYER_KINDS = {torch.nn.Linear: "linear", torch.nn.Conv2d: "conv2d"}


class _OutputHead:
    """Maps the module's raw output to h (a picklable callable, unlike a closure)."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, out):
        if self.kind == "binary":
            return out.reshape(len(out), 1)
        out = out.reshape(len(out), -1)
        if self.kind == "log_probabilities":
            # skorch's NeuralNetClassifier.get_loss feeds log(p + eps) to NLLLoss
            return torch.log(out + torch.finfo(out.dtype).eps)
        return out


def _output_head(net, criterion):
    """(function of the raw module output → h, loss on h); the regressor's loss needs k."""
    if isinstance(net, NeuralNetRegressor):
        return _OutputHead("identity"), None
    if isinstance(net, NeuralNetBinaryClassifier):
        return _OutputHead("binary"), BinaryLogLoss()
    if issubclass(criterion, torch.nn.NLLLoss):
        return _OutputHead("log_probabilities"), SoftmaxCrossEntropy()
    return _OutputHead("identity"), SoftmaxCrossEntropy()


def _warn_if_tf32(device, dtype):
    """TF32 matrix products keep ~3 significant digits: too few for curvature at small λ."""
    if device.type != "cuda" or dtype != torch.float32:
        return
    override = os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "0") not in ("", "0")
    if torch.backends.cuda.matmul.allow_tf32 or override:
        warnings.warn(
            "TF32 matrix products are enabled on this GPU (torch.backends.cuda.matmul."
            "allow_tf32 or TORCH_ALLOW_TF32_CUBLAS_OVERRIDE), so float32 curvature products "
            "carry relative errors near 1e-3, enough to spoil influence estimates at small "
            "damping. Set torch.backends.cuda.matmul.allow_tf32 = False (and unset the "
            "override), or use a float64 module.",
            NumericalWarning,
            stacklevel=3,
        )


class SkorchAdapter(ModelAdapter):
    """Functional view of a fitted skorch net (possibly after preprocessing).

    θ is the flat concatenation of the module's trainable parameters in
    ``named_parameters`` order; h(θ, x) evaluates a copy of the module in eval mode with
    :func:`torch.func.functional_call`. The training set is exactly the data passed to
    ``fit``: nets whose ``train_split`` is not None are **refused** (rather than silently
    changed), so pass ``train_split=None``. Classes are the indices 0..K−1 of the module's
    outputs, as skorch's criteria expect.

    Retraining (:meth:`retrain`) clones the net and trains it again with the same settings
    (epochs, optimizer, batch size). A cold start loads the initial weights θ⁰ (and buffers)
    recorded by :func:`fit_skorch` and replays the same seeded data order with the excluded
    rows dropped; a warm start continues from θˢ (and the fitted buffers) with a fresh
    optimizer state.

    Batch normalisation: the functional view (gradients, curvature, PRF/PBRF) is the module
    in eval mode with the running statistics of θˢ held fixed (buffers, not parameters; the
    affine weights are parameters). Retraining runs skorch's training, in train mode: a
    cold start re-estimates the running statistics from the recorded initial buffers, a warm
    start continues them from the fitted ones.

    Parameters
    ----------
    net : fitted NeuralNetClassifier, NeuralNetBinaryClassifier or NeuralNetRegressor
    n_train : int
        Number of training samples N.
    preprocess : callable or None
        Maps raw X to the module's input (the earlier steps of a pipeline).
    device : torch.device or None
        Where the adapter's tensors live (a copy of the module is moved there).
    fit_state : dict or None
        What :func:`fit_skorch` recorded; None for a net fitted elsewhere (then only warm
        starts are possible).
    sample_weight : ndarray of shape (N,) or None
        The per-row weights of the objective, Σ w_i L_i / W + R; retraining weighs the rows
        the same way (:mod:`._skorch_weights`).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sklearn_influence._adapters._skorch import SkorchAdapter, fit_skorch
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    >>> module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1))
    >>> net = NeuralNetClassifier(module, train_split=None, max_epochs=3, verbose=0)
    >>> adapter = SkorchAdapter(net, 30, fit_state=fit_skorch(net, X, y))
    >>> adapter.outputs(adapter.parameters(), adapter.inputs(X)).shape
    torch.Size([30, 3])
    """

    def __init__(
        self, net, n_train, *, preprocess=None, device=None, fit_state=None, sample_weight=None
    ):
        check_skorch_configuration(net)
        if not getattr(net, "initialized_", False) or not hasattr(net, "module_"):
            raise ValueError(
                f"{type(net).__name__} is not fitted; fit it first or let InfluenceFunction fit it."
            )
        self.net = net
        self.n_train = n_train
        self.preprocess = preprocess
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.fit_state = fit_state
        source = getattr(net.module_, "_orig_mod", net.module_)  # torch.compile wrapper
        self.dtype = _module_dtype(source)
        self._module = copy.deepcopy(source).to(self.device).eval()
        check_module(net, self._module)  # no trainable parameters, batch-statistics BatchNorm
        self._names, self._shapes, self._sizes = self._layout()
        self._constants = {
            name: value
            for name, value in {
                **dict(self._module.named_parameters()),
                **dict(self._module.named_buffers()),
            }.items()
            if name not in self._names
        }
        self._constants = {name: value.detach() for name, value in self._constants.items()}
        self._theta = _flat_parameters(self._module)
        self._decay = self._weight_decays()
        self._set_sample_weight(sample_weight)
        criterion, _ = _criterion_class_and_params(net)
        self._head, self.loss = _output_head(net, criterion)
        self.is_classifier = not isinstance(net, NeuralNetRegressor)
        self._n_outputs = None
        self.classes_ = None
        _warn_if_tf32(self.device, self.dtype)
        if fit_state is not None and fit_state.get("probe") is not None:
            self._probe(self._as_tensor(fit_state["probe"]))

    # -- layout -------------------------------------------------------------------------
    def _layout(self):
        trainable = _trainable(self._module)
        if not trainable:
            raise ValueError(
                f"The module of {type(self.net).__name__} has no trainable parameters."
            )
        dtypes = {p.dtype for _, p in trainable}
        if len(dtypes) > 1:
            raise ValueError(
                f"The module mixes parameter dtypes {sorted(map(str, dtypes))}; convert it to "
                "one dtype (module.float() or module.double())."
            )
        return (
            [name for name, _ in trainable],
            [p.shape for _, p in trainable],
            [p.numel() for _, p in trainable],
        )

    def _unflatten(self, theta):
        pieces = torch.split(theta, self._sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self._names, pieces, self._shapes, strict=True)
        }

    def _weight_decays(self):
        """Per-parameter L2 coefficient r_j, read from the net's optimizer settings.

        The figures come from ``optimizer__weight_decay``, ``optimizer__param_groups`` and
        the optimizer class's default (what skorch passes to the optimizer), so no optimizer
        is constructed here (constructing the first one imports ``torch._dynamo``: seconds).
        """
        decay = parameter_weight_decays(self.net, self._names)
        return torch.cat(
            [
                torch.full((size,), decay[name], dtype=self.dtype, device=self.device)
                for name, size in zip(self._names, self._sizes, strict=True)
            ]
        )

    # -- probing ------------------------------------------------------------------------
    def _probe(self, sample):
        """Check once, on a couple of rows, that the module runs and torch.func can trace it."""
        name = type(self._module).__name__
        try:
            with torch.no_grad():
                raw = self._raw_outputs(self._theta, sample)
        except Exception as error:  # the module's own error, re-raised with context
            raise ValueError(
                f"The module {name} failed on inputs of shape {tuple(sample.shape)}: {error}. "
                "Pass data shaped like the data the net was trained on."
            ) from error
        outputs = self._head(raw)
        self._n_outputs = outputs.shape[1]
        if isinstance(self.net, NeuralNetBinaryClassifier):
            self.classes_ = np.array([0, 1])
        elif self.is_classifier:
            self.classes_ = np.arange(self._n_outputs)
        else:
            self.loss = SquaredError(1.0 / self._n_outputs)
        self._check_probabilities(raw)

        def single(theta, x):
            return self.outputs(theta, x.unsqueeze(0)).sum()

        try:
            vmap(grad(single), in_dims=(None, 0))(self._theta, sample)
            jvp(lambda t: self.outputs(t, sample), (self._theta,), (torch.ones_like(self._theta),))
        except Exception as error:
            raise ValueError(
                f"The module {name} cannot be traced by torch.func (vmap/grad/jvp), which the "
                f"influence computations need: {error}. Remove data-dependent Python control "
                "flow (if/while on tensor values) and calls such as .item(), .tolist() or "
                ".numpy() from its forward; use torch.where for branches."
            ) from error

    def _check_probabilities(self, raw):
        criterion, _ = _criterion_class_and_params(self.net)
        if not (
            isinstance(self.net, NeuralNetClassifier) and issubclass(criterion, torch.nn.NLLLoss)
        ):
            return
        probs = raw.reshape(len(raw), -1)
        sums = probs.sum(1)
        if bool((probs < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ValueError(
                "NeuralNetClassifier uses NLLLoss (skorch's default), which expects the module "
                "to return probabilities (end it with nn.Softmax), but its outputs are not "
                "probabilities. Add a softmax, or return logits and use "
                "criterion=torch.nn.CrossEntropyLoss."
            )

    @property
    def n_outputs(self):
        if self._n_outputs is None:
            raise RuntimeError("The adapter has not seen any input yet; call inputs(X) first.")
        return self._n_outputs

    # -- data ---------------------------------------------------------------------------
    def features(self, X):
        """The module's input as a numpy array in the module's dtype (a dict of them for
        skorch's named inputs)."""
        Z = X if self.preprocess is None else self.preprocess(X)
        Z = _as_module_array(Z, self.dtype, _takes_indices(self._module))
        if not isinstance(Z, dict):  # token ids come as one array (dict inputs: per module)
            check_embedding_inputs(self.net, self._module, Z)
        arrays = Z.values() if isinstance(Z, dict) else [Z]
        if any(A.dtype.kind == "f" and not np.all(np.isfinite(A)) for A in arrays):
            raise ValueError(
                "The net's input features contain NaN or infinity; impute or drop them "
                "(for example with sklearn.impute.SimpleImputer in the pipeline)."
            )
        return Z

    def _as_tensor(self, Z):
        if isinstance(Z, dict):  # named inputs: one tensor each, never stacked
            return RowBatch({name: self._as_tensor(A) for name, A in Z.items()}, self.dtype)
        tensor = array_to_tensor(Z, device=self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def _block_tensor(self, batch):
        """A collated block of a data set's inputs as the module's input (dtype, device)."""
        if isinstance(batch, dict):
            return RowBatch({k: self._block_tensor(v) for k, v in batch.items()}, self.dtype)
        batch = torch.as_tensor(batch, device=self.device)
        if batch.is_floating_point() or not _takes_indices(self._module):
            batch = batch.to(self.dtype)
            if not bool(torch.isfinite(batch).all()):
                raise ValueError(
                    "A block of the data set's inputs contains NaN or infinity; fix those items."
                )
        return batch

    def inputs(self, X):
        if is_dataset(X):  # rows loaded a block at a time, never stacked
            rows = DatasetRows(X, self._block_tensor, self.device, self.dtype)
            if self._n_outputs is None and len(rows):
                self._probe(rows[:2])
            return rows
        tensor = self._as_tensor(self.features(X))
        if self._n_outputs is None and len(tensor):
            self._probe(tensor[:2])
        return tensor

    # -- model --------------------------------------------------------------------------
    def parameters(self):
        return self._theta

    def _raw_outputs(self, theta, inputs):
        constants = self._constants
        if theta.dtype != self.dtype:  # e.g. float64 responses of a float32 net: cast the
            constants = {  # buffers (batch-norm statistics) along with the parameters
                name: value.to(theta.dtype) if value.is_floating_point() else value
                for name, value in constants.items()
            }
        # functional_call swaps the given tensors into the shared module for the duration of
        # the call: two threads inside it at once would see each other's (vmapped) tensors
        args, kwargs = (
            ((), dict(inputs.items())) if isinstance(inputs, RowBatch) else ((inputs,), {})
        )
        with differentiable_attention(), _MODULE_CALL_LOCK:
            out = functional_call(
                self._module, {**constants, **self._unflatten(theta)}, args, kwargs
            )
        return module_logits(out)

    def outputs(self, theta, inputs):
        if isinstance(inputs, DatasetRows):  # a whole data set: block by block
            n, size = len(inputs), self.net.batch_size
            size = size if size and size > 0 else n
            return torch.cat([
                self._head(self._raw_outputs(theta, inputs[start : start + size]))
                for start in range(0, n, size)
            ])  # fmt: skip
        return self._head(self._raw_outputs(theta, inputs))

    def regularizer_diagonal(self):
        return self._decay

    def layer_structure(self):
        """The module's ``nn.Linear`` and ``nn.Conv2d`` layers with trainable weights, in
        module order, and every other trainable parameter, as slices of θ.

        A parameter shared by several modules is counted once (under its first name, as in
        θ); a layer whose weight is not trainable is not listed (its trainable bias, if any,
        is uncovered).
        """
        offsets = np.cumsum([0, *self._sizes])
        spans = {
            name: slice(int(start), int(stop))
            for name, start, stop in zip(self._names, offsets[:-1], offsets[1:], strict=True)
        }
        shapes = dict(zip(self._names, self._shapes, strict=True))
        layers, covered = [], set()
        for prefix, module in self._module.named_modules():
            kind = _LAYER_KINDS.get(type(module))
            weight = f"{prefix}.weight" if prefix else "weight"
            if kind is None or weight not in spans or weight in covered:
                continue
            bias = f"{prefix}.bias" if prefix else "bias"
            bias = bias if bias in spans and bias not in covered else None
            conv = None
            if kind == "conv2d":
                conv = {key: getattr(module, key) for key in ("stride", "padding", "dilation")}
                conv["groups"] = module.groups
            layers.append(
                Layer(
                    name=prefix,
                    kind=kind,
                    weight=spans[weight],
                    weight_shape=tuple(shapes[weight]),
                    bias=None if bias is None else spans[bias],
                    conv=conv,
                    module=module,
                )
            )
            covered.update({weight} if bias is None else {weight, bias})
        uncovered = tuple(
            ParameterBlock(name, spans[name], tuple(shapes[name]))
            for name in self._names
            if name not in covered
        )
        return LayerStructure(tuple(layers), uncovered, int(offsets[-1]))

    # -- retraining ---------------------------------------------------------------------
    def retrain(self, X, y, *, exclude=(), warm_start=True):
        """Train a clone of the net again on (X, y) without the rows in ``exclude``.

        Parameters
        ----------
        X, y : array-like
            The full training set passed to ``fit`` (raw: earlier pipeline steps stay fixed).
        exclude : sequence of int
            Rows to leave out.
        warm_start : bool
            True: continue from θˢ for the net's ``max_epochs`` with a fresh optimizer. False:
            start from the recorded θ⁰ with the original seeded data order, the excluded rows
            dropped (``exclude=()`` reproduces the original fit).

        Returns
        -------
        theta : Tensor of shape (p,)
        """
        if not warm_start and self.fit_state is None:
            raise ValueError(
                "A cold-start retraining needs the initial weights recorded when "
                "InfluenceFunction fits the net itself; this net was fitted elsewhere "
                "(FrozenEstimator). Pass the unfitted net, or use warm_start=True."
            )
        Z = X if self.preprocess is None else self.preprocess(X)
        n = len(y)  # rows, also of a dict X
        kept = np.setdiff1d(np.arange(n), np.asarray(exclude, dtype=np.int64))
        seed = 0 if self.fit_state is None else self.fit_state["seed"]
        # warm: the fitted parameters and buffers; cold: the recorded initial ones
        source = getattr(self.net.module_, "_orig_mod", self.net.module_)
        initial = _state(source) if warm_start else self.fit_state["initial_state"]
        net = clone(self.net)
        weights = None
        if self.sample_weight is not None:  # Σ_{kept} w_i L_i / Σ_{kept} w_i, as sklearn refits
            weights = np.zeros(n)
            weights[kept] = mean_one(self.sample_weight[kept])
        _train(net, Z, y, seed=seed, kept=kept, n_original=n, initial=initial, weights=weights)
        source = getattr(net.module_, "_orig_mod", net.module_)
        return _flat_parameters(source).to(self.device, self.dtype)


__all__ = [
    "SKORCH_NETS",
    "SkorchAdapter",
    "check_skorch_configuration",
    "differentiable_attention",
    "fit_skorch",
]
