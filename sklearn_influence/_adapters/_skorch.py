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
"""

import copy
import inspect
import os
import warnings

import numpy as np
import torch
from sklearn.base import clone
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from torch.func import functional_call, grad, jvp, vmap
from torch.utils.data import DataLoader, Sampler

from .._losses import BinaryLogLoss, SoftmaxCrossEntropy, SquaredError
from ._base import ModelAdapter

SKORCH_NETS = (NeuralNetClassifier, NeuralNetBinaryClassifier, NeuralNetRegressor)

#: criteria accepted for each net type
_CRITERIA = {
    NeuralNetClassifier: (torch.nn.NLLLoss, torch.nn.CrossEntropyLoss),
    NeuralNetBinaryClassifier: (torch.nn.BCEWithLogitsLoss,),
    NeuralNetRegressor: (torch.nn.MSELoss,),
}

#: optimizers whose ``weight_decay`` adds wd·θ to the gradient (an L2 term of the objective)
_COUPLED_DECAY_OPTIMIZERS = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.Adamax,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.NAdam,
    torch.optim.RAdam,
)

#: methods whose override would change the objective the package reads off the net
_OBJECTIVE_METHODS = ("get_loss", "infer", "train_step_single")


def _refuse(net, problem, fix):
    raise ValueError(f"{type(net).__name__}: {problem}. {fix}")


def _net_type(net):
    for net_type in _CRITERIA:
        if isinstance(net, net_type):
            return net_type
    raise TypeError(
        f"{type(net).__name__} is not a supported skorch net; use NeuralNetClassifier, "
        "NeuralNetBinaryClassifier or NeuralNetRegressor."
    )


def _criterion_class_and_params(net):
    criterion = net.criterion
    if isinstance(criterion, torch.nn.Module):
        attributes = {
            name: getattr(criterion, name)
            for name in ("reduction", "weight", "pos_weight", "label_smoothing", "ignore_index")
            if hasattr(criterion, name)
        }
        return type(criterion), attributes
    return criterion, net.get_params_for("criterion")


def _check_criterion(net):
    net_type = _net_type(net)
    criterion, params = _criterion_class_and_params(net)
    allowed = _CRITERIA[net_type]
    if not (isinstance(criterion, type) and issubclass(criterion, allowed)):
        name = getattr(criterion, "__name__", repr(criterion))
        _refuse(
            net,
            f"criterion {name} is not supported",
            f"Use criterion={' or '.join('torch.nn.' + c.__name__ for c in allowed)} "
            "(the package needs the loss on the module's outputs in closed form).",
        )
    if params.get("reduction", "mean") != "mean":
        _refuse(
            net,
            f"criterion__reduction={params['reduction']!r} is not supported",
            "Use reduction='mean' (the default): the objective is the mean loss.",
        )
    for name in ("weight", "pos_weight"):
        if params.get(name) is not None:
            _refuse(net, f"criterion__{name} is not supported", f"Use {name}=None.")
    if params.get("label_smoothing", 0.0) not in (0, 0.0):
        _refuse(net, "criterion__label_smoothing is not supported", "Use label_smoothing=0.")


def _effective_weight_decays(net):
    """Weight decays requested for the optimizer: the default one and those of param groups."""
    optimizer = net.optimizer
    params = net.get_params_for("optimizer")
    signature = inspect.signature(optimizer) if isinstance(optimizer, type) else None
    default = 0.0
    if signature is not None and "weight_decay" in signature.parameters:
        default = signature.parameters["weight_decay"].default
    decays = [float(params.get("weight_decay", default))]
    decays += [
        float(group["weight_decay"])
        for _, group in params.get("param_groups", [])
        if "weight_decay" in group
    ]
    return decays, params


def _check_optimizer(net):
    optimizer = net.optimizer
    decays, params = _effective_weight_decays(net)
    if not any(decays):
        return
    decoupled = (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.AdamW)) or bool(
        params.get("decoupled_weight_decay", False)
    )
    if decoupled:
        _refuse(
            net,
            "AdamW (decoupled weight decay) is not supported: its decay shrinks the weights "
            "outside the gradient, so it is not an L2 term of the training objective",
            "Use optimizer=torch.optim.Adam with optimizer__weight_decay=wd (L2 "
            "regularisation R = wd/2·‖θ‖²), or AdamW with optimizer__weight_decay=0.",
        )
    if not (isinstance(optimizer, type) and issubclass(optimizer, _COUPLED_DECAY_OPTIMIZERS)):
        names = ", ".join(c.__name__ for c in _COUPLED_DECAY_OPTIMIZERS)
        _refuse(
            net,
            f"weight decay with optimizer {getattr(optimizer, '__name__', optimizer)!r} is not "
            "supported",
            f"Use one of {names} (their weight_decay is an L2 penalty) or weight_decay=0.",
        )


def check_skorch_configuration(net):
    """Refuse skorch settings whose objective the package cannot reproduce exactly.

    Parameters
    ----------
    net : NeuralNetClassifier, NeuralNetBinaryClassifier or NeuralNetRegressor
        The (fitted or unfitted) net.

    Returns
    -------
    name : str
        The net's class name.

    Raises
    ------
    ValueError
        For a ``train_split`` that holds out data, an unsupported criterion or reduction,
        decoupled weight decay (AdamW), a custom data sampler, or overridden loss methods.

    Examples
    --------
    >>> import torch
    >>> from skorch import NeuralNetRegressor
    >>> from sklearn_influence._adapters._skorch import check_skorch_configuration
    >>> check_skorch_configuration(NeuralNetRegressor(torch.nn.Linear, train_split=None))
    'NeuralNetRegressor'
    >>> check_skorch_configuration(NeuralNetRegressor(torch.nn.Linear))
    Traceback (most recent call last):
    ...
    ValueError: NeuralNetRegressor: train_split is not None...
    """
    net_type = _net_type(net)
    if net.train_split is not None:
        _refuse(
            net,
            "train_split is not None, so skorch would hold out part of the data passed to fit "
            "for validation (its default keeps 20%) and the influence estimates would refer "
            "to a different training set",
            "Pass train_split=None to the net.",
        )
    _check_criterion(net)
    _check_optimizer(net)
    for name in _OBJECTIVE_METHODS:
        if getattr(type(net), name) is not getattr(net_type, name):
            _refuse(
                net,
                f"the net's class overrides {name}, so its training objective may differ from "
                "the criterion on the module's outputs",
                f"Use {net_type.__name__} itself with a custom module or criterion instead.",
            )
    iterator_params = net.get_params_for("iterator_train")
    for name in ("sampler", "batch_sampler"):
        if iterator_params.get(name) is not None:
            _refuse(
                net,
                f"iterator_train__{name} is not supported: the package controls the data order "
                "so that cold-start retraining reproduces the original fit",
                "Remove it; iterator_train__shuffle=True gives a seeded random order.",
            )
    if not (isinstance(net.iterator_train, type) and issubclass(net.iterator_train, DataLoader)):
        _refuse(
            net,
            "a custom iterator_train is not supported",
            "Use torch.utils.data.DataLoader (the default).",
        )
    return type(net).__name__


# -- training -----------------------------------------------------------------------------
class _EpochOrderSampler(Sampler):
    """Training order that stays the same for the remaining rows when rows are dropped.

    Epoch e visits the ORIGINAL N rows in the order of a permutation drawn from a generator
    seeded with (seed, e) (or in their natural order without shuffling); the rows present in
    this fit are yielded in that order, as positions in the (possibly reduced) data set.
    Dropping a row therefore leaves the relative order of all others unchanged.
    """

    def __init__(self, kept, n_original, seed, shuffle):
        self.kept = np.asarray(kept, dtype=np.int64)
        self.n_original = int(n_original)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0

    def __len__(self):
        return len(self.kept)

    def __iter__(self):
        if self.shuffle:
            entropy = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(entropy))
            order = torch.randperm(self.n_original, generator=generator).numpy()
        else:
            order = np.arange(self.n_original)
        self.epoch += 1
        position = np.full(self.n_original, -1, dtype=np.int64)
        position[self.kept] = np.arange(len(self.kept))
        mapped = position[order]
        return iter(mapped[mapped >= 0].tolist())


def _rng_devices():
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _trainable(module):
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def _module_dtype(module):
    for _, parameter in module.named_parameters():
        if not isinstance(parameter, torch.nn.parameter.UninitializedParameter):
            return parameter.dtype
    return torch.get_default_dtype()


def _takes_indices(module):
    """Whether the module embeds integer inputs (then integer X is passed as it is)."""
    return any(
        isinstance(layer, (torch.nn.Embedding, torch.nn.EmbeddingBag)) for layer in module.modules()
    )


def _as_module_array(X, dtype, keep_integers=False):
    """X as a numpy array in the module's dtype (no crash on float64 or integer input).

    Integer input stays integer only for modules with an embedding layer, which need indices.
    """
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise ValueError(
            f"skorch nets need numeric input arrays, got dtype {X.dtype}; encode the features "
            "first (for example with a ColumnTransformer in a Pipeline)."
        )
    if X.dtype.kind in "iu" and keep_integers:
        return X.astype(np.int64, copy=False)
    return X.astype(torch.empty((), dtype=dtype).numpy().dtype, copy=False)


def _prepare_targets(net, y, n_outputs, dtype):
    """y as skorch's criterion expects it, refusing labels the module cannot represent."""
    y = np.asarray(y)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    if isinstance(net, NeuralNetRegressor):
        values = y.astype(np_dtype).reshape(len(y), -1)
        if values.shape[1] != n_outputs:
            raise ValueError(
                f"y has {values.shape[1]} target column(s) but the module returns {n_outputs} "
                "output(s); make the module's output width match the targets."
            )
        return values
    if y.dtype.kind == "O":  # numbers stored as objects are still numbers
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            pass
    labels_ok = y.dtype.kind in "iub" or (
        y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    )
    n_classes = 2 if isinstance(net, NeuralNetBinaryClassifier) else n_outputs
    if not labels_ok or y.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= n_classes)):
        shown = np.unique(y.astype(str) if y.dtype.kind not in "iufb" else y)[:10].tolist()
        kind = "Unknown label type" if not labels_ok else "Labels out of range"
        raise ValueError(
            f"{kind} for {type(net).__name__}: it trains on integer class indices "
            f"0..{n_classes - 1} (a 1-d y), but got labels {shown}. Encode them with "
            "sklearn.preprocessing.LabelEncoder"
            + (" and give the module one output per class." if n_classes == n_outputs else ".")
        )
    if isinstance(net, NeuralNetBinaryClassifier):
        return y.astype(np_dtype)
    return y.astype(np.int64)


def _probe_outputs(net, X):
    """Module output on the first rows (eval mode): materialises lazy layers, gives the width."""
    module = net.module_
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.as_tensor(X[:2], device=net.device))
    finally:
        module.train(was_training)
    out = out[0] if isinstance(out, tuple) else out
    if isinstance(net, NeuralNetBinaryClassifier):
        return 1
    return int(np.prod(out.shape[1:])) if out.dim() > 1 else 1


def _flat_parameters(module):
    return torch.cat([p.detach().reshape(-1) for _, p in _trainable(module)])


def _state(module):
    """A CPU copy of the module's parameters and buffers (e.g. batch-norm statistics)."""
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def _train(net, X, y, *, seed, kept, n_original, initial=None):
    """Initialise ``net`` (then load the state dict ``initial`` when given) and train it on
    (X[kept], y[kept]).

    Returns the initial state (parameters and buffers) and the prepared data. Everything
    random — initialisation, data order, dropout — is seeded from ``seed`` in a forked RNG.
    """
    with torch.random.fork_rng(devices=_rng_devices()):
        torch.manual_seed(seed)
        net.initialize()
        dtype = _module_dtype(net.module_)
        X = _as_module_array(X, dtype, _takes_indices(net.module_))
        n_outputs = _probe_outputs(net, X)  # also materialises lazy modules
        y = _prepare_targets(net, y, n_outputs, _module_dtype(net.module_))
        module = getattr(net.module_, "_orig_mod", net.module_)  # torch.compile wrapper
        if initial is not None:
            module.load_state_dict(initial)
        initial_state = _state(module)
        shuffle = bool(net.get_params_for("iterator_train").get("shuffle", False))
        sampler = _EpochOrderSampler(kept, n_original, seed, shuffle)
        saved = {
            key: net.__dict__[key]
            for key in ("iterator_train__shuffle", "iterator_train__sampler")
            if key in net.__dict__
        }
        # set as plain attributes (not set_params) so they are not kept as net parameters
        net.__dict__["iterator_train__shuffle"] = False
        net.__dict__["iterator_train__sampler"] = sampler
        torch.manual_seed(seed + 1)
        try:
            net.partial_fit(X[kept], y[kept])
        finally:
            for key in ("iterator_train__shuffle", "iterator_train__sampler"):
                net.__dict__.pop(key, None)
            net.__dict__.update(saved)
    return initial_state, X, y


def fit_skorch(net, X, y):
    """Training hook for skorch nets: fit ``net`` reproducibly and record how.

    The seed is drawn from torch's current RNG (``InfluenceFunction`` seeds it from
    ``random_state``). Each epoch visits the training rows in an order drawn from a generator
    seeded by (seed, epoch) over the original N rows (the natural order when
    ``iterator_train__shuffle`` is False), so that a retraining without some rows keeps the
    order of the others.

    Parameters
    ----------
    net : skorch net
        An unfitted net with ``train_split=None``.
    X, y : array-like
        The training data (after any earlier pipeline steps).

    Returns
    -------
    fit_state : dict
        ``seed``, ``initial_state`` (the module's initial state dict, on the CPU),
        ``initial_parameters`` (θ⁰, flat), ``n_train`` and ``probe`` (the first rows of X,
        used to check that the module can be traced).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetRegressor
    >>> from sklearn_influence._adapters._skorch import fit_skorch
    >>> X = np.random.default_rng(0).normal(size=(20, 3))
    >>> net = NeuralNetRegressor(torch.nn.Linear, module__in_features=3, module__out_features=1,
    ...                          train_split=None, max_epochs=2, verbose=0)
    >>> state = fit_skorch(net, X, X.sum(1))
    >>> state["initial_parameters"].shape
    torch.Size([4])
    """
    check_skorch_configuration(net)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    n = len(X)
    initial_state, X_ready, _ = _train(net, X, y, seed=seed, kept=np.arange(n), n_original=n)
    module = getattr(net.module_, "_orig_mod", net.module_)
    names = [name for name, _ in _trainable(module)]
    theta0 = torch.cat([initial_state[name].reshape(-1) for name in names])
    return {
        "seed": seed,
        "initial_state": initial_state,
        "initial_parameters": theta0,
        "n_train": n,
        "probe": X_ready[:2],
    }


# -- adapter ------------------------------------------------------------------------------
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
            UserWarning,
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

    def __init__(self, net, n_train, *, preprocess=None, device=None, fit_state=None):
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
        """Per-parameter L2 coefficient r_j from the fitted optimizer's parameter groups."""
        source = getattr(self.net.module_, "_orig_mod", self.net.module_)
        by_id = {id(p): name for name, p in source.named_parameters()}
        decay = {}
        for group in self.net.optimizer_.param_groups:
            wd = float(group.get("weight_decay", 0.0))
            if wd and (group.get("decoupled_weight_decay", False) or group.get("maximize")):
                _refuse(
                    self.net,
                    "the fitted optimizer applies decoupled weight decay (AdamW-style) or "
                    "maximizes",
                    "Use torch.optim.Adam or SGD with optimizer__weight_decay (an L2 penalty).",
                )
            for parameter in group["params"]:
                if id(parameter) in by_id:
                    decay[by_id[id(parameter)]] = wd
        missing = [name for name in self._names if name not in decay]
        if missing:
            raise ValueError(
                f"The trainable parameters {missing[:5]} are not updated by the net's optimizer, "
                "so they are not fitted; set requires_grad=False on them."
            )
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
        """The module's input as a numpy array in the module's dtype."""
        Z = X if self.preprocess is None else self.preprocess(X)
        Z = _as_module_array(Z, self.dtype, _takes_indices(self._module))
        if Z.dtype.kind == "f" and not np.all(np.isfinite(Z)):
            raise ValueError(
                "The net's input features contain NaN or infinity; impute or drop them "
                "(for example with sklearn.impute.SimpleImputer in the pipeline)."
            )
        return Z

    def _as_tensor(self, Z):
        tensor = torch.as_tensor(np.asarray(Z), device=self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def inputs(self, X):
        tensor = self._as_tensor(self.features(X))
        if self._n_outputs is None and len(tensor):
            self._probe(tensor[:2])
        return tensor

    # -- model --------------------------------------------------------------------------
    def parameters(self):
        return self._theta

    def _raw_outputs(self, theta, inputs):
        out = functional_call(
            self._module, {**self._constants, **self._unflatten(theta)}, (inputs,)
        )
        return out[0] if isinstance(out, tuple) else out

    def outputs(self, theta, inputs):
        return self._head(self._raw_outputs(theta, inputs))

    def regularizer_diagonal(self):
        return self._decay

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
        n = len(y)
        kept = np.setdiff1d(np.arange(n), np.asarray(exclude, dtype=np.int64))
        seed = 0 if self.fit_state is None else self.fit_state["seed"]
        # warm: the fitted parameters and buffers; cold: the recorded initial ones
        source = getattr(self.net.module_, "_orig_mod", self.net.module_)
        initial = _state(source) if warm_start else self.fit_state["initial_state"]
        net = clone(self.net)
        _train(net, Z, y, seed=seed, kept=kept, n_original=n, initial=initial)
        source = getattr(net.module_, "_orig_mod", net.module_)
        return _flat_parameters(source).to(self.device, self.dtype)


__all__ = [
    "SKORCH_NETS",
    "SkorchAdapter",
    "check_skorch_configuration",
    "fit_skorch",
]
