"""Which skorch nets the package accepts, and the clear refusal of the others.

A net is accepted when its objective maps exactly onto the mean form of DESIGN.md §2: a
supported net type and criterion, an optimizer whose weight decay is a coupled L2 term, no
held-out validation split, and no override of the methods that define the loss.
"""

import inspect

import torch
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from torch.utils.data import DataLoader

from .._torch_utils import array_to_tensor

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


def _optimizer_groups(net, module):
    """The optimizer's parameter groups (dicts with ``params`` and their settings).

    An already constructed ``net.optimizer_`` is read as it is (it also reflects settings
    changed with ``set_params`` after initialisation); otherwise the groups are assembled
    exactly as skorch would pass them to the optimizer (``get_params_for_optimizer``: the
    ``optimizer__*`` settings and ``optimizer__param_groups`` patterns), with the optimizer
    class's own defaults from its signature, without constructing it.
    """
    if getattr(net, "optimizer_", None) is not None:
        return net.optimizer_.param_groups
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    args, kwargs = net.get_params_for_optimizer("optimizer", named)
    groups = args[0] if args else []
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": list(groups)}]
    optimizer = net.optimizer
    defaults = {}
    if isinstance(optimizer, type):
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(optimizer).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
    return [{**defaults, **kwargs, **group} for group in groups]


def parameter_weight_decays(net, names):
    """The L2 coefficient of each trainable parameter of the net's module, by name.

    Parameters
    ----------
    net : fitted or initialized skorch net
    names : list of str
        The trainable parameters' names (``module.named_parameters`` order).

    Returns
    -------
    decays : dict
        name → weight decay (float).

    Raises
    ------
    ValueError
        For a group with decoupled weight decay or ``maximize``, or a trainable parameter
        that no optimizer group updates.
    """
    module = getattr(net.module_, "_orig_mod", net.module_)
    by_id = {id(p): name for name, p in module.named_parameters()}
    decay = {}
    for group in _optimizer_groups(net, module):
        wd = float(group.get("weight_decay", 0.0) or 0.0)
        decoupled = group.get("decoupled_weight_decay", False) or (
            isinstance(net.optimizer, type) and issubclass(net.optimizer, torch.optim.AdamW)
        )
        if wd and (decoupled or group.get("maximize")):
            _refuse(
                net,
                "the optimizer applies decoupled weight decay (AdamW-style) or maximizes",
                "Use torch.optim.Adam or SGD with optimizer__weight_decay (an L2 penalty).",
            )
        for parameter in group["params"]:
            if id(parameter) in by_id:
                decay[by_id[id(parameter)]] = wd
    missing = [name for name in names if name not in decay]
    if missing:
        raise ValueError(
            f"The trainable parameters {missing[:5]} are not updated by the net's optimizer, "
            "so they are not fitted; set requires_grad=False on them."
        )
    return decay


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
    >>> from sklearn_influence._adapters._skorch_checks import check_skorch_configuration
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


# -- the module itself (after initialisation), before any numerical work ---------------------

#: layers that take integer token ids
_EMBEDDINGS = (torch.nn.Embedding, torch.nn.EmbeddingBag)


def _trainable_module(net):
    return getattr(net.module_, "_orig_mod", net.module_)  # torch.compile wrapper


def check_module(net, module=None):
    """Refuse a module whose influence is undefined, naming the layer and the fix.

    Parameters
    ----------
    net : initialized skorch net
    module : torch.nn.Module, default=None
        The module to check (default: the net's ``module_``).

    Raises
    ------
    ValueError
        For a module without trainable parameters (influence is a derivative with respect
        to them), and a BatchNorm layer with ``track_running_stats=False``, which
        normalises every batch by its own statistics even in eval mode, so a row's output
        depends on the other rows of its batch and per-example gradients do not exist.

    Examples
    --------
    >>> import torch
    >>> from skorch import NeuralNetRegressor
    >>> from sklearn_influence._adapters._skorch_checks import check_module
    >>> module = torch.nn.Sequential(torch.nn.Linear(3, 1),
    ...                              torch.nn.BatchNorm1d(1, track_running_stats=False))
    >>> net = NeuralNetRegressor(module, train_split=None).initialize()
    >>> check_module(net)
    Traceback (most recent call last):
    ...
    ValueError: NeuralNetRegressor: the layer '1' (BatchNorm1d) has track_running_stats=False...
    """
    module = _trainable_module(net) if module is None else module
    if not any(parameter.requires_grad for parameter in module.parameters()):
        _refuse(
            net,
            f"the module {type(module).__name__} has no trainable parameters (none, or all "
            "with requires_grad=False), and influence is a derivative with respect to them",
            "Give the module at least one torch.nn.Parameter with requires_grad=True.",
        )
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and (
            not layer.track_running_stats
        ):
            _refuse(
                net,
                f"the layer {name!r} ({type(layer).__name__}) has track_running_stats=False, "
                "so it normalises each batch by the batch's own statistics even in eval mode: "
                "a row's output depends on the other rows of its batch, and per-example "
                "gradients (hence influence) are not defined",
                f"Use {type(layer).__name__}(..., track_running_stats=True) (the default: "
                "eval mode then uses the running statistics), or a per-example normalisation "
                "such as torch.nn.LayerNorm or GroupNorm.",
            )


class _BadTokens(ValueError):
    pass


def _token_hook(net, name, layer, offset, what):
    def hook(_, args):
        ids = args[0]
        size = layer.num_embeddings
        if ids.is_floating_point() or ids.is_complex():
            raise _BadTokens(
                f"{type(net).__name__}: the embedding layer {name!r} (num_embeddings={size}) "
                f"takes integer token ids, but {what} gives it {ids.dtype} values. Pass "
                f"integer ids 0..{size - 1}, e.g. X.astype(np.int64)."
            )
        bad = (ids < 0) | (ids >= size)
        if not bool(bad.any()):
            return
        where = ""
        if ids.dim() > 0 and ids.shape[0] == offset[1]:
            rows = torch.nonzero(bad.reshape(len(ids), -1).any(1)).flatten() + offset[0]
            shown = rows[:10].tolist()
            where = f" in the rows {shown}{' ...' if len(rows) > 10 else ''} of {what}"
        low, high = int(ids.min()), int(ids.max())
        enlarge = f", or give the layer num_embeddings >= {high + 1}" if high >= size else ""
        raise _BadTokens(
            f"{type(net).__name__}: the embedding layer {name!r} has num_embeddings={size}, so "
            f"token ids must lie in 0..{size - 1}, but it got ids from {low} to {high}{where}. "
            f"Map the tokens to 0..{size - 1} (e.g. a reserved id for unknown tokens"
            f"{', not negative ids' if low < 0 else ''}){enlarge}."
        )

    return hook


def check_embedding_inputs(net, module, X, *, what="X", batch_size=1024):
    """Refuse token ids that the module's embedding layers cannot look up, before any
    training or gradient: float ids, negative ids and ids ≥ ``num_embeddings``.

    The ids are checked where they reach each ``nn.Embedding``/``nn.EmbeddingBag`` (forward
    pre-hooks during one eval-mode, no-grad pass over ``X``), so modules that select or
    offset their token columns are checked correctly. A module that fails for another
    reason is left to the later probe, which reports its own error.

    Parameters
    ----------
    net : skorch net
        Named in the messages.
    module : torch.nn.Module
    X : ndarray
        The module's input, as it is passed to ``forward``.
    what : str, default="X"
        How the messages name the data.
    batch_size : int, default=1024
        Rows per forward pass.
    """
    layers = [
        (name, layer) for name, layer in module.named_modules() if isinstance(layer, _EMBEDDINGS)
    ]
    if not layers or len(X) == 0:
        return
    offset = [0, 0]
    handles = [
        layer.register_forward_pre_hook(_token_hook(net, name, layer, offset, what))
        for name, layer in layers
    ]
    was_training = module.training
    module.eval()
    device = next(iter(module.parameters()), torch.empty(0)).device
    try:
        with torch.no_grad():
            for start in range(0, len(X), batch_size):
                batch = array_to_tensor(X[start : start + batch_size], device=device)
                offset[:] = [start, len(batch)]
                module(batch)
    except _BadTokens as error:
        raise ValueError(str(error)) from None
    except Exception:  # the module's own failure: the probe re-raises it with context
        return
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
