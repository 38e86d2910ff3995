"""Display objects in scikit-learn's style (compute once, plot many times)."""

from numbers import Integral

import numpy as np
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
            # the method used (what method="auto" resolved to), else the parameter
            method = getattr(estimator, "method_", getattr(estimator, "method", None))
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


def _top_k(influence, k):
    """The k largest and k most negative entries of each row, ties by lower index first."""
    order = np.argsort(-influence, axis=1, kind="stable")[:, :k]
    harmful = np.argsort(influence, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(influence))[:, None]
    return order, influence[rows, order], harmful, influence[rows, harmful]


def _as_images(array, image_shape, what):
    """(n, h, w) images of ``array``'s rows, or None when they are not images."""
    if array is None:
        return None
    array = np.asarray(array)
    if image_shape is not None:
        if int(np.prod(image_shape)) != int(np.prod(array.shape[1:])):
            raise ValueError(
                f"image_shape={tuple(image_shape)} does not fit the {what}, whose rows have "
                f"{int(np.prod(array.shape[1:]))} values; give the shape of one image, e.g. "
                "(8, 8) for 64 pixels."
            )
        return array.reshape(len(array), *image_shape)
    if array.ndim == 4 and array.shape[1] == 1:  # (n, 1, h, w): one channel
        return array[:, 0]
    return array if array.ndim == 3 else None


class MostInfluentialDisplay:
    """The most helpful and most harmful training examples of each query.

    One row per query. With images (``query_images`` and ``train_images``), the row shows the
    query image, then its ``k`` most helpful and ``k`` most harmful training images, each
    titled with its name, label and influence; otherwise a horizontal bar chart of those
    ``2k`` influences. Build it with :meth:`from_estimator` (a fitted
    :class:`~sklearn_influence.InfluenceFunction`) or :meth:`from_predictions` (an influence
    matrix); :meth:`plot` draws it again on other axes without recomputing anything.

    Influence follows the package's sign convention: positive means removing the training
    example is predicted to raise the query's loss (it *helps* the query), negative means it
    *harms* it.

    Parameters
    ----------
    helpful_indices, helpful_values : ndarray of shape (n_queries, k)
        Positions of the most helpful training examples and their influence, largest first.
    harmful_indices, harmful_values : ndarray of shape (n_queries, k)
        The most harmful ones, most negative first.
    query_images : ndarray of shape (n_queries, height, width), default=None
        Images of the queries (with ``train_images``: image mode).
    train_images : ndarray of shape (n_train, height, width), default=None
        Images of the training examples.
    query_labels : array-like of shape (n_queries,), default=None
        Shown in the titles.
    train_labels : array-like of shape (n_train,), default=None
        Shown next to each training example.
    train_names : array-like of shape (n_train,), default=None
        How each training example is named (a file row, an id); its position by default.
    query_names : array-like of shape (n_queries,), default=None
        How each query is named; its position by default.

    Attributes
    ----------
    axes_ : ndarray of matplotlib Axes
        Image mode: shape (n_queries, 1 + 2k), the query then the helpful then the harmful
        images. Bar mode: shape (n_queries,), one bar chart per query.
    ax_ : matplotlib Axes
        The Axes whose area holds the display (the given ``ax``, turned off), as
        ``bounding_ax_`` in scikit-learn's ``PartialDependenceDisplay``.
    figure_ : matplotlib Figure
        The figure of ``ax_``.

    See Also
    --------
    sklearn_influence.InfluenceFunction.most_influential : The values shown.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_influence import InfluenceFunction, MostInfluentialDisplay
    >>> from sklearn_influence.datasets import load_digits_split
    >>> data = load_digits_split(n_train=300, n_test=10, random_state=0)
    >>> influence = InfluenceFunction(LogisticRegression(max_iter=1000), random_state=0)
    >>> influence = influence.fit(data.X_train, data.y_train)
    >>> display = MostInfluentialDisplay.from_estimator(
    ...     influence, data.X_test[:2], data.y_test[:2], k=3, image_shape=(8, 8)
    ... )
    >>> display.axes_.shape
    (2, 7)
    """

    def __init__(
        self,
        helpful_indices,
        helpful_values,
        harmful_indices,
        harmful_values,
        *,
        query_images=None,
        train_images=None,
        query_labels=None,
        train_labels=None,
        train_names=None,
        query_names=None,
    ):
        self.helpful_indices = helpful_indices
        self.helpful_values = helpful_values
        self.harmful_indices = harmful_indices
        self.harmful_values = harmful_values
        self.query_images = query_images
        self.train_images = train_images
        self.query_labels = query_labels
        self.train_labels = train_labels
        self.train_names = train_names
        self.query_names = query_names

    # -- names and titles ------------------------------------------------------------------
    def _train_title(self, index):
        name = index if self.train_names is None else self.train_names[index]
        label = "" if self.train_labels is None else f" ({self.train_labels[index]})"
        return f"#{name}{label}"

    def _query_title(self, row):
        name = row if self.query_names is None else self.query_names[row]
        label = "" if self.query_labels is None else f", label {self.query_labels[row]}"
        return f"query {name}{label}"

    def _entries(self, row):
        """(kind, training index, influence) of one query's 2k examples, helpful first."""
        helpful = zip(self.helpful_indices[row], self.helpful_values[row], strict=True)
        harmful = zip(self.harmful_indices[row], self.harmful_values[row], strict=True)
        return [("helpful", int(i), float(v)) for i, v in helpful] + [
            ("harmful", int(i), float(v)) for i, v in harmful
        ]

    # -- drawing ---------------------------------------------------------------------------
    def plot(self, ax=None, *, cmap="gray_r", colors=("tab:green", "tab:red")):
        """Draw the display.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            The area to draw in; it is divided into one panel per image (or per query). A
            new figure sized for the panels is created when None.
        cmap : str or matplotlib Colormap, default="gray_r"
            Colormap of the images.
        colors : tuple of two colors, default=("tab:green", "tab:red")
            Frames (image mode) or bars of the helpful and of the harmful examples.

        Returns
        -------
        display : MostInfluentialDisplay
            This object, with ``axes_``, ``ax_`` and ``figure_`` set.
        """
        plt = _check_matplotlib(f"{type(self).__name__}.plot")
        n_queries, k = np.shape(self.helpful_indices)
        images = self.query_images is not None and self.train_images is not None
        shape = (n_queries, 1 + 2 * k) if images else (n_queries, 1)
        if ax is None:
            size = (
                (1.3 * shape[1], 1.5 * n_queries) if images else (7, 0.4 * (2 * k + 2) * n_queries)
            )
            _, ax = plt.subplots(figsize=size)
        ax.set_axis_off()
        grid = ax.get_subplotspec().subgridspec(*shape)
        figure = ax.figure
        axes = np.array([[figure.add_subplot(grid[r, c]) for c in range(shape[1])]
                         for r in range(shape[0])])  # fmt: skip
        for row in range(n_queries):
            if images:
                self._plot_images(axes[row], row, cmap, colors)
            else:
                self._plot_bars(axes[row, 0], row, colors)
        self.axes_ = axes if images else axes[:, 0]
        self.ax_, self.figure_ = ax, figure
        return self

    def _plot_images(self, axes, row, cmap, colors):
        for panel in axes:
            panel.set_xticks([])
            panel.set_yticks([])
        axes[0].imshow(self.query_images[row], cmap=cmap)
        axes[0].set_title(self._query_title(row).replace(", ", "\n"), fontsize=8)
        for panel, (kind, index, value) in zip(axes[1:], self._entries(row), strict=True):
            panel.imshow(self.train_images[index], cmap=cmap)
            panel.set_title(f"{self._train_title(index)}\n{value:+.2e}", fontsize=8)
            color = colors[0] if kind == "helpful" else colors[1]
            for spine in panel.spines.values():
                spine.set(color=color, linewidth=2)
        axes[1].set_ylabel("helpful", fontsize=8)
        axes[1 + len(axes) // 2].set_ylabel("harmful", fontsize=8)

    def _plot_bars(self, ax, row, colors):
        entries = self._entries(row)
        positions = np.arange(len(entries))[::-1]
        ax.barh(
            positions,
            [value for _, _, value in entries],
            color=[colors[0] if kind == "helpful" else colors[1] for kind, _, _ in entries],
        )
        ax.set_yticks(positions, [self._train_title(index) for _, index, _ in entries])
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set_title(self._query_title(row), fontsize=9)
        ax.set_xlabel("influence (> 0: helps the query, < 0: harms it)", fontsize=8)
        ax.tick_params(labelsize=8)

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_predictions(
        cls,
        influence,
        *,
        k=3,
        query_images=None,
        train_images=None,
        query_labels=None,
        train_labels=None,
        train_names=None,
        query_names=None,
        image_shape=None,
        ax=None,
        cmap="gray_r",
    ):
        """Plot the most influential training examples of an influence matrix.

        Parameters
        ----------
        influence : array-like of shape (n_queries, n_train)
            Influence of each training example (columns) on each query (rows), as
            :meth:`~sklearn_influence.InfluenceFunction.transform` returns it.
        k : int, default=3
            Helpful and harmful examples shown per query, at most n_train.
        query_images, train_images : array-like, default=None
            Images of the queries and of the training examples: arrays of shape
            (n, height, width) or (n, 1, height, width), or rows of pixels with
            ``image_shape``. Without both, each query gets a bar chart.
        query_labels, train_labels, train_names, query_names : array-like, default=None
            See the class parameters.
        image_shape : tuple of int, default=None
            Shape of one image when the images are given as flat rows, e.g. (8, 8).
        ax : matplotlib Axes, default=None
            See :meth:`plot`.
        cmap : str or matplotlib Colormap, default="gray_r"
            Colormap of the images.

        Returns
        -------
        display : MostInfluentialDisplay
        """
        _check_matplotlib(f"{cls.__name__}.from_predictions")
        influence = np.asarray(influence, dtype=float)
        if influence.ndim != 2 or not influence.size:
            raise ValueError(
                "influence must be a non-empty 2-d matrix (n_queries, n_train), got shape "
                f"{influence.shape}; pass the output of InfluenceFunction.transform."
            )
        if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= influence.shape[1]:
            raise ValueError(
                f"k must be an integer between 1 and the number of training examples "
                f"({influence.shape[1]}), got {k!r}."
            )
        display = cls(
            *_top_k(influence, k),
            query_images=_as_images(query_images, image_shape, "query images"),
            train_images=_as_images(train_images, image_shape, "training images"),
            query_labels=query_labels,
            train_labels=train_labels,
            train_names=train_names,
            query_names=query_names,
        )
        return display.plot(ax=ax, cmap=cmap)

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y_test=None,
        *,
        k=3,
        image_shape=None,
        train_names=None,
        query_names=None,
        ax=None,
        cmap="gray_r",
    ):
        """Plot the most influential training examples of a fitted influence estimator.

        The values are ``estimator.most_influential(X, y_test, k=k)`` (streamed: the
        influence matrix is never held). Images are the rows of X and of the estimator's
        training inputs ``X_train_`` when those are images ((n, height, width) or
        (n, 1, height, width) arrays, or flat rows with ``image_shape``).

        Parameters
        ----------
        estimator : InfluenceFunction
            A fitted :class:`~sklearn_influence.InfluenceFunction`.
        X : array-like of shape (n_queries, ...)
            The queries.
        y_test : array-like of shape (n_queries,), default=None
            Their labels; see :meth:`~sklearn_influence.InfluenceFunction.transform` for
            what is measured without them.
        k : int, default=3
            Helpful and harmful examples shown per query.
        image_shape : tuple of int, default=None
            Shape of one image when the inputs are flat rows of pixels, e.g. (8, 8).
        train_names, query_names : array-like, default=None
            See the class parameters.
        ax : matplotlib Axes, default=None
            See :meth:`plot`.
        cmap : str or matplotlib Colormap, default="gray_r"
            Colormap of the images.

        Returns
        -------
        display : MostInfluentialDisplay
        """
        _check_matplotlib(f"{cls.__name__}.from_estimator")
        if not hasattr(estimator, "most_influential"):
            raise TypeError(
                f"from_estimator needs a fitted InfluenceFunction, got "
                f"{type(estimator).__name__}; use from_predictions with an influence matrix "
                "instead."
            )
        check_is_fitted(estimator)
        top = estimator.most_influential(X, y_test, k=k)
        train_labels = np.asarray(estimator.y_train_)
        display = cls(
            top.helpful_indices,
            top.helpful_values,
            top.harmful_indices,
            top.harmful_values,
            query_images=_as_images(X, image_shape, "queries X"),
            train_images=_as_images(estimator.X_train_, image_shape, "training inputs"),
            query_labels=y_test,
            train_labels=train_labels if train_labels.ndim == 1 else None,
            train_names=train_names,
            query_names=query_names,
        )
        return display.plot(ax=ax, cmap=cmap)
