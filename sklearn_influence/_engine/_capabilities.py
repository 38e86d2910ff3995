"""Declared capabilities: what a curvature or a solver needs, what a model family offers.

Every curvature class declares ``requires`` (``"layer_structure"``: the Kronecker factors need
the model's ``nn.Linear``/``nn.Conv2d`` layers; ``"targets"``: the Hessian needs the labels)
and ``factored`` (it brings its own damped inverse); every solver class declares ``requires``
(``"factored_curvature"``, ``"dense"``) and may add needs that depend on its options
(:meth:`requirements`, e.g. CG with an EK-FAC preconditioner needs the layer structure). A
model family offers ``"targets"`` always and ``"layer_structure"`` when its adapter class
implements ``layer_structure``. :func:`check_pairing` compares the declarations and raises
:class:`UnsupportedCombinationError` naming the pair and a fix — before any numerical work,
instead of an ``AttributeError`` or ``NotImplementedError`` deep inside.
"""

#: everything a model family can offer
MODEL_CAPABILITIES = frozenset({"layer_structure", "targets"})

#: how each need is met, for the messages
_FIXES = {
    "layer_structure": (
        "the Kronecker factors need the model's nn.Linear/nn.Conv2d layers, which this model "
        "family does not expose; use curvature='gauss_newton' (solver='near_exact' for speed), "
        "or wrap the network in a skorch net"
    ),
    "targets": "the curvature needs the training targets",
    "factored_curvature": (
        "it applies a factored curvature's own inverse; use curvature='kfac' or 'ekfac', or "
        "another solver"
    ),
}


class UnsupportedCombinationError(ValueError):
    """A curvature, solver or option that the model (or the other choices) cannot support."""


def model_capabilities(adapter_class):
    """What a model family offers: ``"targets"``, and ``"layer_structure"`` when its adapter
    class implements ``layer_structure`` (or as its ``capabilities`` attribute declares)."""
    declared = getattr(adapter_class, "capabilities", None)
    if declared is not None:
        return frozenset(declared)
    offered = {"targets"}
    owner = next((base for base in adapter_class.__mro__ if "layer_structure" in vars(base)), None)
    # the root ModelAdapter's layer_structure only raises NotImplementedError
    if owner is not None and owner.__name__ != "ModelAdapter":
        offered.add("layer_structure")
    return frozenset(offered)


def solver_requirements(solver_class, options=None):
    """The solver's declared needs, with those its options add (``requirements``)."""
    method = getattr(solver_class, "requirements", None)
    if method is not None:
        return frozenset(method(options or {}))
    return frozenset(solver_class.requires)


def check_pairing(curvature_class, solver_class=None, *, offered=None, options=None,
                  model_name="this model"):  # fmt: skip
    """Raise :class:`UnsupportedCombinationError` for a pairing the declarations refuse.

    Parameters
    ----------
    curvature_class : type
        A curvature class (its ``requires`` and ``factored``).
    solver_class : type or None
        A solver class (its ``requires`` / ``requirements(options)``).
    offered : frozenset or None
        What the model offers (:func:`model_capabilities`); None skips the model checks.
    options : dict or None
        The solver's options (they may add needs).
    model_name : str
        The model's name in the message.

    Examples
    --------
    >>> from sklearn_influence._engine._capabilities import check_pairing
    >>> from sklearn_influence._engine._curvature import CURVATURES
    >>> from sklearn_influence._engine._solvers import SOLVERS
    >>> check_pairing(CURVATURES["gauss_newton"], SOLVERS["factored"])
    Traceback (most recent call last):
    ...
    sklearn_influence._engine._capabilities.UnsupportedCombinationError: solver='factored' ...
    >>> check_pairing(CURVATURES["kfac"], offered=frozenset({"targets"}),
    ...               model_name="MLPClassifier")
    Traceback (most recent call last):
    ...
    sklearn_influence._engine._capabilities.UnsupportedCombinationError: curvature='kfac' ...
    """
    needs = []
    if solver_class is not None:
        solver_needs = solver_requirements(solver_class, options)
        if "factored_curvature" in solver_needs and not curvature_class.factored:
            raise UnsupportedCombinationError(
                f"solver={solver_class.name!r} does not support "
                f"curvature={curvature_class.name!r}: {_FIXES['factored_curvature']}."
            )
        needs += [(f"solver={solver_class.name!r}", need) for need in solver_needs]
    needs += [(f"curvature={curvature_class.name!r}", need) for need in curvature_class.requires]
    if offered is None:
        return
    for owner, need in needs:
        if need in MODEL_CAPABILITIES and need not in offered:
            raise UnsupportedCombinationError(
                f"{owner} is not supported for {model_name}: {_FIXES[need]}."
            )


__all__ = [
    "MODEL_CAPABILITIES",
    "UnsupportedCombinationError",
    "check_pairing",
    "model_capabilities",
    "solver_requirements",
]
