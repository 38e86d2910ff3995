"""One validation mechanism for options dicts (``solver_options``, ``curvature_options``,
``score_options``, an optimizer's options, ...).

Each component that takes options declares them where it is defined, as two class
attributes: ``options`` (name → default) and ``option_constraints`` (name → a list of
scikit-learn parameter constraints: types, :class:`~sklearn.utils._param_validation.Interval`,
:class:`~sklearn.utils._param_validation.StrOptions`, ``None``, callables). :func:`check_options`
fills in the defaults and raises scikit-learn's ``InvalidParameterError`` (a subclass of both
``ValueError`` and ``TypeError``) for an unknown name or a value outside its constraints,
before any numerical work.
"""

from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints


def check_options(options, defaults, constraints, *, channel, owner):
    """``options`` with the defaults filled in, every value checked against its constraints.

    Parameters
    ----------
    options : dict or None
        What the user passed (``None`` is no options).
    defaults : dict
        Option name → default value; the accepted names.
    constraints : dict
        Option name → list of constraints (scikit-learn's ``_parameter_constraints`` format).
        A name of ``defaults`` without an entry is a programming error.
    channel : str
        The parameter the options came through, e.g. ``"solver_options"``.
    owner : str
        What takes them, e.g. ``"solver='cg'"``; both appear in the messages.

    Returns
    -------
    settings : dict

    Examples
    --------
    >>> from sklearn.utils._param_validation import Interval
    >>> from numbers import Real
    >>> defaults = {"tol": 1e-3}
    >>> constraints = {"tol": [Interval(Real, 0, None, closed="neither")]}
    >>> check_options({"tol": 1e-6}, defaults, constraints, channel="solver_options",
    ...               owner="solver='cg'")
    {'tol': 1e-06}
    >>> check_options({"tol": -1}, defaults, constraints, channel="solver_options",
    ...               owner="solver='cg'")
    Traceback (most recent call last):
    ...
    sklearn.utils._param_validation.InvalidParameterError: The 'tol' parameter ... Got -1 instead.
    >>> check_options({"tl": 1}, defaults, constraints, channel="solver_options",
    ...               owner="solver='cg'")
    Traceback (most recent call last):
    ...
    sklearn.utils._param_validation.InvalidParameterError: Unknown solver_options ['tl'] ...
    """
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidParameterError(
            f"{channel} for {owner} must be a dict of option name → value or None, got "
            f"{type(options).__name__}."
        )
    missing = sorted(set(defaults) - set(constraints))
    if missing:  # a declaration error of the component, not the user's
        raise RuntimeError(f"{owner} declares options without constraints: {missing}.")
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise InvalidParameterError(
            f"Unknown {channel} {unknown} for {owner}; it accepts {sorted(defaults)}."
        )
    settings = {**defaults, **options}
    validate_parameter_constraints(
        {name: constraints[name] for name in options},
        options,
        caller_name=f"{channel} of {owner}",
    )
    return settings
