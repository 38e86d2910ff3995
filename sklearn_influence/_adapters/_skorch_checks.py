"""Which skorch nets the package accepts, and the clear refusal of the others.

A net is accepted when its objective maps exactly onto the mean form of DESIGN.md §2: a
supported net type and criterion, an optimizer whose weight decay is a coupled L2 term, no
held-out validation split, and no override of the methods that define the loss.
"""

import inspect

import torch
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from torch.utils.data import DataLoader

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
