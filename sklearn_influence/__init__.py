"""Influence functions and the proximal Bregman response function for scikit-learn.

Sign convention: ``InfluenceFunction(...).transform(X)[q, m] > 0`` means removing training
point m is predicted to raise query q's loss (m helps q).
"""

from . import datasets, exceptions, metrics
from ._cv import InfluenceFunctionCV
from ._decomposition import InfluenceDecomposition, InfluenceDecompositionDisplay
from ._influence import InfluenceFunction
from ._mislabel import MislabelDetector
from ._regression_diagnostics import RegressionDiagnostics
from ._response_estimators import PBRF, LeaveOneOut, LinearizedPBRF, ProximalResponse
from ._scorers import make_influence_scorer
from .metrics._diagnostics_display import RegressionDiagnosticsDisplay
from .metrics._display import MislabelRecallDisplay, MostInfluentialDisplay

__version__ = "0.1.0.dev0"

__all__ = [
    "PBRF",
    "InfluenceDecomposition",
    "InfluenceDecompositionDisplay",
    "InfluenceFunction",
    "InfluenceFunctionCV",
    "LeaveOneOut",
    "LinearizedPBRF",
    "MislabelDetector",
    "MislabelRecallDisplay",
    "MostInfluentialDisplay",
    "ProximalResponse",
    "RegressionDiagnostics",
    "RegressionDiagnosticsDisplay",
    "__version__",
    "datasets",
    "exceptions",
    "make_influence_scorer",
    "metrics",
]
