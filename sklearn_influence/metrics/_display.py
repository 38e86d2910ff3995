"""Display objects in scikit-learn's style (compute once, plot many times)."""

from sklearn.utils.validation import check_is_fitted

from ._detection import mislabel_detection_auc, mislabel_recall_curve


def _check_matplotlib(caller):
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            f"{caller} needs matplotlib, which is not installed. Install it with "
            "`pip install matplotlib` (or `pip install sklearn-influence[plot]`)."
        ) from error
    return plt


class MislabelRecallDisplay:
    """Recall of mislabeled points against the fraction of the data inspected.

    Build it with :meth:`from_estimator` or :meth:`from_predictions`; both compute the
    curve with :func:`~sklearn_influence.metrics.mislabel_recall_curve` and plot it. Calling
    :meth:`plot` again draws the same curve on other axes without recomputing it.

    Parameters
    ----------
    fraction_inspected : ndarray
        Fractions of the data inspected, most suspicious first (x axis).
    recall : ndarray
        Fraction of the mislabeled points found (y axis).
    auc : float, default=None
        Area under the curve, shown in the legend when given.
    name : str, default=None
        Name of the detector for the legend.

    Attributes
    ----------
    line_ : matplotlib Line2D
        The curve.
    chance_level_ : matplotlib Line2D or None
        The expected curve of a random inspection order, when plotted.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    See Also
    --------
    sklearn_influence.metrics.mislabel_recall_curve : The curve's values.
    sklearn_influence.MislabelDetector : Ranks training points by suspicion.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn_influence.metrics import MislabelRecallDisplay
    >>> display = MislabelRecallDisplay.from_predictions(
    ...     [0, 1, 0, 1], [0.1, 0.9, 0.3, 0.2], name="loss", plot_chance_level=True
    ... )
    >>> display.line_.get_label()
    'loss (AUC = 0.62)'
    """

    def __init__(self, fraction_inspected, recall, *, auc=None, name=None):
        self.fraction_inspected = fraction_inspected
        self.recall = recall
        self.auc = auc
        self.name = name

    def plot(self, ax=None, *, name=None, plot_chance_level=False, chance_level_kw=None, **kwargs):
        """Plot the curve.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure is created when None.
        name : str, default=None
            Legend name; defaults to the ``name`` given at construction.
        plot_chance_level : bool, default=False
            Also draw the diagonal: the expected recall of a random inspection order.
        chance_level_kw : dict, default=None
            Keyword arguments for matplotlib's ``plot`` of the chance level.
        **kwargs : dict
            Keyword arguments for matplotlib's ``plot`` of the curve.

        Returns
        -------
        display : MislabelRecallDisplay
            This object, with ``line_``, ``chance_level_``, ``ax_`` and ``figure_`` set.
        """
        plt = _check_matplotlib(f"{type(self).__name__}.plot")
        if ax is None:
            _, ax = plt.subplots()
        name = self.name if name is None else name
        label = name
        if self.auc is not None:
            label = f"AUC = {self.auc:0.2f}" if name is None else f"{name} (AUC = {self.auc:0.2f})"
        line_kwargs = {"drawstyle": "default"}
        if label is not None:
            line_kwargs["label"] = label
        line_kwargs.update(kwargs)
        (self.line_,) = ax.plot(self.fraction_inspected, self.recall, **line_kwargs)
        self.chance_level_ = None
        if plot_chance_level:
            chance_kwargs = {"color": "k", "linestyle": "--", "label": "Random (AUC = 0.50)"}
            chance_kwargs.update(chance_level_kw or {})
            (self.chance_level_,) = ax.plot((0, 1), (0, 1), **chance_kwargs)
        ax.set(
            xlabel="Fraction of the data inspected",
            ylabel="Fraction of mislabeled points found",
            xlim=(-0.01, 1.01),
            ylim=(-0.01, 1.01),
        )
        if "label" in line_kwargs or plot_chance_level:
            ax.legend(loc="lower right")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        is_mislabeled,
        scores,
        *,
        name=None,
        ax=None,
        plot_chance_level=False,
        chance_level_kw=None,
        **kwargs,
    ):
        """Plot the curve from known corruption and suspicion scores.

        Parameters
        ----------
        is_mislabeled : array-like of shape (n_samples,)
            True (or 1) for the points whose label is known to be wrong.
        scores : array-like of shape (n_samples,)
            Suspicion of each point, higher = inspect first.
        name : str, default=None
            Legend name.
        ax : matplotlib Axes, default=None
            Axes to draw on.
        plot_chance_level : bool, default=False
            Also draw the expected curve of a random inspection order.
        chance_level_kw : dict, default=None
            Keyword arguments for the chance level's ``plot``.
        **kwargs : dict
            Keyword arguments for the curve's ``plot``.

        Returns
        -------
        display : MislabelRecallDisplay
        """
        _check_matplotlib(f"{cls.__name__}.from_predictions")
        fraction, recall = mislabel_recall_curve(is_mislabeled, scores)
        auc = mislabel_detection_auc(is_mislabeled, scores)
        display = cls(fraction, recall, auc=auc, name=name)
        return display.plot(
            ax=ax, plot_chance_level=plot_chance_level, chance_level_kw=chance_level_kw, **kwargs
        )

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y,
        is_mislabeled,
        *,
        name=None,
        ax=None,
        plot_chance_level=False,
        chance_level_kw=None,
        **kwargs,
    ):
        """Plot the curve of a fitted :class:`~sklearn_influence.MislabelDetector`.

        The suspicion of each point is ``-estimator.score_samples(X, y)``. For the training
        set this is the detector's fitted ranking; note that ``score_samples`` recomputes
        it (for ``method="pbrf_self_influence"`` that costs one response per point), so with
        an expensive score prefer
        ``from_predictions(is_mislabeled, estimator.mislabel_scores_)``.

        Parameters
        ----------
        estimator : MislabelDetector
            A fitted detector.
        X : array-like of shape (n_samples, n_features)
            Inputs of the labelled points to rank (usually the training set).
        y : array-like of shape (n_samples,)
            Their labels, as given (possibly wrong).
        is_mislabeled : array-like of shape (n_samples,)
            True (or 1) for the points whose label is known to be wrong.
        name : str, default=None
            Legend name; defaults to the estimator's class name and method.
        ax : matplotlib Axes, default=None
            Axes to draw on.
        plot_chance_level : bool, default=False
            Also draw the expected curve of a random inspection order.
        chance_level_kw : dict, default=None
            Keyword arguments for the chance level's ``plot``.
        **kwargs : dict
            Keyword arguments for the curve's ``plot``.

        Returns
        -------
        display : MislabelRecallDisplay
        """
        _check_matplotlib(f"{cls.__name__}.from_estimator")
        if not hasattr(estimator, "score_samples"):
            raise TypeError(
                f"from_estimator needs a fitted MislabelDetector, got "
                f"{type(estimator).__name__}, which has no score_samples; use "
                "from_predictions with your own suspicion scores instead."
            )
        check_is_fitted(estimator)
        if name is None:
            method = getattr(estimator, "method", None)
            suffix = f" ({method})" if isinstance(method, str) else ""
            name = f"{type(estimator).__name__}{suffix}"
        scores = -estimator.score_samples(X, y)
        return cls.from_predictions(
            is_mislabeled,
            scores,
            name=name,
            ax=ax,
            plot_chance_level=plot_chance_level,
            chance_level_kw=chance_level_kw,
            **kwargs,
        )
