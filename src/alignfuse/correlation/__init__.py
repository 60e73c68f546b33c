"""Explicit statistical alignment: scikit-learn-style estimators over two views (numpy or
torch), and the differentiable deep-CCA objective."""

from alignfuse.correlation.cca import CCA
from alignfuse.correlation.deep import DCCA, DCCAE
from alignfuse.correlation.io import load_estimator, save_estimator
from alignfuse.correlation.kcca import KCCA, kernel_matrix
from alignfuse.correlation.loss import CCALoss, cca_loss
from alignfuse.correlation.pls import PLS
from alignfuse.correlation.procrustes import Procrustes
from alignfuse.correlation.scm import SCM

__all__ = [
    "CCA",
    "DCCA",
    "DCCAE",
    "KCCA",
    "PLS",
    "SCM",
    "CCALoss",
    "Procrustes",
    "cca_loss",
    "kernel_matrix",
    "load_estimator",
    "save_estimator",
]
