"""
=================================================
Choosing the damping by agreement with retraining
=================================================

The damping λ of ``(C + λI)⁻¹`` trades faithfulness to leave-one-out retraining for
stability. :meth:`~sklearn_influence.InfluenceFunction.score` measures that faithfulness: it
removes a few training points one at a time, actually refits the model, and correlates the
actual change of the held-out loss with the predicted one. Higher is better, so the damping
can be chosen like any hyper-parameter:

* with :class:`~sklearn.model_selection.GridSearchCV` and a ``memory`` cache, so that every
  damping value reuses the model fits, gradients, factorization and retraining targets;
* with :class:`~sklearn_influence.InfluenceFunctionCV`, which does the same in one estimator.
"""

# %%
# Data and model
# --------------
# A logistic regression on scikit-learn's 8×8 digits, solved to a tight tolerance: influence
# functions assume the model sits at the optimum of its training objective.
from tempfile import TemporaryDirectory
from time import perf_counter

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from sklearn_influence import InfluenceFunction, InfluenceFunctionCV
from sklearn_influence.datasets import load_digits_split

data = load_digits_split(n_train=400, n_test=100, random_state=0)
model = LogisticRegression(solver="newton-cholesky", tol=1e-10)
dampings = np.logspace(-6, 1, 8)

# %%
# Grid search with a cache
# ------------------------
# Each candidate fits the model on its training folds and is scored against actual
# leave-one-out refits on the held-out fold. With ``memory`` the work that does not depend on
# the damping is done once per fold, not once per damping value.
with TemporaryDirectory() as cache:
    start = perf_counter()
    search = GridSearchCV(
        InfluenceFunction(model, n_score_points=20, memory=cache, random_state=0),
        {"damping": dampings},
        cv=3,
    )
    search.fit(data.X_train, data.y_train)
    print(f"GridSearchCV over {len(dampings)} dampings: {perf_counter() - start:.1f} s")
print("best damping:", search.best_params_["damping"])

# %%
# The same with InfluenceFunctionCV
# ---------------------------------
# One factorization per fold serves every damping; ``cv_scores_`` holds the mean agreement of
# each value and ``damping_`` the chosen one.
influence = InfluenceFunctionCV(
    model, dampings=dampings, cv=3, n_score_points=20, random_state=0
).fit(data.X_train, data.y_train)
print("InfluenceFunctionCV damping_:", influence.damping_)

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(dampings, search.cv_results_["mean_test_score"], "o-", label="GridSearchCV")
ax.semilogx(dampings, influence.cv_scores_, "s--", label="InfluenceFunctionCV")
ax.set_xlabel("damping λ")
ax.set_ylabel("agreement with LOO retraining\n(Pearson, held-out folds)")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# For this converged convex model small dampings reproduce leave-one-out retraining best and
# a large damping shrinks the estimates towards a gradient dot product. For networks, compare
# with the PBRF instead (``score_target="pbrf"``): see the user guide.
