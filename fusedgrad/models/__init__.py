"""Estimators built from the fused kernels, with scikit-learn's interface.

``LinearRegression`` and ``MLPClassifier`` follow scikit-learn's estimator
conventions; :func:`load` reads a model written by ``model.save(path)``.
"""

from fusedgrad.models._base import ConvergenceWarning, NotFittedError
from fusedgrad.models._persist import load
from fusedgrad.models.linear import IllConditionedWarning, LinearRegression, RankDeficientWarning
from fusedgrad.models.mlp import MLPClassifier

__all__ = [
    "LinearRegression",
    "MLPClassifier",
    "load",
    "ConvergenceWarning",
    "NotFittedError",
    "RankDeficientWarning",
    "IllConditionedWarning",
]
