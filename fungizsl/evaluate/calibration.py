"""Temperature scaling and calibration error, for decisions that read probabilities literally.

Temperature scaling (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks",
ICML 2017) divides every logit by one scalar T fitted by minimising the negative log-likelihood on
held-out data: T > 1 softens an over-confident model, T < 1 sharpens an under-confident one, and
the argmax never changes. The expected-cost rule of `decisions.py` answers "poisonous" once the
poisonous classes together pass roughly 1/(1 + 100), so it needs probabilities that mean what
they say; this is what calibration buys it. T must be fitted on a split other than the one
evaluated (the run's own validation split, `fungiclef/evaluate.py`), else the reported cost
is tuned on its own answers.

The fit works on beta = 1/T: NLL(beta) = mean_i [logsumexp_c(beta z_ic) - beta z_iy] is convex in
beta (a log-sum-exp of functions linear in beta, minus a linear term), with derivative
mean_i [E_{p_beta}[z_i] - z_iy], which only grows with beta. Bisection on its sign (in log beta)
finds the minimiser to machine precision without a learning rate.

The expected calibration error (ECE) is the top-label one of Guo et al.: equal-width confidence
bins, sum over bins of (bin share) x |accuracy - mean confidence|.
"""

from __future__ import annotations

import numpy as np

TEMPERATURE_RANGE = (1e-2, 1e2)  # a fit that reaches an end is reported as such


def log_softmax(logits) -> np.ndarray:
    """log softmax over the last axis, in float64 (the package's one numpy copy)."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _check(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"need logits [N, C] and labels [N]; got {z.shape} and {y.shape}")
    if len(y) == 0:
        raise ValueError("no examples to calibrate on")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in 0..{z.shape[1] - 1}; got {y.min()}..{y.max()}")
    return z, y


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    z, y = _check(logits, labels)
    return float(-np.mean(log_softmax(z / temperature)[np.arange(len(y)), y]))


def _nll_slope(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    """d NLL / d beta at beta = 1/T: mean of E_p[z] - z_y (non-decreasing in beta)."""
    p = np.exp(log_softmax(beta * z))
    expected = np.sum(p * np.where(p > 0, z, 0.0), axis=-1)  # 0 * (-1e9 padding) stays 0
    return float(np.mean(expected - z[np.arange(len(y)), y]))


def fit_temperature(logits, labels, bounds: tuple[float, float] = TEMPERATURE_RANGE,
                    iterations: int = 100) -> float:
    """The T in `bounds` that minimises `nll(logits, labels, T)` (convex in 1/T; bisection)."""
    z, y = _check(logits, labels)
    z = z - z.max(-1, keepdims=True)  # softmax is shift-invariant; keeps beta * z finite
    lo, hi = np.log(1.0 / bounds[1]), np.log(1.0 / bounds[0])  # log beta
    if _nll_slope(z, y, np.exp(lo)) >= 0:
        return float(bounds[1])  # flattest allowed: the labels are no better than chance under z
    if _nll_slope(z, y, np.exp(hi)) <= 0:
        return float(bounds[0])  # sharpest allowed: (nearly) every argmax is right
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if _nll_slope(z, y, np.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return float(1.0 / np.exp(0.5 * (lo + hi)))


def expected_calibration_error(probs, labels, num_bins: int = 15) -> float:
    """Top-label ECE with `num_bins` equal-width confidence bins on (0, 1]."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels).astype(np.int64)
    confidence, predicted = p.max(-1), p.argmax(-1)
    correct = (predicted == y).astype(np.float64)
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)
