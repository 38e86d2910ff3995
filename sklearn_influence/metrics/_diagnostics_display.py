"""RegressionDiagnosticsDisplay: Cook's distance index plot and the leverage plot."""

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.utils.validation import check_is_fitted

from .._adapters import unwrap
from ._display import _check_matplotlib

KINDS = ("both", "cooks", "leverage")


class RegressionDiagnosticsDisplay:
    """Which rows move the fit: Cook's distance per row and leverage against residual.

    Two panels in the style of R's ``plot.lm``: the **index plot of Cook's distance**
    (one stem per training row, the rule-of-thumb line 4/n, the largest rows labelled) and
    **leverage against the internally studentized residual** with contours of equal Cook's
    distance Dᵢ = rᵢ² hᵢ / (p (1 − hᵢ)), i.e. r = ±√(D p (1 − h)/h) (least squares exactly;
    for GLMs the one-step Cook's distance). Build it with :meth:`from_estimator` (a fitted
    model and its training data) or :meth:`from_diagnostics` (a fitted
    :class:`~sklearn_influence.RegressionDiagnostics`); :meth:`plot` draws the same values
    again on other axes without recomputing them.

    Parameters
    ----------
    leverage : ndarray of shape (n_samples,)
        Hat-matrix diagonal hᵢ.
    studentized_residuals : ndarray of shape (n_samples,)
        Internally studentized residuals rᵢ.
    cooks_distance : ndarray of shape (n_samples,)
        Cook's distances Dᵢ.
    n_parameters : float
        p in the contours (the number of parameters, or the effective number Σ hᵢ).
    index : array-like of shape (n_samples,), default=None
        Labels of the rows (for example a DataFrame's index); default 0 … n − 1.
    estimator_name : str, default=None
        Name of the model, used in the titles.

    Attributes
    ----------
    cooks_stems_ : matplotlib LineCollection or None
        The stems of the Cook's distance panel.
    leverage_points_ : matplotlib PathCollection or None
        The points of the leverage panel.
    contours_ : list of matplotlib Line2D
        The Cook's distance contours.
    ax_ : matplotlib Axes or ndarray of two Axes
        The axes drawn on (two for ``kind="both"``).
    figure_ : matplotlib Figure

    See Also
    --------
    sklearn_influence.RegressionDiagnostics : Computes the values shown.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sklearn.linear_model import LinearRegression
    >>> from sklearn_influence import RegressionDiagnosticsDisplay
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(40, 2))
    >>> y = X @ [1.0, 2.0] + rng.normal(size=40)
    >>> model = LinearRegression().fit(X, y)
    >>> display = RegressionDiagnosticsDisplay.from_estimator(model, X, y)
    >>> display.ax_.shape
    (2,)
    >>> len(display.contours_)
    4
    """

    def __init__(
        self,
        *,
        leverage,
        studentized_residuals,
        cooks_distance,
        n_parameters,
        index=None,
        estimator_name=None,
    ):
        self.leverage = leverage
        self.studentized_residuals = studentized_residuals
        self.cooks_distance = cooks_distance
        self.n_parameters = n_parameters
        self.index = index
        self.estimator_name = estimator_name

    def plot(self, ax=None, *, kind="both", n_labels=3, contour_levels=(0.5, 1.0), **kwargs):
        """Draw the panels.

        Parameters
        ----------
        ax : matplotlib Axes or sequence of two Axes, default=None
            Where to draw (two axes for ``kind="both"``); a new figure when None.
        kind : {"both", "cooks", "leverage"}, default="both"
            Both panels, only the Cook's distance index plot, or only the leverage plot.
        n_labels : int, default=3
            How many rows of largest Cook's distance are labelled.
        contour_levels : sequence of float, default=(0.5, 1.0)
            Cook's distances of the contours of the leverage panel.
        **kwargs : dict
            Keyword arguments for matplotlib's ``scatter`` of the leverage panel.

        Returns
        -------
        display : RegressionDiagnosticsDisplay
            This object, with ``ax_`` and ``figure_`` set.
        """
        plt = _check_matplotlib(f"{type(self).__name__}.plot")
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}; pick one of them.")
        axes = self._axes(plt, ax, kind)
        top = np.argsort(np.asarray(self.cooks_distance))[::-1][:n_labels]
        labels = np.arange(len(self.leverage)) if self.index is None else np.asarray(self.index)
        self.cooks_stems_ = self.leverage_points_ = None
        self.contours_ = []
        if kind in ("both", "cooks"):
            self._plot_cooks(axes[0], top, labels)
        if kind in ("both", "leverage"):
            self._plot_leverage(axes[-1], top, labels, contour_levels, kwargs)
        self.ax_ = np.asarray(axes, dtype=object) if kind == "both" else axes[0]
        self.figure_ = axes[0].figure
        return self

    @staticmethod
    def _axes(plt, ax, kind):
        wanted = 2 if kind == "both" else 1
        if ax is None:
            _, created = plt.subplots(1, wanted, figsize=(5 * wanted, 4), squeeze=False)
            return list(created[0])
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != wanted:
            raise ValueError(
                f"kind={kind!r} draws {wanted} panel(s) but {len(axes)} axes were given; pass "
                f"{wanted} axes or ax=None."
            )
        return axes

    def _title(self, text):
        return text if self.estimator_name is None else f"{text}: {self.estimator_name}"

    def _plot_cooks(self, ax, top, labels):
        cooks = np.asarray(self.cooks_distance)
        positions = np.arange(len(cooks))
        self.cooks_stems_ = ax.vlines(positions, 0, cooks, color="C0", linewidth=1)
        ax.axhline(4 / len(cooks), color="k", linestyle="--", linewidth=0.8, label="4/n")
        for row in top:
            ax.annotate(str(labels[row]), (positions[row], cooks[row]), fontsize=8)
        ax.set(xlabel="Row", ylabel="Cook's distance", title=self._title("Cook's distance"))
        ax.legend(loc="upper right")

    def _plot_leverage(self, ax, top, labels, levels, kwargs):
        leverage = np.asarray(self.leverage)
        residuals = np.asarray(self.studentized_residuals)
        self.leverage_points_ = ax.scatter(leverage, residuals, **{"s": 12, **kwargs})
        for row in top:
            ax.annotate(str(labels[row]), (leverage[row], residuals[row]), fontsize=8)
        grid = np.linspace(max(leverage.min(), 1e-3) * 0.9, min(leverage.max() * 1.1, 0.999), 200)
        for level, style in zip(levels, ("--", ":", "-."), strict=False):
            bound = np.sqrt(level * self.n_parameters * (1 - grid) / grid)
            for sign in (1, -1):
                (line,) = ax.plot(grid, sign * bound, color="C3", linestyle=style, linewidth=0.8)
                self.contours_.append(line)
            self.contours_[-1].set_label(f"Cook's distance {level:g}")
        ax.axhline(0, color="k", linewidth=0.5)
        bound = max(np.abs(residuals).max() * 1.2, 3.0)
        ax.set(
            xlabel="Leverage",
            ylabel="Studentized residual",
            ylim=(-bound, bound),
            title=self._title("Residuals vs leverage"),
        )
        ax.legend(loc="lower left", fontsize=8)

    @classmethod
    def from_diagnostics(cls, diagnostics, *, index=None, ax=None, kind="both", **kwargs):
        """Plot the values of a fitted :class:`~sklearn_influence.RegressionDiagnostics`.

        Parameters
        ----------
        diagnostics : RegressionDiagnostics
            Fitted.
        index : array-like of shape (n_samples,), default=None
            Row labels.
        ax : matplotlib Axes or sequence of two Axes, default=None
        kind : {"both", "cooks", "leverage"}, default="both"
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : RegressionDiagnosticsDisplay
        """
        _check_matplotlib(f"{cls.__name__}.from_diagnostics")
        check_is_fitted(diagnostics, "leverage_")
        display = cls(
            leverage=diagnostics.leverage_,
            studentized_residuals=diagnostics.studentized_residuals_,
            cooks_distance=diagnostics.cooks_distance_,
            n_parameters=diagnostics.effective_parameters_,
            index=index,
            estimator_name=type(unwrap(diagnostics.estimator_)[1]).__name__,
        )
        return display.plot(ax=ax, kind=kind, **kwargs)

    @classmethod
    def from_estimator(
        cls, estimator, X, y, *, sample_weight=None, method="exact", ax=None, kind="both",
        **kwargs,
    ):  # fmt: skip
        """Compute the diagnostics of a fitted model on its training data, and plot them.

        Parameters
        ----------
        estimator : estimator object
            A fitted single-output linear model or GLM (or a pipeline ending in one), as
            accepted by :class:`~sklearn_influence.RegressionDiagnostics`; it is not refit.
        X : array-like of shape (n_samples, n_features)
            The data the model was fitted on; a DataFrame's index labels the rows.
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None
            The weights the model was fitted with.
        method : {"exact", "one_step"}, default="exact"
            Refits behind Cook's distance (see :class:`RegressionDiagnostics`).
        ax : matplotlib Axes or sequence of two Axes, default=None
        kind : {"both", "cooks", "leverage"}, default="both"
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : RegressionDiagnosticsDisplay
        """
        _check_matplotlib(f"{cls.__name__}.from_estimator")
        from .._regression_diagnostics import RegressionDiagnostics

        check_is_fitted(estimator)
        diagnostics = RegressionDiagnostics(FrozenEstimator(estimator), method=method)
        diagnostics.fit(X, y, sample_weight=sample_weight)
        index = getattr(X, "index", None)
        return cls.from_diagnostics(diagnostics, index=index, ax=ax, kind=kind, **kwargs)
