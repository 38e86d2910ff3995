"""Scale-out through joblib: results do not depend on n_jobs or on the backend (Dask)."""

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from sklearn_influence import InfluenceFunction


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16, y[:400], X[400:520] / 16, y[400:520]


def test_blocks_and_refits_identical_across_n_jobs(digits):
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


def test_dask_local_cluster_gives_identical_influence(digits):
    distributed = pytest.importorskip("dask.distributed")
    X, y, X_test, y_test = digits
    model = LogisticRegression(C=0.5, max_iter=2000)
    influence = InfluenceFunction(model, batch_size=32).fit(X, y)
    expected = influence.transform(X_test, y_test)
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
        with distributed.get_task_stream(client) as stream, parallel_config(backend="dask"):
            on_cluster = influence.set_params(n_jobs=-1).transform(X_test, y_test)
        # the blocks really ran as tasks on the cluster's workers
        assert any("influence_block" in task["key"] for task in stream.data)
    np.testing.assert_array_equal(on_cluster, expected)
