"""Resumable for real: a skorch PBRF killed with SIGKILL resumes without refitting the net,
without recomputing its automatic settings, and with a bitwise identical result; the
checkpoint interval is bounded by a cost model, never by progress or ``n_jobs``."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skorch")

from sklearn_influence._responses import _checkpoint

# the run of the subprocess and of the resumed in-process run: 20 removed points, 20 chunks
# of one point, each a fixed 30 SGD steps (tol=0), on a tiny tanh MLP
_PROBLEM = """
import numpy as np
import torch
from skorch import NeuralNetClassifier
from sklearn.datasets import load_digits
from sklearn_influence import PBRF
from sklearn_influence.datasets import TanhMLP

X, y = load_digits(return_X_y=True)
X, y = (X[:120] / 16).astype(np.float32), y[:120].astype(np.int64)


def make_pbrf(memory):
    net = NeuralNetClassifier(
        TanhMLP, module__hidden=8, criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD, lr=0.1, max_epochs=5, batch_size=32,
        train_split=None, verbose=0,
    )
    return PBRF(net, train_indices=np.arange(20), n_iter=30, tol=0.0, memory=memory,
                random_state=0)
"""

_RUN = (
    _PROBLEM
    + """
import sys
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tol=0: the responses are not converged on purpose
    pbrf = make_pbrf(sys.argv[1]).fit(X, y)
np.save(sys.argv[2], pbrf.parameters_)
"""
)


def _environment():
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    # one thread, as this test process (conftest.py): the same arithmetic in every chunk,
    # and tiny nets are much faster without thread barriers on busy cores
    env["OMP_NUM_THREADS"] = "1"
    return env


def _launch(folder, result):
    return subprocess.Popen(
        [sys.executable, "-c", _RUN, str(folder), str(result)],
        env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _saved_chunks(folder):
    return list(Path(folder).rglob("_run_chunk/*/output.pkl"))


def test_killed_skorch_pbrf_resumes_bitwise_without_refitting(tmp_path, monkeypatch):
    import warnings

    import sklearn_influence._base as base
    import sklearn_influence._responses._functions as functions

    # the run, killed (SIGKILL: no clean-up) once a few chunks are saved
    folder = tmp_path / "interrupted"
    process = _launch(folder, tmp_path / "never.npy")
    deadline = time.monotonic() + 240
    while len(_saved_chunks(folder)) < 4 and time.monotonic() < deadline:
        assert process.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.02)
    process.kill()
    process.wait()
    finished = len(_saved_chunks(folder))
    assert 4 <= finished < 20
    assert not (tmp_path / "never.npy").exists()

    # the uninterrupted run, in this process and its own memory
    namespace = {}
    exec(_PROBLEM, namespace)  # the same problem as the subprocess
    make_pbrf, X, y = namespace["make_pbrf"], namespace["X"], namespace["y"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = make_pbrf(str(tmp_path / "reference")).fit(X, y).parameters_

    # resumed in this process: neither the net's fit nor the automatic settings are redone
    fits, settings, chunks = [], [], []
    for module, name, calls in (
        (base, "fit_with_weights", fits),
        (functions, "_resolve_auto", settings),
        (functions, "_optimizer_chunk", chunks),
    ):
        original = getattr(module, name)

        def counting(*args, _original=original, _calls=calls, **kwargs):
            _calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = make_pbrf(str(folder)).fit(X, y)
    assert fits == [] and settings == []
    assert len(chunks) == 20 - finished  # only the unfinished chunks are computed
    np.testing.assert_array_equal(resumed.parameters_, reference)


class _Linear:
    """An adapter-like model h(θ, x) = x W (d inputs, 10 outputs) for the flop count."""

    def outputs(self, theta, inputs):
        return inputs @ theta.reshape(inputs.shape[1], 10)


def test_flops_are_counted_not_timed():
    import torch

    theta = torch.zeros(64 * 10, dtype=torch.float64)
    inputs = torch.ones(50, 64, dtype=torch.float64)
    # a (1, 64) × (64, 10) product per row: 2 · 64 · 10 flops
    assert _checkpoint.forward_flops(_Linear(), theta, inputs) == 2 * 64 * 10


def test_chunks_are_bounded_by_the_cost_model_and_fixed_by_the_points():
    # one copy costs 1000 steps × 2 passes × 1e8 flops = 2e11 flop = 200 s at 1e9 flop/s:
    # a 30 s chunk holds none, so one point per chunk; at 1e6 flops per pass, 15 points
    assert _checkpoint.copies_within(30.0, 1000, 2, 1e8, "cpu") == 1
    assert _checkpoint.copies_within(30.0, 1000, 2, 1e6, "cpu") == 15
    assert _checkpoint.copies_within(30.0, 1000, 2, 1e6, "cuda") == 750
    indices = np.arange(1000)
    chunks = _checkpoint.checkpoint_chunks(indices, 15)
    assert len(chunks) == 67 and max(len(chunk) for chunk in chunks) <= 15
    assert np.array_equal(np.concatenate(chunks), indices)
    # few points: still at least CHECKPOINT_CHUNKS chunks, however fast each is
    assert len(_checkpoint.checkpoint_chunks(np.arange(48), 10**6)) == 20


def test_the_time_bound_sets_the_chunks_of_a_long_pbrf(tmp_path):
    import warnings

    from sklearn.linear_model import LogisticRegression

    from sklearn_influence import PBRF

    rng = np.random.RandomState(0)
    X = rng.normal(size=(80, 4))
    y = (X[:, 0] > 0).astype(int)
    # a copy costs 5 steps × 1 pass × 3 · 80 rows · 10 flops = 12,000 flop: 30 s at 1e9
    # flop/s hold millions, so the 24 points make the minimum of 20 chunks ...
    settings = dict(train_indices=np.arange(24), method="optimizer", tol=0.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PBRF(LogisticRegression(), n_iter=5, memory=str(tmp_path / "short"), **settings).fit(X, y)
    assert len(_saved_chunks(tmp_path / "short")) == 20
    # ... and with 30 s at 1 flop/s (a hypothetical machine) each point is its own chunk
    original = dict(_checkpoint.THROUGHPUT)
    try:
        _checkpoint.THROUGHPUT["cpu"] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PBRF(LogisticRegression(), n_iter=5, memory=str(tmp_path / "slow"), **settings).fit(
                X, y
            )
    finally:
        _checkpoint.THROUGHPUT.update(original)
    assert len(_saved_chunks(tmp_path / "slow")) == 24
