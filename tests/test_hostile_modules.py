"""Hostile skorch modules and concurrent fits: each refusal names the layer and the fix, and
each fit in a thread equals its serial fit bitwise."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from joblib import Parallel, delayed, parallel_config
from sklearn.frozen import FrozenEstimator
from sklearn.neural_network import MLPClassifier
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 3)).astype(np.float32)
LABELS = (X[:, 0] > 0).astype(np.int64)
TOKENS = RNG.integers(0, 5, size=(24, 4))


def _net(module, **settings):
    settings = {"max_epochs": 1, "batch_size": 8, **settings}
    return NeuralNetClassifier(
        module, criterion=torch.nn.CrossEntropyLoss, train_split=None, verbose=0, **settings
    )


class Embedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, X):
        return self.head(self.tokens(X).mean(1))


class NoParameters(torch.nn.Module):
    def forward(self, X):
        return X[:, :2]


class FrozenLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.layer.requires_grad_(False)

    def forward(self, X):
        return self.layer(X)


class BatchStatistics(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2, track_running_stats=False)

    def forward(self, X):
        return self.norm(self.layer(X))


class DictOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def forward(self, X):  # no 'logits' entry and two tensors: the output rule cannot choose
        outputs = self.layer(X)
        return {"scores": outputs, "hidden": outputs.detach()}


class Dropout(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(3, 8)
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, X):
        return self.head(self.drop(torch.tanh(self.hidden(X))))


# -- token ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens, match",
    [
        (TOKENS - 1, r"'tokens' has num_embeddings=5.*0\.\.4.*from -1 to 3.*not negative ids"),
        (TOKENS + 3, r"'tokens' has num_embeddings=5.*from 3 to 7.*num_embeddings >= 8"),
        (TOKENS + 0.5, r"'tokens' .*integer token ids.*float.*astype\(np.int64\)"),
    ],
    ids=["negative", "out_of_range", "float"],
)
def test_bad_token_ids_are_refused_before_training(tokens, match):
    with pytest.raises(ValueError, match=match):
        InfluenceFunction(_net(Embedder)).fit(tokens, LABELS)


def test_bad_query_token_ids_name_the_rows():
    influence = InfluenceFunction(_net(Embedder), solver="direct").fit(TOKENS, LABELS)
    queries = TOKENS[:3].copy()
    queries[1, 2] = 9
    with pytest.raises(ValueError, match=r"ids from 0 to 9 in the rows \[1\] of X"):
        influence.transform(queries)
    assert influence.transform(TOKENS[:3]).shape == (3, len(TOKENS))


# -- modules whose influence is undefined ----------------------------------------------------


@pytest.mark.parametrize("module", [NoParameters, FrozenLinear], ids=lambda m: m.__name__)
def test_module_without_trainable_parameters_is_refused(module):
    with pytest.raises(ValueError, match=r"no trainable parameters.*requires_grad=True"):
        InfluenceFunction(_net(module)).fit(X, LABELS)


def test_batch_statistics_are_refused_naming_the_layer_and_the_fix():
    match = r"'norm' \(BatchNorm1d\) has track_running_stats=False.*track_running_stats=True"
    with pytest.raises(ValueError, match=match):
        InfluenceFunction(_net(BatchStatistics)).fit(X, LABELS)


def test_batch_statistics_are_refused_in_a_frozen_net_too():
    net = _net(BatchStatistics).initialize()
    with pytest.raises(ValueError, match="BatchNorm1d.*LayerNorm"):
        InfluenceFunction(FrozenEstimator(net)).fit(X, LABELS)


def test_ambiguous_dict_outputs_are_refused_with_the_fix():
    match = r"mapping with keys \['hidden', 'scores'\].*under 'logits'"
    with pytest.raises(TypeError, match=match):
        InfluenceFunction(_net(DictOutput)).fit(X, LABELS)


# -- concurrent fits equal serial fits ---------------------------------------------------------


def _skorch_theta(seed):
    net = _net(Dropout, max_epochs=3, iterator_train__shuffle=True)
    return InfluenceFunction(net, solver="direct", random_state=seed).fit(X, LABELS).engine_.theta


def _mlp_theta(seed):
    mlp = MLPClassifier(hidden_layer_sizes=(4,), max_iter=20)  # random_state=None: drawn
    influence = InfluenceFunction(mlp, solver="direct", random_state=seed).fit(X, LABELS)
    return influence.engine_.theta


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("fit", [_skorch_theta, _mlp_theta], ids=["skorch", "sklearn_mlp"])
def test_fits_in_threads_equal_serial_fits_bitwise(fit):
    """Different random_state in concurrent threads: each equals its serial fit (before, the
    seeds went through torch's global generator and 20 of 20 such fits differed)."""
    seeds = [0, 1, 2]
    serial = [fit(seed) for seed in seeds]
    for _ in range(3):  # the race needs repeats to show
        with ThreadPoolExecutor(len(seeds)) as pool:
            threaded = list(pool.map(fit, seeds))
        for expected, got in zip(serial, threaded, strict=True):
            assert torch.equal(expected, got)
    with parallel_config(backend="threading", n_jobs=len(seeds)):
        joblib_fits = Parallel()(delayed(fit)(seed) for seed in seeds)
    for expected, got in zip(serial, joblib_fits, strict=True):
        assert torch.equal(expected, got)


def test_fits_leave_the_global_torch_generator_untouched():
    state = torch.random.get_rng_state()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(_skorch_theta, [0, 1]))
    assert torch.equal(state, torch.random.get_rng_state())
