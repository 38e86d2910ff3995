"""verbose: silent by default, a line per stage at 1, per block with the time left at 2, a
tqdm bar at 3 — on every estimator that can run for long."""

import re

import numpy as np
import pytest
import sklearn
import torch
from _nets import TanhMLP
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LogisticRegression, Ridge
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction, InfluenceFunctionCV, MislabelDetector
from sklearn_influence._progress import Progress


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(n_samples=300, n_features=5, noise=1.0, random_state=0)
    return X, y


def _lines(text, name="InfluenceFunction"):
    return [line for line in text.splitlines() if line.startswith(f"[{name}]")]


def test_silent_by_default(regression, capsys):
    X, y = regression
    influence = InfluenceFunction(Ridge()).fit(X, y)
    influence.transform(X[:3], y[:3])
    influence.most_influential(X[:3], y[:3], k=2)
    assert capsys.readouterr().out == ""


def test_verbose_1_prints_one_line_per_stage_with_its_time(regression, capsys):
    X, y = regression
    influence = InfluenceFunction(Ridge(), verbose=1).fit(X, y)
    influence.transform(X[:3], y[:3])
    influence.most_influential(X[:3], y[:3], k=2)
    influence.self_influence()
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 5
    for line, stage in zip(lines, ["model fitted", "curvature 'gauss_newton' and solver",
                                   "influence matrix 3 × 300", "top 2 of 300 for 3 queries",
                                   "self-influence of 300"], strict=True):  # fmt: skip
        assert stage in line and re.search(r"done in \d+\.\d\d s$", line)


def test_verbose_2_reports_every_streamed_block_with_the_time_left(regression, capsys):
    X, y = regression
    influence = InfluenceFunction(Ridge(), verbose=2).fit(X, y)
    capsys.readouterr()
    with sklearn.config_context(working_memory=0.005):  # blocks of a few rows
        influence.transform(X[:3], y[:3])
    blocks = [line for line in _lines(capsys.readouterr().out) if "training block" in line]
    total = int(re.search(r"training block 1/(\d+)", blocks[0]).group(1))
    assert total > 2 and len(blocks) == total
    assert "s left)" in blocks[0] and "left" not in blocks[-1]


@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.ApproximationWarning")
def test_curvature_passes_and_bar(capsys):
    """EK-FAC's factor passes over the training batches are reported at verbose=2; at
    verbose=3 a tqdm bar (stderr) replaces the lines."""
    pytest.importorskip("tqdm")
    X, y = make_classification(n_samples=60, n_features=6, n_informative=4, random_state=0)
    net = NeuralNetClassifier(
        TanhMLP, module__in_features=6, module__hidden=3, module__out_features=2,
        criterion=torch.nn.CrossEntropyLoss, train_split=None, max_epochs=1, verbose=0,
    )  # fmt: skip
    InfluenceFunction(net, curvature="ekfac", batch_size=20, verbose=2, random_state=0).fit(X, y)
    passes = [line for line in _lines(capsys.readouterr().out) if "ekfac factor batch" in line]
    assert len(passes) >= 3 and passes[0].startswith("[InfluenceFunction] ekfac factor batch 1/3")
    influence = InfluenceFunction(Ridge(), verbose=3).fit(X, y)
    capsys.readouterr()
    influence.transform(X[:2], y[:2])
    captured = capsys.readouterr()
    assert "training block" in captured.err and "training block" not in captured.out


def test_cv_folds_and_mislabel_detector_report(capsys):
    X, y = make_classification(n_samples=60, n_features=4, random_state=1)
    InfluenceFunctionCV(
        LogisticRegression(), dampings=[1e-3, 1.0], cv=2, n_score_points=4, verbose=1,
        random_state=0,
    ).fit(X, y)  # fmt: skip
    folds = [line for line in _lines(capsys.readouterr().out, "InfluenceFunctionCV")
             if "fold" in line]  # fmt: skip
    assert [line.split(" fitted")[0] for line in folds] == [
        "[InfluenceFunctionCV] fold 1/2", "[InfluenceFunctionCV] fold 2/2",
    ]  # fmt: skip
    MislabelDetector(LogisticRegression(), verbose=1).fit(X, y)
    out = capsys.readouterr().out
    assert "[InfluenceFunction] model fitted" in out and "self-influence of 60" in out


def test_progress_lines_without_a_total():
    progress = Progress(2, name="X")
    assert list(progress.blocks(iter("ab"))) == ["a", "b"]
    assert not Progress(0) and Progress(1)
    np.testing.assert_equal(list(Progress(3).blocks(range(2), total=2)), [0, 1])


def test_decomposition_reports_each_response_with_its_time(capsys):
    from sklearn_influence import InfluenceDecomposition

    X, y = make_regression(n_samples=40, n_features=3, noise=1.0, random_state=2)
    InfluenceDecomposition(Ridge(), n_points=2, verbose=1, random_state=0).fit(X, y)
    lines = _lines(capsys.readouterr().out, "InfluenceDecomposition")
    stages = ["cold-start leave-one-out", "warm-start leave-one-out", "PRF", "PBRF",
              "linearized PBRF"]  # fmt: skip
    for stage in stages:
        assert any(line.startswith(f"[InfluenceDecomposition] {stage}") and "done in" in line
                   for line in lines), stage  # fmt: skip
