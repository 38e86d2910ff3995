"""Reliability: stationarity at fit, clear errors before numerical work, resumable long runs,
documented commands without the optional extras, PRF convergence with its defaults."""

import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sklearn_influence._base as base_module
import sklearn_influence._influence as influence_module
from sklearn_influence import PBRF, InfluenceDecomposition, InfluenceFunction, MislabelDetector
from sklearn_influence.datasets import load_digits_split


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(n_train=300, n_test=40, random_state=0)


def _stationarity_warnings(records):
    return [r for r in records if "not at an optimum" in str(r.message)]


# -- 1. stationarity ---------------------------------------------------------------------------


# the model is stopped early on purpose
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_unconverged_frozen_model_warns_with_figure(digits):
    model = LogisticRegression(max_iter=2).fit(digits.X_train, digits.y_train)
    with pytest.warns(ConvergenceWarning, match="stationarity_ = ") as records:
        influence = InfluenceFunction(FrozenEstimator(model)).fit(digits.X_train, digits.y_train)
    message = str(_stationarity_warnings(records)[0].message)
    assert "disagree with actual retraining" in message
    assert "max_iter" in message and "tol" in message and "really fitted on" in message
    assert influence.stationarity_ > 0.1
    assert f"{influence.stationarity_:.3g}" in message


def test_converged_model_does_not_warn(digits):
    model = LogisticRegression(tol=1e-10, max_iter=1000).fit(digits.X_train, digits.y_train)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        influence = InfluenceFunction(FrozenEstimator(model)).fit(digits.X_train, digits.y_train)
    assert not _stationarity_warnings(records)
    assert influence.stationarity_ < 1e-6
    # scikit-learn's default tolerance is well inside the threshold as well
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        InfluenceFunction(LogisticRegression()).fit(digits.X_train, digits.y_train)
    assert not _stationarity_warnings(records)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_frozen_model_fitted_on_other_data_warns(digits):
    model = LogisticRegression(tol=1e-10).fit(digits.X_test, digits.y_test)
    with pytest.warns(ConvergenceWarning, match="not at an optimum"):
        InfluenceFunction(FrozenEstimator(model)).fit(digits.X_train, digits.y_train)


# the model is stopped early on purpose
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_stationarity_on_response_estimators_and_detector(digits):
    model = FrozenEstimator(LogisticRegression(max_iter=3).fit(digits.X_train, digits.y_train))
    X, y = digits.X_train, digits.y_train
    with pytest.warns(ConvergenceWarning, match="PBRF: the fitted model is not at"):
        pbrf = PBRF(model, train_indices=[0, 1]).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="not at an optimum"):
        detector = MislabelDetector(model, method="loss").fit(X, y)
    assert pbrf.stationarity_ == pytest.approx(detector.stationarity_)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        parts = InfluenceDecomposition(model, n_points=2, random_state=0).fit(X, y)
    assert len(_stationarity_warnings(records)) == 1  # not once more for its inner influence
    assert parts.stationarity_ == pytest.approx(pbrf.stationarity_)


def test_stationarity_reported_for_a_network_without_warning(digits):
    from skorch import NeuralNetClassifier

    from sklearn_influence.datasets import TanhMLP

    net = NeuralNetClassifier(
        TanhMLP, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam, lr=1e-2,
        optimizer__weight_decay=1e-3, max_epochs=5, train_split=None, verbose=0,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        influence = InfluenceFunction(net, solver="cg", random_state=0).fit(
            digits.X_train.astype("float32"), digits.y_train
        )
    assert not _stationarity_warnings(records)
    assert 0 < influence.stationarity_ <= 1


def test_stationarity_definition_is_bounded_and_zero_at_the_optimum():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 4))
    y = X @ [1.0, -2.0, 0.5, 0.0] + rng.normal(size=60)
    assert InfluenceFunction(Ridge(alpha=1.0)).fit(X, y).stationarity_ < 1e-10
    off = Ridge(alpha=1.0).fit(X, y)
    off.coef_ = off.coef_ + 1.0
    with pytest.warns(ConvergenceWarning):
        figure = InfluenceFunction(FrozenEstimator(off)).fit(X, y).stationarity_
    assert 0.01 < figure <= 1


# scikit-learn's own solver fails on these features first
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_huge_features_stop_with_the_cause(digits):
    with pytest.raises(ValueError, match="unscaled or huge features"):
        InfluenceFunction(LogisticRegression()).fit(digits.X_train * 1e200, digits.y_train)


def test_factorization_failure_is_a_clear_value_error(digits, monkeypatch):
    from sklearn_influence._engine import _solvers

    def failing(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(_solvers, "make_solver", failing)
    monkeypatch.setattr("sklearn_influence._engine._influence_engine.make_solver", failing)
    with pytest.raises(ValueError, match="could not be factorized.*Scale the features"):
        InfluenceFunction(LogisticRegression()).fit(digits.X_train, digits.y_train)


# -- 3. clear errors before any numerical work ---------------------------------------------------


@pytest.fixture
def no_numerical_work(monkeypatch):
    """Fail the test if fitting or gradients are reached."""

    def reached(*args, **kwargs):
        raise AssertionError("numerical work was reached before the error")

    monkeypatch.setattr(influence_module, "fit_model_and_adapter", reached)
    monkeypatch.setattr(base_module, "fit_model_and_adapter", reached)
    monkeypatch.setattr(base_module, "per_example_gradients", reached)


def _small():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 3))
    return X, (X[:, 0] > 0).astype(int)


@pytest.mark.parametrize("estimator_class", [InfluenceFunction, PBRF])
def test_class_instead_of_instance(no_numerical_work, estimator_class):
    X, y = _small()
    with pytest.raises(TypeError, match=r"pass an instance, e.g. LogisticRegression\(\)"):
        estimator_class(LogisticRegression).fit(X, y)


@pytest.mark.parametrize("estimator_class", [InfluenceFunction, PBRF])
def test_frozen_unfitted_model(no_numerical_work, estimator_class):
    X, y = _small()
    with pytest.raises(NotFittedError, match="LogisticRegression inside FrozenEstimator is not"):
        estimator_class(FrozenEstimator(LogisticRegression())).fit(X, y)


def test_frozen_unfitted_pipeline(no_numerical_work):
    X, y = _small()
    unfitted = make_pipeline(StandardScaler(), LogisticRegression())
    with pytest.raises(NotFittedError, match="StandardScaler .*pipeline step 'standardscaler'"):
        InfluenceFunction(FrozenEstimator(unfitted)).fit(X, y)
    half = make_pipeline(StandardScaler().fit(X), LogisticRegression())
    with pytest.raises(NotFittedError, match="step 'logisticregression'"):
        InfluenceFunction(FrozenEstimator(half)).fit(X, y)


def test_frozen_uninitialized_skorch_net_names_the_pretrained_route(no_numerical_work):
    from skorch import NeuralNetClassifier

    X, y = _small()
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=-1))
    net = NeuralNetClassifier(module, train_split=None, verbose=0)
    with pytest.raises(NotFittedError, match=r"net.initialize\(\).*module_.load_state_dict"):
        InfluenceFunction(FrozenEstimator(net)).fit(X.astype("float32"), y)


# -- 5. documented commands after the documented install (no optional extras) ------------------

#: every command README.md and doc/install.rst show, with small settings appended
DOCUMENTED_COMMANDS = [
    ["--help"],
    ["explain", "--help"],
    ["--n-train", "150", "--n-queries", "1", "--k", "2", "--n-removed", "3", "--no-images"],
    ["--n-queries", "5", "--k", "4", "--damping", "1e-3", "--n-train", "150", "--n-removed", "3"],
    ["explain", "--n-queries", "5", "--k", "4", "--damping", "1e-3", "--n-removed", "3",
     "--n-train", "150"],
    ["explain", "--model", "mlp", "--check", "pbrf", "--n-train", "100", "--n-queries", "1",
     "--n-removed", "3", "--no-images"],
    ["decompose", "--n-train", "80", "--n-points", "2", "--n-test", "20"],
    ["decompose", "--output", "decomposition.png", "--n-train", "80", "--n-points", "2",
     "--n-test", "20"],
    ["mislabeled", "--flip-fraction", "0.1", "--output", "recall.png", "--n-train", "150"],
    ["mislabeled", "--csv", "data.csv", "--target", "label", "--k", "20"],
]  # fmt: skip

_WITHOUT_EXTRAS = """
import contextlib, importlib.machinery, io, json, sys

EXTRAS = ("matplotlib", "pandas", "dask", "distributed")
path_find_spec = importlib.machinery.PathFinder.find_spec


def find_spec(name, path=None, target=None):
    # the optional extras are not found, exactly as when they are not installed
    if name.split(".")[0] in EXTRAS:
        return None
    return path_find_spec(name, path, target)


importlib.machinery.PathFinder.find_spec = find_spec
from sklearn_influence.__main__ import main
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            status = main(argv + ["--quiet"] if "--help" not in argv else argv, out=out)
    except SystemExit as stop:
        status = stop.code
    results.append([status, out.getvalue()])
print(json.dumps(results))
"""


def _package_env():
    """The environment of a subprocess that imports this checkout of the package."""
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def test_documented_commands_run_without_optional_extras(tmp_path):
    import json
    import subprocess
    import sys

    rng = np.random.RandomState(0)
    rows = ["a,b,c,label"] + [
        f"{x:.3f},{y:.3f},{z:.3f},{int(x + y > 0)}" for x, y, z in rng.normal(size=(60, 3))
    ]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, json.dumps(DOCUMENTED_COMMANDS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_package_env(),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for argv, (status, output) in zip(DOCUMENTED_COMMANDS, results, strict=True):
        assert status in (0, None), (argv, output, completed.stderr[-3000:])
    decompose_output = results[DOCUMENTED_COMMANDS.index(DOCUMENTED_COMMANDS[6])][1]
    # decompose's default figure goes to a new temporary folder, never the working directory
    assert re.search(r"Figure not saved to \S*decomposition\.png: it needs matplotlib",
                     decompose_output)  # fmt: skip
    assert "warm_start_gap" in decompose_output or "proximity" in decompose_output
    assert "Figure not saved to recall.png" in results[8][1]
    assert not (tmp_path / "decomposition.png").exists()


# -- 4. resumable long runs --------------------------------------------------------------------

_RESUMABLE_RUN = """
import sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn_influence import PBRF

rng = np.random.RandomState(0)
X = rng.normal(size=(80, 4))
y = (X @ [1.0, -1.0, 0.5, 0.0] + 0.5 * rng.normal(size=80) > 0).astype(int)
pbrf = PBRF(
    LogisticRegression(tol=1e-10), train_indices=np.arange(40), method="optimizer",
    n_iter=int(sys.argv[2]), tol=0.0, memory=sys.argv[1], random_state=0,
)
pbrf.fit(X, y)
np.save(sys.argv[3], pbrf.parameters_)
"""


def _saved_chunks(folder):
    return sorted(folder.rglob("_run_chunk/*/output.pkl"))


def _run_resumable(folder, n_iter, result, **kwargs):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", _RESUMABLE_RUN, str(folder), str(n_iter), str(result)],
        env=_package_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs,
    )  # fmt: skip


def test_interrupted_pbrf_resumes_bitwise(tmp_path, monkeypatch):
    import time

    import sklearn_influence._responses._functions as functions

    n_iter = 60
    # uninterrupted reference run, in its own memory
    start = time.perf_counter()
    reference = _run_resumable(tmp_path / "reference", n_iter, tmp_path / "reference.npy")
    assert reference.wait(timeout=300) == 0
    full_time = time.perf_counter() - start
    assert len(_saved_chunks(tmp_path / "reference")) == 20  # 40 points in 20 fixed chunks

    # the same run, killed once a few chunks are saved
    folder = tmp_path / "interrupted"
    process = _run_resumable(folder, n_iter, tmp_path / "never.npy")
    deadline = time.monotonic() + 300
    while len(_saved_chunks(folder)) < 12 and time.monotonic() < deadline:
        assert process.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.05)
    process.kill()
    process.wait()
    finished = len(_saved_chunks(folder))
    assert 12 <= finished < 20
    assert not (tmp_path / "never.npy").exists()

    # resumed in this process: only the unfinished chunks are computed
    computed = []
    original = functions._optimizer_chunk

    def counting(problem, kind, chunk, *args):
        computed.append(len(chunk))
        return original(problem, kind, chunk, *args)

    monkeypatch.setattr(functions, "_optimizer_chunk", counting)
    rng = np.random.RandomState(0)
    X = rng.normal(size=(80, 4))
    y = (X @ [1.0, -1.0, 0.5, 0.0] + 0.5 * rng.normal(size=80) > 0).astype(int)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = PBRF(
            LogisticRegression(tol=1e-10), train_indices=np.arange(40), method="optimizer",
            n_iter=n_iter, tol=0.0, memory=str(folder), random_state=0,
        ).fit(X, y)  # fmt: skip
    resumed_time = time.perf_counter() - start
    assert len(computed) == 20 - finished  # nothing finished is recomputed
    assert sum(computed) == 2 * (20 - finished)
    np.testing.assert_array_equal(resumed.parameters_, np.load(tmp_path / "reference.npy"))
    # the resumed run does only part of the work (the full time includes start-up)
    assert resumed_time < full_time, (resumed_time, full_time)


def test_progress_shows_done_total_and_time_left(tmp_path, capsys):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    settings = dict(train_indices=np.arange(6), memory=str(tmp_path), random_state=0, verbose=1)
    PBRF(LogisticRegression(tol=1e-10), **settings).fit(X, y)
    lines = capsys.readouterr().err.splitlines()
    assert any("[PBRF] 2/6 removed points done, about" in line for line in lines)
    assert any("6/6 removed points done" in line for line in lines)
    PBRF(LogisticRegression(tol=1e-10), **settings).fit(X, y)
    assert "[PBRF] 6/6 removed points loaded from memory" in capsys.readouterr().err
