"""
==========================================
Influence of training points in a pipeline
==========================================

:class:`~sklearn_influence.InfluenceFunction` accepts a :class:`~sklearn.pipeline.Pipeline`
whose last step is a supported model: the earlier steps only transform ``X``, and the
influence lives in the last step's parameters. The influence estimator itself is a
transformer, so ``set_output(transform="pandas")`` returns a DataFrame with one column per
training point.
"""

# %%
# A scaled logistic regression on the breast-cancer data
# ------------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import sklearn
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_influence import InfluenceFunction, MostInfluentialDisplay

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=100, random_state=0)
model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10))

influence = InfluenceFunction(model, damping=1e-4, random_state=0)
influence.set_output(transform="pandas")
influence.fit(X_train, y_train)

# %%
# The influence matrix as a DataFrame
# -----------------------------------
# Rows are the test points, columns the training points (``influencefunction0``, ... in the
# order of ``X_train``).
matrix = influence.transform(X_test, y_test)
print(matrix.shape)
print(matrix.iloc[:3, :5])

# %%
# Which training points matter most for the test set?
# ---------------------------------------------------
# The mean influence over the test points is the predicted rise of the mean test loss when a
# training point is removed: positive columns help the model on the test set, negative ones
# hurt it.
mean_influence = matrix.mean(axis=0)
order = np.argsort(mean_influence.to_numpy(), kind="stable")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.bar(range(len(order)), mean_influence.to_numpy()[order], width=1.0)
ax.axhline(0, color="black", linewidth=0.8)
ax.set_xlabel("training points, sorted")
ax.set_ylabel("mean influence on the test loss")
fig.tight_layout()
plt.show()
print("most harmful training points:", list(mean_influence.index[order[:5]]))
print("most helpful training points:", list(mean_influence.index[order[::-1][:5]]))

# %%
# Agreement with actual retraining
# --------------------------------
# ``score`` removes a few training points, refits the whole pipeline without each of them and
# correlates the actual and predicted changes of the test loss. (``score`` is called with the
# default NumPy output: with ``set_output(transform="pandas")`` it currently fails.)
influence.set_output(transform="default")
print(f"agreement with leave-one-out retraining: {influence.score(X_test, y_test):.3f}")

# %%
# The influence function as a pipeline step, with the test labels routed
# ----------------------------------------------------------------------
# Inside a pipeline, ``transform`` receives the query labels through scikit-learn's metadata
# routing: the step requests ``y_test`` (never ``y``). Without them it would measure the loss
# at the predicted class instead of the test loss.
with sklearn.config_context(enable_metadata_routing=True):
    step = InfluenceFunction(LogisticRegression(C=1.0, tol=1e-10), damping=1e-4, random_state=0)
    pipeline = make_pipeline(StandardScaler(), step.set_transform_request(y_test=True))
    pipeline.fit(X_train, y_train)
    routed = pipeline.transform(X_test, y_test=y_test)
print("same matrix as above:", np.allclose(routed, matrix.to_numpy()))

# %%
# For tabular data, :class:`~sklearn_influence.MostInfluentialDisplay` draws each query's most
# helpful and most harmful training rows as bars.
MostInfluentialDisplay.from_predictions(
    routed[:2], k=4, query_labels=y_test[:2], train_labels=y_train
)
plt.show()
