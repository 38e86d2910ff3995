"""Messages a newcomer meets: each names the problem and the fix."""

import numpy as np
import pytest
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction
from sklearn_influence.datasets import TanhMLP


def test_a_continuous_target_for_a_net_classifier_names_the_regressor():
    rng = np.random.RandomState(0)
    X, y = rng.rand(20, 64).astype("float32"), 5 * rng.rand(20)
    net = NeuralNetClassifier(TanhMLP, max_epochs=1, train_split=None, verbose=0)
    with pytest.raises(ValueError, match="continuous target .* use skorch's NeuralNetRegressor"):
        InfluenceFunction(net, random_state=0).fit(X, y)
