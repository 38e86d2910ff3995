"""
=====================================================
Most helpful and most harmful training images
=====================================================

An :class:`~sklearn_influence.InfluenceFunction` around a logistic regression on
scikit-learn's 8×8 digits. For one test image we show the training images whose removal is
predicted to raise its loss the most (the most *helpful*, positive influence) and to lower it
the most (the most *harmful*, negative influence), with
:class:`~sklearn_influence.MostInfluentialDisplay`.

``influence[q, m] = (1/N) ∇f_qᵀ (C + λI)⁻¹ ∇L_m`` is the predicted change of the loss of test
image ``q`` when training image ``m`` is removed, where C is the curvature (for a linear model
the Hessian of the training objective) and λ the damping.
"""

# %%
# Fit the model and the influence function
# ----------------------------------------
# Newton-Cholesky converges to round-off in a few iterations: influence functions assume the
# model sits at the optimum of its training objective.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression

from sklearn_influence import InfluenceFunction, MostInfluentialDisplay
from sklearn_influence.datasets import load_digits_split

data = load_digits_split(n_train=1000, n_test=200, random_state=0)
model = LogisticRegression(solver="newton-cholesky", tol=1e-10)
influence = InfluenceFunction(model, damping=1e-4, random_state=0)
influence.fit(data.X_train, data.y_train)

# %%
# The influence matrix
# --------------------
# Rows are test images (queries), columns are training images.
matrix = influence.transform(data.X_test, data.y_test)
print(matrix.shape)

# %%
# We explain the test image with the largest loss among the correctly classified ones: the
# hardest image the model still gets right.
proba = influence.estimator_.predict_proba(data.X_test)
loss = -np.log(proba[np.arange(len(data.y_test)), data.y_test])
correct = influence.estimator_.predict(data.X_test) == data.y_test
query = int(np.flatnonzero(correct)[np.argmax(loss[correct])])
top = influence.most_influential(data.X_test[[query]], data.y_test[[query]], k=5)

# %%
# Plot the test image, its most helpful and its most harmful training images
# ---------------------------------------------------------------------------
# :class:`~sklearn_influence.MostInfluentialDisplay` draws the query, then its most helpful
# (green frames) and most harmful (red frames) training images, each titled with its position
# in the training set, its label and its influence. The rows of X are 8×8 images:
# ``image_shape`` says so.
display = MostInfluentialDisplay.from_estimator(
    influence, data.X_test[[query]], data.y_test[[query]], k=5, image_shape=(8, 8)
)
display.figure_.set_size_inches(9, 2.2)
plt.show()

# %%
# The same display from an influence matrix already computed, for three more test images:
# :meth:`~sklearn_influence.MostInfluentialDisplay.from_predictions` takes the rows of
# ``matrix`` and the images, and draws on the axes it is given.
others = [0, 1, 2]
fig, ax = plt.subplots(figsize=(9, 4.5))
MostInfluentialDisplay.from_predictions(
    matrix[others],
    k=3,
    query_images=data.images_test[others],
    train_images=data.images_train,
    query_labels=data.y_test[others],
    train_labels=data.y_train,
    ax=ax,
)
plt.show()

# %%
# The helpful images are mostly of the same digit, drawn similarly; the harmful ones are
# often other digits that look like it, or same-digit images that pull the model elsewhere.
# Removing a helpful image is predicted to raise this test image's loss by the value shown.
#
# Check against actual retraining
# -------------------------------
# :meth:`~sklearn_influence.InfluenceFunction.score` removes a few training images one at a
# time, refits the model exactly, and returns the Pearson correlation between predicted and
# actual changes of the mean test loss.
influence.set_params(random_state=0, n_score_points=30)
print(
    f"Pearson correlation with leave-one-out retraining: "
    f"{influence.score(data.X_test, data.y_test):.3f}"
)
