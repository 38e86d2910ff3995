"""MostInfluentialDisplay: scikit-learn Display conventions, the right examples shown."""

import numpy as np
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge

from sklearn_influence import InfluenceFunction, MostInfluentialDisplay
from sklearn_influence.datasets import load_digits_split

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    data = load_digits_split(n_train=300, n_test=20, random_state=0)
    model = LogisticRegression(solver="newton-cholesky", tol=1e-10)
    influence = InfluenceFunction(model, damping=1e-3, random_state=0)
    return data, influence.fit(data.X_train, data.y_train)


def _axes():
    return Figure(figsize=(8, 4)).subplots()


def test_from_estimator_shows_the_most_influential_images(digits):
    data, influence = digits
    ax = _axes()
    display = MostInfluentialDisplay.from_estimator(
        influence, data.X_test[:2], data.y_test[:2], k=3, image_shape=(8, 8), ax=ax
    )
    top = influence.most_influential(data.X_test[:2], data.y_test[:2], k=3)
    np.testing.assert_array_equal(display.helpful_indices, top.helpful_indices)
    np.testing.assert_array_equal(display.harmful_values, top.harmful_values)
    assert display.axes_.shape == (2, 7)
    assert display.ax_ is ax and display.figure_ is ax.figure and not ax.axison
    # the panels hold the training images of those positions, titled with them
    for column, index in enumerate(top.helpful_indices[1], start=1):
        panel = display.axes_[1, column]
        np.testing.assert_array_equal(panel.images[0].get_array(), data.images_train[index])
        assert panel.get_title().startswith(f"#{index} ({data.y_train[index]})")
    harmful = top.harmful_indices[0, 0]
    assert display.axes_[0, 4].get_title().startswith(f"#{harmful} ")
    np.testing.assert_array_equal(display.axes_[0, 0].images[0].get_array(), data.images_test[0])


def test_from_predictions_matches_from_estimator_and_replots(digits):
    data, influence = digits
    matrix = influence.transform(data.X_test[:3], data.y_test[:3])
    from_matrix = MostInfluentialDisplay.from_predictions(
        matrix,
        k=2,
        query_images=data.images_test[:3],
        train_images=data.images_train,
        train_labels=data.y_train,
        ax=_axes(),
    )
    from_model = MostInfluentialDisplay.from_estimator(
        influence, data.X_test[:3], data.y_test[:3], k=2, image_shape=(8, 8), ax=_axes()
    )
    np.testing.assert_array_equal(from_matrix.helpful_indices, from_model.helpful_indices)
    np.testing.assert_array_equal(from_matrix.harmful_indices, from_model.harmful_indices)
    np.testing.assert_allclose(from_matrix.helpful_values, from_model.helpful_values, rtol=1e-10)
    # plot again on other axes without recomputing
    other = _axes()
    assert from_matrix.plot(ax=other).ax_ is other and from_matrix.axes_.shape == (3, 5)


def test_tabular_data_gives_one_bar_chart_per_query_with_names():
    X, y = load_diabetes(return_X_y=True)
    influence = InfluenceFunction(Ridge(), random_state=0).fit(X[:100], y[:100])
    names = np.arange(100) + 1000  # e.g. an id column of the user's file
    display = MostInfluentialDisplay.from_estimator(
        influence, X[100:102], y[100:102], k=4, train_names=names, ax=_axes()
    )
    assert display.axes_.shape == (2,)
    bars = display.axes_[0].patches
    assert len(bars) == 8
    top = influence.most_influential(X[100:102], y[100:102], k=4)
    labels = [tick.get_text() for tick in display.axes_[0].get_yticklabels()]
    assert labels[0].startswith(f"#{names[top.helpful_indices[0, 0]]} ")  # the top bar
    heights = sorted(bar.get_width() for bar in bars)
    np.testing.assert_allclose(heights[-1], top.helpful_values[0, 0])
    np.testing.assert_allclose(heights[0], top.harmful_values[0, 0])


def test_a_new_figure_when_no_axes_are_given(digits):
    import matplotlib.pyplot as plt

    data, influence = digits
    display = MostInfluentialDisplay.from_estimator(influence, data.X_test[:1], k=2)
    try:
        assert display.axes_.shape == (1,) and display.figure_ is display.ax_.figure
    finally:
        plt.close(display.figure_)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be an integer between 1 and"),
        ({"k": 11}, "k must be an integer between 1 and"),
        ({"image_shape": (5, 5), "query_images": np.zeros((2, 64))}, "image_shape"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MostInfluentialDisplay.from_predictions(np.ones((2, 10)), ax=_axes(), **kwargs)


def test_from_estimator_needs_an_influence_estimator():
    with pytest.raises(TypeError, match="from_predictions"):
        MostInfluentialDisplay.from_estimator(Ridge(), np.ones((2, 3)))
