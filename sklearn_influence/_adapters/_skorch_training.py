"""Seeded, reproducible training of skorch nets, and retraining on a subset of the rows.

``fit_skorch`` records the initial parameters and buffers θ⁰ and trains with an epoch order
that does not change for the remaining rows when rows are removed, so a cold-start retrain
without point m is the same run minus m (DESIGN.md §2, leave-one-out).
"""

import numpy as np
import torch
from skorch import NeuralNetBinaryClassifier, NeuralNetRegressor
from torch.utils.data import Sampler

from .._torch_utils import array_to_tensor, draw_seed, forked_torch_rng
from ._rows import DatasetInputs, PairedRows, head_rows, is_dataset, rows_of
from ._skorch_checks import check_embedding_inputs, check_module, check_skorch_configuration
from ._skorch_outputs import module_logits
from ._skorch_weights import WeightedRows, mean_one, weighted_training


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
    A dict X (skorch's named inputs, passed to ``forward`` as keywords) converts each array.
    """
    if isinstance(X, dict):
        return {name: _as_module_array(A, dtype, keep_integers) for name, A in X.items()}
    if is_dataset(X):  # converted item by item as the training loop loads them
        return DatasetInputs(X, lambda item: _as_module_array(item, dtype, keep_integers))
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
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
    if y.ndim != 1:
        kind = "one-hot or multilabel y" if y.ndim == 2 and y.shape[1] > 1 else "y"
        raise ValueError(
            f"{type(net).__name__} trains on a 1-d y (one integer class index per row), but "
            f"got a {kind} of shape {y.shape}. Pass one label per row: y.ravel() for a "
            "single column, y.argmax(axis=1) for one-hot labels; for several targets per row "
            "use NeuralNetRegressor."
        )
    if y.dtype.kind == "O":  # numbers stored as objects are still numbers
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            pass
    labels_ok = y.dtype.kind in "iub" or (
        y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    )
    n_classes = 2 if isinstance(net, NeuralNetBinaryClassifier) else n_outputs
    regression_hint = (
        " If y is a continuous target (a regression), use skorch's NeuralNetRegressor "
        "(MSELoss) instead of a classifier."
    )
    if not labels_ok or (len(y) and (y.min() < 0 or y.max() >= n_classes)):
        shown = np.unique(y.astype(str) if y.dtype.kind not in "iufb" else y)[:10].tolist()
        kind = "Unknown label type" if not labels_ok else "Labels out of range"
        raise ValueError(
            f"{kind} for {type(net).__name__}: it trains on integer class indices "
            f"0..{n_classes - 1} (a 1-d y), but got labels {shown}. Encode them with "
            "sklearn.preprocessing.LabelEncoder"
            + (" and give the module one output per class." if n_classes == n_outputs else ".")
            + (regression_hint if y.dtype.kind == "f" and not labels_ok else "")
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
            first = head_rows(X)
            if isinstance(first, dict):
                out = module(**{k: array_to_tensor(A, device=net.device) for k, A in first.items()})
            else:
                out = module(array_to_tensor(first, device=net.device))
    finally:
        module.train(was_training)
    out = module_logits(out)
    if isinstance(net, NeuralNetBinaryClassifier):
        return 1
    return int(np.prod(out.shape[1:])) if out.dim() > 1 else 1


def _flat_parameters(module):
    return torch.cat([p.detach().reshape(-1) for _, p in _trainable(module)])


def _state(module):
    """A CPU copy of the module's parameters and buffers (e.g. batch-norm statistics)."""
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def _train(net, X, y, *, seed, kept, n_original, initial=None, weights=None):
    """Initialise ``net`` (then load the state dict ``initial`` when given) and train it on
    (X[kept], y[kept]), each row weighted by ``weights[kept]`` (mean-1 weights of all N rows,
    :mod:`._skorch_weights`) when given.

    Returns the initial state (parameters and buffers) and the prepared data. Everything
    random — initialisation, data order, dropout — is seeded from ``seed`` in a forked RNG,
    held by one thread at a time (:func:`~.._torch_utils.forked_torch_rng`): torch offers no
    generator argument for a module's initialisation or its dropout, so concurrent fits in
    threads would otherwise draw from each other's seeds.
    """
    with forked_torch_rng(seed):
        try:
            net.initialize()
        except ValueError:  # e.g. torch's "empty parameter list": say what the module lacks
            if getattr(net, "module_", None) is not None:
                check_module(net)
            raise
        check_module(net)
        dtype = _module_dtype(net.module_)
        X = _as_module_array(X, dtype, _takes_indices(net.module_))
        if isinstance(X, np.ndarray):  # dict and Dataset inputs: checked where they stream
            check_embedding_inputs(net, net.module_, X)
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
            _partial_fit(net, X, y, kept, weights)
        finally:
            for key in ("iterator_train__shuffle", "iterator_train__sampler"):
                net.__dict__.pop(key, None)
            net.__dict__.update(saved)
    return initial_state, X, y


def _partial_fit(net, X, y, kept, weights):
    if weights is None and not is_dataset(X):
        net.partial_fit(rows_of(X, kept), y[kept])
        return
    if weights is None:  # a data set of inputs: skorch takes (input, target) items
        net.partial_fit(PairedRows(rows_of(X, kept), y[kept]), None)
    else:
        with weighted_training(net):
            net.partial_fit(WeightedRows(rows_of(X, kept), y[kept], weights[kept]), None)
    if not isinstance(net, (NeuralNetBinaryClassifier, NeuralNetRegressor)):
        net.classes_inferred_ = np.unique(y)  # skorch infers them from a y it got here


def fit_skorch(net, X, y, sample_weight=None):
    """Training hook for skorch nets: fit ``net`` reproducibly and record how.

    The seed is drawn with :func:`~.._torch_utils.draw_seed`: from the generator of the
    enclosing ``seeded_torch(random_state)`` block of this thread (``InfluenceFunction`` and
    the other estimators), else from torch's global RNG. Each epoch visits the training
    rows in an order drawn from a generator seeded by (seed, epoch) over the original N rows
    (the natural order when ``iterator_train__shuffle`` is False), so that a retraining
    without some rows keeps the order of the others.

    Parameters
    ----------
    net : skorch net
        An unfitted net with ``train_split=None``.
    X, y : array-like
        The training data (after any earlier pipeline steps).
    sample_weight : array-like of shape (n_samples,) or None
        Per-row weights: the net is trained on Σ w_i L_i / W (:mod:`._skorch_weights`).

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
    >>> from sklearn_influence._adapters._skorch_training import fit_skorch
    >>> X = np.random.default_rng(0).normal(size=(20, 3))
    >>> net = NeuralNetRegressor(torch.nn.Linear, module__in_features=3, module__out_features=1,
    ...                          train_split=None, max_epochs=2, verbose=0)
    >>> state = fit_skorch(net, X, X.sum(1))
    >>> state["initial_parameters"].shape
    torch.Size([4])
    """
    check_skorch_configuration(net)
    seed = draw_seed()
    n = len(y)
    weights = None if sample_weight is None else mean_one(sample_weight)
    initial_state, X_ready, _ = _train(
        net, X, y, seed=seed, kept=np.arange(n), n_original=n, weights=weights
    )
    module = getattr(net.module_, "_orig_mod", net.module_)
    names = [name for name, _ in _trainable(module)]
    theta0 = torch.cat([initial_state[name].reshape(-1) for name in names])
    return {
        "seed": seed,
        "initial_state": initial_state,
        "initial_parameters": theta0,
        "n_train": n,
        "probe": head_rows(X_ready),
    }
