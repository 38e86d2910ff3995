"""Mislabeled-example detection: the detector, its in-sample and out-of-fold scores."""

from ._detector import MislabelDetector

__all__ = ["MislabelDetector"]
