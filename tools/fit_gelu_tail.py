"""Fits the polynomial behind the Triton GELU (vtkernels/triton/activation.py: ``normal_tail``).

Phi(-a) = 0.5 * erfc(a / sqrt(2)) for a >= 0 is computed as exp2(P(a)), P of degree DEGREE with
P(0) = -1 (Phi(0) = 1/2), fitted to log2(Phi(-a)) on [0, LIMIT] by least squares with Lawson
reweighting (towards the minimax fit). Prints the coefficients, constant term first, and the
largest relative error of exp2(P(a)) evaluated in float32 as the kernel does (Horner), against
float64. Usage: ``python tools/fit_gelu_tail.py``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

LIMIT = 6.375  # Phi(-6.375) = 9e-11: past it the kernel returns 0
DEGREE = 9


def log2_tail(a: np.ndarray) -> np.ndarray:
    return log_ndtr(-a) / np.log(2)


def fit() -> np.ndarray:
    nodes = 8000
    a = (1 - np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)) / 2 * LIMIT  # Chebyshev points
    target = log2_tail(a) + 1  # the fit leaves out the constant term, fixed at -1
    powers = np.vstack([a ** (k + 1) for k in range(DEGREE)]).T
    weights = np.ones(nodes)
    for _ in range(200):
        coef, *_ = np.linalg.lstsq(powers * weights[:, None], target * weights, rcond=None)
        error = np.abs(powers @ coef - target)
        weights = weights * (error / error.max()) ** 0.2 + 1e-6
        weights /= weights.max()
    return np.concatenate([[-1.0], coef]).astype(np.float32)


def max_relative_error(coef: np.ndarray) -> float:
    a = np.linspace(0, LIMIT, 800001, dtype=np.float32)
    p = np.full_like(a, coef[-1])
    for c in coef[-2::-1]:
        p = (p * a + c).astype(np.float32)
    return float(np.abs(np.exp2(p.astype(np.float64) - log2_tail(a.astype(np.float64))) - 1).max())


if __name__ == "__main__":
    coef = fit()
    print("coefficients:", ", ".join(f"{float(c):.9g}" for c in coef))
    print(f"max relative error of Phi(-a) on [0, {LIMIT}]: {max_relative_error(coef):.2e}")
