"""Scale-out through joblib: results do not depend on n_jobs or on the backend (Dask)."""

import numpy as np
import pytest
import torch
from _nets import TanhMLP
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from sklearn_influence import PBRF, InfluenceFunction


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16, y[:400], X[400:520] / 16, y[400:520]


def test_blocks_and_refits_identical_across_n_jobs(digits, one_torch_thread):
    """Bitwise equal when the caller runs as many threads as joblib gives each worker (one
    here): a different thread count changes BLAS's summation order, hence the round-off."""
    X, y, X_test, y_test = digits
    model = LogisticRegression(C=0.5, max_iter=2000)
    serial = InfluenceFunction(model, batch_size=32, n_score_points=6, random_state=0).fit(X, y)
    parallel = InfluenceFunction(
        model, batch_size=32, n_score_points=6, n_jobs=2, random_state=0
    ).fit(X, y)
    np.testing.assert_array_equal(
        serial.transform(X_test, y_test), parallel.transform(X_test, y_test)
    )
    assert serial.score(X_test, y_test) == parallel.score(X_test, y_test)


@pytest.fixture(scope="module")
def dask_client():
    """A real Dask cluster: two worker processes on the loopback interface."""
    distributed = pytest.importorskip("dask.distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        yield client


def _keys_run_on(client, run):
    """Run ``run()`` with joblib's Dask backend; return its result and the task keys."""
    from dask.distributed import get_task_stream

    with get_task_stream(client) as stream, parallel_config(backend="dask"):
        result = run()
    return result, [str(task["key"]) for task in stream.data]


def test_dask_local_cluster_gives_identical_influence(digits, dask_client):
    X, y, X_test, y_test = digits
    model = LogisticRegression(C=0.5, max_iter=2000)
    influence = InfluenceFunction(model, batch_size=32).fit(X, y)
    expected = influence.transform(X_test, y_test)
    on_cluster, keys = _keys_run_on(
        dask_client, lambda: influence.set_params(n_jobs=-1).transform(X_test, y_test)
    )
    # the blocks really ran as tasks on the cluster's workers: queries and training points
    assert any("_precondition_block" in key for key in keys)
    assert any("_score_block" in key for key in keys)
    # round-off only: a worker process may run a BLAS product with another thread count,
    # and some product shapes round differently then (bitwise with loky and threading:
    # tests/test_streaming.py)
    np.testing.assert_allclose(on_cluster, expected, rtol=1e-10, atol=1e-15)


@pytest.mark.filterwarnings("ignore:PBRF.*did not reach the tolerance:UserWarning")
def test_dask_local_cluster_gives_identical_pbrf_responses(digits, dask_client):
    from skorch import NeuralNetClassifier

    X, y, X_test, y_test = digits
    net = NeuralNetClassifier(
        TanhMLP,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD,
        lr=0.1,
        optimizer__weight_decay=1e-3,
        max_epochs=10,
        batch_size=64,
        train_split=None,
        verbose=0,
    )
    settings = {"damping": 1e-2, "train_indices": [0, 5, 17, 60, 99], "n_iter": 150}
    serial = PBRF(net, random_state=0, **settings).fit(X, y)
    spread, keys = _keys_run_on(
        dask_client, lambda: PBRF(net, n_jobs=-1, random_state=0, **settings).fit(X, y)
    )
    # the chunks of removed points (one batched optimisation each) ran on the workers
    assert any("_optimizer_chunk" in key for key in keys)
    np.testing.assert_allclose(spread.parameters_, serial.parameters_, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(spread.n_iter_, serial.n_iter_)
    np.testing.assert_allclose(
        spread.transform(X_test, y_test), serial.transform(X_test, y_test), rtol=0, atol=1e-12
    )


def _tanh_net(max_epochs=5):
    from skorch import NeuralNetClassifier

    return NeuralNetClassifier(
        TanhMLP,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD,
        lr=0.1,
        optimizer__weight_decay=1e-3,
        max_epochs=max_epochs,
        batch_size=64,
        train_split=None,
        verbose=0,
    )


def _factors(influence):
    layers = influence.engine_.curvature.layers
    return [(f.A, f.S, f.eigenvalues) for f in layers]


@pytest.mark.parametrize("curvature", ["kfac", "ekfac"])
def test_factor_fitting_identical_across_n_jobs(digits, one_torch_thread, curvature):
    """The K-FAC factors and EK-FAC eigenvalues are sums over fixed training batches taken in
    batch order, so spreading the batches over workers changes nothing (one BLAS thread)."""
    X, y, X_test, y_test = digits
    settings = {"curvature": curvature, "batch_size": 50, "random_state": 0}
    serial = InfluenceFunction(_tanh_net(), **settings).fit(X, y)
    spread = InfluenceFunction(_tanh_net(), n_jobs=2, **settings).fit(X, y)
    for left, right in zip(_factors(serial), _factors(spread), strict=True):
        for a, b in zip(left, right, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(
        serial.transform(X_test, y_test), spread.transform(X_test, y_test)
    )


def test_dask_local_cluster_fits_the_factors(digits, dask_client):
    X, y, X_test, y_test = digits
    settings = {"curvature": "ekfac", "batch_size": 50, "random_state": 0}
    serial = InfluenceFunction(_tanh_net(), **settings).fit(X, y)
    spread, keys = _keys_run_on(
        dask_client, lambda: InfluenceFunction(_tanh_net(), n_jobs=-1, **settings).fit(X, y)
    )
    # the factor batches and the eigenvalue refit batches ran as tasks on the workers
    assert any("_factor_sums" in key for key in keys)
    assert any("_eigenvalue_sums" in key for key in keys)
    for left, right in zip(_factors(serial), _factors(spread), strict=True):
        for a, b in zip(left, right, strict=True):
            # round-off only (a worker process may use another BLAS thread count)
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        spread.transform(X_test, y_test), serial.transform(X_test, y_test), rtol=1e-9, atol=1e-15
    )
