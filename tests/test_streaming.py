"""Streaming over the training set: blocks sized by working_memory, top-k, chunks, threads.

The reference for every solver is the dense computation Q (C + λI)⁻¹ Tᵀ / N in float64 from
the curvature matrix and all training gradients at once — what the engine computed before
it streamed. A tiny ``working_memory`` forces many blocks of queries and training points.
"""

import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sklearn
from joblib import parallel_config
from sklearn.linear_model import LogisticRegression, Ridge

from sklearn_influence import InfluenceFunction
from sklearn_influence._engine import _influence_engine
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence._engine._solvers import SOLVERS

#: settings that make each solver accurate here, and the relative error allowed
SOLVER_SETTINGS = {
    "cg": ({"tol": 1e-9, "maxiter": 200, "block_size": 8}, 1e-7),
    "near_exact": ({"tol": 1e-9, "maxiter": 200, "block_size": 8}, 1e-7),
    # full-batch Neumann series at λ = 0.1; its own residual check at the accuracy asked
    "lissa": ({"depth": 60, "tol": 1e-2}, 1e-2),
}
DAMPING = 0.1
#: MiB: a few training points (p = 18, 9 queries → ~230 bytes a row) per block
TINY = 0.001


def _data(n=60, n_queries=9, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + n_queries, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.normal(size=len(X)) > 0).astype(int)
    y += (X[:, 2] > 0.8).astype(int)  # three classes
    return X[:n], y[:n], X[n:], y[n:]


def _fit(solver="direct", *, data=None, **params):
    X, y, _, _ = data or _data()
    options, _ = SOLVER_SETTINGS.get(solver, ({}, 1e-8))
    if solver == "factored":  # the factored solver needs a factored curvature
        params = {"curvature": "kfac", **params}
    return InfluenceFunction(
        LogisticRegression(C=10.0, max_iter=2000),
        damping=DAMPING,
        solver=solver,
        solver_options=options or None,
        random_state=0,
        **params,
    ).fit(X, y)


def _dense_reference(influence, X, y):
    """Q (C + λI)⁻¹ Tᵀ / N and diag(T (C + λI)⁻¹ Tᵀ) / N in float64, all at once."""
    engine = influence.engine_
    adapter, theta = engine.adapter, engine.theta
    curvature = engine.curvature.dense().double().numpy()
    T = per_example_gradients(adapter, theta, engine.inputs, engine.targets).double().numpy()
    Q = per_example_gradients(adapter, theta, adapter.inputs(X), adapter.targets(y))
    Q = Q.double().numpy()
    damped = curvature + DAMPING * np.eye(len(curvature))
    solved_train = np.linalg.solve(damped, T.T)
    n = engine.n_train
    return Q @ solved_train / n, np.einsum("np,pn->n", T, solved_train) / n


def _relative_error(actual, expected):
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_streamed_scores_equal_the_dense_computation(name, cache, monkeypatch):
    _, _, X_query, y_query = _data()
    influence = _fit(name)
    if not cache:
        influence.engine_.gradient_cache = None
    _, tolerance = SOLVER_SETTINGS.get(name, ({}, 1e-8))
    matrix, self_influence = _dense_reference(influence, X_query, y_query)
    blocks = []
    original = _influence_engine._score_block

    def recording(engine, preconditioned, rows):
        blocks.append((len(preconditioned), rows.stop - rows.start))
        return original(engine, preconditioned, rows)

    monkeypatch.setattr(_influence_engine, "_score_block", recording)
    with sklearn.config_context(working_memory=TINY):
        streamed = influence.transform(X_query, y_query)
        streamed_self = influence.self_influence()
    # many blocks of queries and of training points
    assert max(rows for rows, _ in blocks) < len(X_query) and len(blocks) > 10
    assert _relative_error(streamed, matrix) <= tolerance
    assert _relative_error(streamed_self, self_influence) <= tolerance
    # the default working memory (one block) gives the same numbers: to round-off for the
    # direct solvers; the iterative ones solve other blocks of right-hand sides, so to their
    # tolerance
    unstreamed = influence.transform(X_query, y_query)
    rtol = 1e-10 if name not in SOLVER_SETTINGS else tolerance
    assert _relative_error(streamed, unstreamed) <= rtol
    assert _relative_error(streamed_self, influence.self_influence()) <= rtol


def test_gradient_cache_is_bounded_by_the_working_memory():
    influence = _fit()
    assert influence.engine_.gradient_cache is not None  # 60 × 18 float64: tiny
    with sklearn.config_context(working_memory=TINY):
        streamed = _fit()
    assert streamed.engine_.gradient_cache is None
    _, _, X_query, y_query = _data()
    np.testing.assert_allclose(
        streamed.transform(X_query, y_query), influence.transform(X_query, y_query), rtol=1e-12
    )


@pytest.mark.parametrize("k", [1, 7, 60])
def test_most_influential_equals_a_full_sort(k):
    _, _, X_query, y_query = _data()
    influence = _fit()
    matrix = influence.transform(X_query, y_query)
    assert len(np.unique(matrix)) == matrix.size  # no ties in this data
    with sklearn.config_context(working_memory=TINY):  # blocks of ~5 training points
        top = influence.most_influential(X_query, y_query, k=k)
    order = np.argsort(matrix, axis=1)
    np.testing.assert_array_equal(top.harmful_indices, order[:, :k])
    np.testing.assert_array_equal(top.helpful_indices, order[:, ::-1][:, :k])
    # the values: those of the matrix, to round-off (other blocks, other summation order)
    take = np.take_along_axis
    np.testing.assert_allclose(top.helpful_values, take(matrix, top.helpful_indices, 1), 1e-12)
    np.testing.assert_allclose(top.harmful_values, take(matrix, top.harmful_indices, 1), 1e-12)
    # with the blocks of the full matrix, the values are bitwise those of the matrix
    top = influence.most_influential(X_query, y_query, k=k)
    np.testing.assert_array_equal(top.helpful_values, take(matrix, top.helpful_indices, 1))
    np.testing.assert_array_equal(top.harmful_values, take(matrix, top.harmful_indices, 1))


def test_most_influential_orders_ties_by_training_index():
    helpful = _influence_engine.merge_top_k(
        (np.array([[4, 1]]), np.array([[2.0, 1.0]])),
        (np.array([[0, 2, 3]]), np.array([[1.0, 2.0, 0.0]])),
        3,
        largest=True,
    )
    assert helpful[1].tolist() == [[2.0, 2.0, 1.0]]
    assert helpful[0][0, :2].tolist() == [2, 4]  # equal values: lower index first


def test_k_larger_than_the_training_set_is_an_error():
    _, _, X_query, y_query = _data()
    influence = _fit()
    with pytest.raises(ValueError, match=r"k=61 is larger than the number of training points"):
        influence.most_influential(X_query, y_query, k=61)
    for k in (0, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            influence.most_influential(X_query, y_query, k=k)


def test_chunked_generator_reproduces_the_matrix_and_reduces():
    _, y, X_query, y_query = _data()
    influence = _fit()
    matrix = influence.transform(X_query, y_query)
    chunks = list(influence.transform_chunked(X_query, y_query, working_memory=TINY))
    assert len(chunks) > 5 and all(chunk.shape[0] == len(X_query) for chunk in chunks)
    np.testing.assert_allclose(np.hstack(chunks), matrix, rtol=1e-12, atol=1e-15)

    def per_class(chunk, start):
        labels = y[start : start + chunk.shape[1]]
        return np.stack([chunk[:, labels == c].sum(1) for c in range(3)], axis=1)

    sums = sum(
        influence.transform_chunked(X_query, y_query, reduce_func=per_class, working_memory=TINY)
    )
    expected = np.stack([matrix[:, y == c].sum(1) for c in range(3)], axis=1)
    np.testing.assert_allclose(sums, expected, rtol=1e-10, atol=1e-15)
    with pytest.raises(TypeError, match="reduce_func must be callable"):
        next(influence.transform_chunked(X_query, reduce_func=3))


def test_too_small_working_memory_is_a_clear_error():
    _, _, X_query, y_query = _data()
    influence = _fit()
    message = r"working_memory=1e-06 MiB is too small for one .*sklearn.set_config"
    with pytest.raises(ValueError, match=message):
        next(influence.transform_chunked(X_query, y_query, working_memory=1e-6))
    with sklearn.config_context(working_memory=1e-6):
        for method in (
            lambda: influence.transform(X_query, y_query),
            lambda: influence.most_influential(X_query, y_query, k=2),
            influence.self_influence,
        ):
            with pytest.raises(ValueError, match=message):
                method()
    with pytest.raises(ValueError, match="working_memory must be a positive number"):
        next(influence.transform_chunked(X_query, working_memory=0))


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_training_blocks_in_parallel_give_the_serial_answer(backend):
    _, _, X_query, y_query = _data()
    serial = _fit(n_jobs=1)
    parallel = _fit(n_jobs=2)
    with sklearn.config_context(working_memory=TINY):
        expected = (
            serial.transform(X_query, y_query),
            serial.self_influence(),
            serial.most_influential(X_query, y_query, k=5).helpful_indices,
        )
        with parallel_config(backend=backend):
            actual = (
                parallel.transform(X_query, y_query),
                parallel.self_influence(),
                parallel.most_influential(X_query, y_query, k=5).helpful_indices,
            )
    for each, reference in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(each, reference)


def test_training_blocks_go_through_sklearn_parallel(monkeypatch):
    """Each training block is one task of sklearn.utils.parallel.Parallel (Dask can split N)."""
    _, _, X_query, y_query = _data()
    influence = _fit(n_jobs=2)
    tasks = []
    original = _influence_engine.Parallel

    class Recording(original):
        def __call__(self, iterable):
            iterable = list(iterable)
            tasks.append(len(iterable))
            return super().__call__(iterable)

    monkeypatch.setattr(_influence_engine, "Parallel", Recording)
    with sklearn.config_context(working_memory=TINY):
        influence.transform(X_query, y_query)
    n_blocks = len(influence.engine_._train_slices(3, TINY))
    assert n_blocks > 5 and n_blocks in tasks


def test_most_influential_memory_does_not_grow_with_queries_times_train(monkeypatch):
    """Peak memory of most_influential is one block plus O(n_queries · k), not the matrix.

    Two measurements. (1) Every block of scores the engine materializes is recorded
    (monkeypatched ``_score_tensor``): the largest must fit the working memory, far below the
    n_queries × N matrix. (2) tracemalloc sees numpy's allocations (the blocks are handed
    over as numpy arrays, and the top-k merging is numpy); torch's own CPU buffers are
    invisible to it, which is why (1) checks the torch side. The peak must stay far below
    the 8 · n_queries · N bytes of the matrix (a full argsort would need twice that) and
    must not grow when N grows fourfold.
    """
    rng = np.random.default_rng(1)
    working_memory = 0.05  # MiB
    peaks, largest = {}, []
    original = _influence_engine._score_tensor

    def recording(engine, preconditioned, rows):
        block = original(engine, preconditioned, rows)
        largest.append(block.element_size() * block.numel())
        return block

    monkeypatch.setattr(_influence_engine, "_score_tensor", recording)
    n_queries = 200
    X_query = rng.normal(size=(n_queries, 4))
    for n in (2000, 8000):
        X = rng.normal(size=(n, 4))
        y = X @ np.arange(1.0, 5.0) + rng.normal(size=n)
        influence = InfluenceFunction(Ridge(), batch_size=64).fit(X, y)
        influence.engine_.gradient_cache = None
        largest.clear()
        with sklearn.config_context(working_memory=working_memory):
            tracemalloc.start()
            top = influence.most_influential(X_query, k=10)
            peaks[n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert top.helpful_indices.shape == (n_queries, 10)
        matrix_bytes = 8 * n_queries * n
        assert max(largest) <= working_memory * 2**20 < matrix_bytes / 10
        assert peaks[n] < matrix_bytes / 5
    assert peaks[8000] < 1.5 * peaks[2000]


def test_transform_peak_is_one_output():
    """The matrix is written into one preallocated array: numpy's peak is ≈ 1× the output."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4000, 4))
    y = X @ np.arange(1.0, 5.0) + rng.normal(size=4000)
    influence = InfluenceFunction(Ridge(), batch_size=64).fit(X, y)
    X_query = rng.normal(size=(300, 4))
    with sklearn.config_context(working_memory=0.1):
        tracemalloc.start()
        matrix = influence.transform(X_query)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 1.2 * matrix.nbytes


# -- thread safety (concurrent transform on one fitted object) ------------------------------
@pytest.mark.parametrize("solver", ["cg", "direct", "cholesky", "lissa"])
# a shallow LiSSA series on purpose: the test is about bitwise equality, not accuracy
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.SolverConvergenceWarning")
def test_concurrent_transform_gives_the_serial_answer_bitwise(solver):
    """8 transforms from 4 threads on a fresh fitted object that never transformed before.

    The solvers' lazily built state (CG's Nyström sketch, grown per damping; the direct
    eigendecomposition; Cholesky factors per damping; LiSSA's top eigenvalue) is then built
    by the concurrent calls themselves, the situation that raced.
    """
    X, y, X_query, y_query = _data(n=200, n_queries=40, seed=3)
    params = {"solver": solver, "damping": 1e-3, "random_state": 0}
    if solver == "lissa":
        params["solver_options"] = {"depth": 30}
    if solver == "cg":  # block CG with more right-hand sides than p = 18 can break down
        params["solver_options"] = {"block_size": 8}

    def fresh():
        influence = InfluenceFunction(LogisticRegression(C=100.0, max_iter=5000), **params)
        influence.fit(X, y)
        if solver == "direct":  # fit factorizes; drop it so that the threads rebuild it
            influence.engine_.solver._init_factors()
        return influence

    expected = fresh().transform(X_query, y_query)
    for _ in range(3):
        influence = fresh()
        barrier = threading.Barrier(4)

        def work(_, influence=influence, barrier=barrier):
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
            return influence.transform(X_query, y_query)

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(work, range(8)))
        for result in results:
            assert np.array_equal(result, expected)


def test_engine_pickles_without_its_locks():
    import pickle

    influence = _fit("cg")
    copy = pickle.loads(pickle.dumps(influence))
    _, _, X_query, y_query = _data()
    np.testing.assert_array_equal(
        copy.transform(X_query, y_query), influence.transform(X_query, y_query)
    )
    assert copy.engine_.solver._lock is not influence.engine_.solver._lock


# -- scores from per-layer factors (networks of Linear/Conv2d layers) ----------------------------
def _skorch_net(module, X, y, **params):
    import torch
    from skorch import NeuralNetClassifier

    torch.manual_seed(0)
    net = NeuralNetClassifier(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=1e-3,
        lr=0.1,
        max_epochs=3,
        batch_size=32,
        train_split=None,
        verbose=0,
        **params,
    )
    return net.fit(X, y)


def _factored_nets():
    import torch

    from sklearn_influence.datasets import LeNet, TanhMLP, load_digits_split

    digits = load_digits_split(n_train=80, n_test=6, random_state=0)
    X, y = digits.X_train, digits.y_train
    images = digits.images_train.reshape(-1, 1, 8, 8)
    mlp = _skorch_net(TanhMLP, X, y, module__hidden=8, module__dtype=torch.float64)
    lenet = _skorch_net(
        LeNet, images, y, module__channels=(2, 3), module__hidden=6, module__dtype=torch.float64
    )
    queries = (digits.X_test, digits.images_test.reshape(-1, 1, 8, 8))
    return {
        "mlp": (mlp, X, y, queries[0], digits.y_test),
        "lenet": (lenet, images, y, queries[1], digits.y_test),
    }


@pytest.fixture(scope="module")
def factored_nets():
    return _factored_nets()


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_scores_from_layer_factors_equal_those_from_per_example_gradients(name, factored_nets):
    """Streamed without a cache, the MLP and the CNN never form per-example gradients; the
    matrix, top-k and the stationarity figure equal the per-example-gradient computation."""
    from sklearn.frozen import FrozenEstimator

    from sklearn_influence._base import stationarity

    net, X, y, X_query, y_query = factored_nets[name]
    with sklearn.config_context(working_memory=TINY * 40):  # no cache, a few blocks
        influence = InfluenceFunction(FrozenEstimator(net), damping=DAMPING).fit(X, y)
    engine = influence.engine_
    assert engine.gradient_cache is None and engine.factored_layers is not None
    calls = []
    original = _influence_engine.per_example_gradients

    def counting(adapter, theta, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(adapter, theta, inputs, *args, **kwargs)

    with sklearn.config_context(working_memory=TINY * 40):
        _influence_engine.per_example_gradients = counting
        try:
            factored = influence.transform(X_query, y_query)
            top = influence.most_influential(X_query, y_query, k=5)
        finally:
            _influence_engine.per_example_gradients = original
    # the queries' gradients (once per call), never the training ones
    assert sum(calls) == 2 * len(X_query)
    engine.factored_layers = None  # the per-example-gradient path
    with sklearn.config_context(working_memory=TINY * 40):
        reference = influence.transform(X_query, y_query)
    np.testing.assert_allclose(factored, reference, rtol=1e-10, atol=1e-12 * abs(reference).max())
    order = np.argsort(-reference, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(np.sort(top["helpful_indices"], 1), np.sort(order, 1))
    # the stationarity figure of fit, by the factored path, against per-example gradients
    adapter = engine.adapter
    fast = stationarity(adapter, engine.inputs, engine.targets)
    gradients = per_example_gradients(adapter, engine.theta, engine.inputs, engine.targets)
    penalty = adapter.regularizer_diagonal() * engine.theta
    expected = float(
        (gradients.mean(0) + penalty).norm() / (gradients.norm(dim=1).mean() + penalty.norm())
    )
    assert fast == pytest.approx(expected, rel=1e-10)


def test_layer_factors_are_not_used_when_a_parameter_is_outside_the_layers():
    import torch

    from sklearn_influence.datasets import TransformerClassifier, load_digits_split

    digits = load_digits_split(n_train=30, n_test=2, random_state=0)
    rows = digits.images_train.reshape(-1, 8, 8)
    net = _skorch_net(
        TransformerClassifier,
        rows,
        digits.y_train,
        module__d_model=4,
        module__dim_feedforward=8,
        module__dtype=torch.float64,
    )
    from sklearn.frozen import FrozenEstimator

    with sklearn.config_context(working_memory=TINY * 40):
        influence = InfluenceFunction(FrozenEstimator(net), damping=DAMPING)
        influence.fit(rows, digits.y_train)
    assert influence.engine_.factored_layers is None  # LayerNorm, attention, embeddings


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_cuda_streamed_scores_and_top_k_equal_cpu(name, factored_nets):
    """On the GPU the streamed (factored) scores and the top-k equal the CPU ones."""
    from sklearn.frozen import FrozenEstimator

    net, X, y, X_query, y_query = factored_nets[name]
    results = {}
    for device in ("cpu", "cuda"):
        with sklearn.config_context(working_memory=TINY * 40):
            influence = InfluenceFunction(
                FrozenEstimator(net), curvature="ekfac", damping=DAMPING, device=device
            ).fit(X, y)
            results[device] = (
                influence.transform(X_query, y_query),
                influence.most_influential(X_query, y_query, k=5)["helpful_indices"],
            )
    cpu, cuda = results["cpu"], results["cuda"]
    np.testing.assert_allclose(cuda[0], cpu[0], rtol=1e-8, atol=1e-10 * abs(cpu[0]).max())
    np.testing.assert_array_equal(np.sort(cuda[1], 1), np.sort(cpu[1], 1))
