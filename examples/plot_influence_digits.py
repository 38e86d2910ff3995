"""
=====================================================
Most helpful and most harmful training images
=====================================================

An :class:`~sklearn_influence.InfluenceFunction` around a logistic regression on
scikit-learn's 8×8 digits. For one test image we show the training images whose removal is
predicted to raise its loss the most (the most *helpful*, positive influence) and to lower it
the most (the most *harmful*, negative influence).

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

from sklearn_influence import InfluenceFunction
from sklearn_influence.datasets import load_digits_split

data = load_digits_split(n_train=1000, n_test=200, random_state=0)
model = LogisticRegression(solver="newton-cholesky", tol=1e-10)
influence = InfluenceFunction(model, damping=1e-4).fit(data.X_train, data.y_train)

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
fig, axes = plt.subplots(2, 6, figsize=(9, 4))
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].imshow(data.images_test[query], cmap="gray_r")
axes[0, 0].set_title(f"test image\nlabel {data.y_test[query]}", fontsize=9)
axes[1, 0].set_axis_off()
rows = [
    ("helpful", top.helpful_indices[0], top.helpful_values[0]),
    ("harmful", top.harmful_indices[0], top.harmful_values[0]),
]
for row, (kind, indices, values) in enumerate(rows):
    axes[row, 1].set_ylabel(f"most {kind}")
    for column, (index, value) in enumerate(zip(indices, values, strict=True), start=1):
        axes[row, column].imshow(data.images_train[index], cmap="gray_r")
        axes[row, column].set_title(f"label {data.y_train[index]}\n{value:+.1e}", fontsize=9)
fig.tight_layout()
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
