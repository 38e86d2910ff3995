"""Influence functions and the proximal Bregman response function for scikit-learn.

Sign convention: ``InfluenceFunction(...).transform(X)[q, m] > 0`` means removing training
point m is predicted to raise query q's loss (m helps q).
"""

from ._influence import InfluenceFunction

__version__ = "0.1.0.dev0"

__all__ = ["InfluenceFunction", "__version__"]
