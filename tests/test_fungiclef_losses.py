"""DWCL (Lu et al., FungiCLEF 2025, eq. 3) against a direct float64 numpy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fungizsl import losses


def numpy_dwcl(z, labels, weights, mask, tau, min_positives=1):
    """Equation (3) written loop by loop, as the paper states it."""
    z = np.float64(z)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)  # (1)
    s = z @ z.T  # (2)
    n = len(z)
    num, den = 0.0, 0.0
    for i in range(n):
        if not mask[i]:
            continue
        positives = [j for j in range(n) if j != i and mask[j] and labels[j] == labels[i]]
        if len(positives) < max(min_positives, 1):
            continue  # i is not in A
        kept = [k for k in range(n) if k != i and mask[k]]  # k not in F(i)
        log_den = np.log(sum(np.exp(s[i, k] / tau) for k in kept))
        term = np.mean([-(s[i, j] / tau - log_den) for j in positives])
        num += weights[i] * term
        den += weights[i]
    return num / den if den else 0.0


def _batch(seed, n=24, d=6, classes=7):
    rng = np.random.RandomState(seed)
    z = rng.randn(n, d).astype(np.float32)
    labels = rng.randint(0, classes, n)
    labels[-1] = classes + 3  # a class of one: an anchor without a positive
    mask = rng.rand(n) > 0.2
    weights = rng.uniform(0.5, 1.0, n).astype(np.float32)
    return z, labels, weights, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_positives", [1, 2])
def test_dwcl_matches_numpy_equation_3(seed, min_positives):
    z, labels, weights, mask = _batch(seed)
    tau = 0.1
    got, metrics = losses.dwcl_loss(jnp.asarray(z), jnp.asarray(labels), jnp.asarray(weights),
                                    jnp.asarray(mask), tau, min_positives)
    want = numpy_dwcl(z, labels, weights, mask, tau, min_positives)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert want > 0
    n_anchor = sum(1 for i in range(len(z)) if mask[i] and sum(
        1 for j in range(len(z)) if j != i and mask[j] and labels[j] == labels[i]) >= min_positives)
    assert int(metrics["num_anchors"]) == n_anchor


def test_anchor_without_positive_and_padding_are_left_out():
    z, labels, weights, mask = _batch(3)
    base, _ = losses.dwcl_loss(z, labels, weights, mask, 0.2)
    # Changing the weight of a row that is not an anchor (lonely class or masked) changes nothing.
    lonely = len(z) - 1
    w2 = weights.copy()
    w2[lonely] = 123.0
    w2[~mask] = 55.0
    again, _ = losses.dwcl_loss(z, labels, w2, mask, 0.2)
    np.testing.assert_allclose(float(again), float(base), rtol=1e-6)
    # A masked row's features do not enter any denominator.
    z2 = z.copy()
    z2[~mask] = 100 * np.random.RandomState(9).randn(int((~mask).sum()), z.shape[1])
    again, _ = losses.dwcl_loss(z2, labels, weights, mask, 0.2)
    np.testing.assert_allclose(float(again), float(base), rtol=1e-6)


def test_equal_weights_is_supcon_and_weights_matter():
    z, labels, weights, mask = _batch(4)
    ones = np.full_like(weights, 0.7)  # any constant: normalised by the sum
    dw, _ = losses.dwcl_loss(z, labels, ones, mask, 0.1)
    sc, _ = losses.supcon_loss(z, labels, mask, 0.1)
    np.testing.assert_allclose(float(dw), float(sc), rtol=1e-6)
    np.testing.assert_allclose(float(sc), numpy_dwcl(z, labels, np.ones(len(z)), mask, 0.1), rtol=1e-5)
    weighted, _ = losses.dwcl_loss(z, labels, weights, mask, 0.1)
    assert abs(float(weighted) - float(sc)) > 1e-4


def test_no_anchor_gives_zero_and_finite_gradients():
    z = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    labels = np.arange(5)
    mask = np.array([True, True, True, False, False])
    loss, grad = jax.value_and_grad(lambda f: losses.dwcl_loss(f, labels, None, mask)[0])(z)
    assert float(loss) == 0.0
    assert np.all(np.isfinite(grad))


def test_entropy_weights_range_and_stop_gradient():
    logits = jnp.asarray([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    w = losses.entropy_weights(logits)
    assert 0.5 <= float(w[0]) < float(w[1])
    np.testing.assert_allclose(float(w[1]), 1 / (1 + np.exp(-np.log(3))), rtol=1e-6)
    grad = jax.grad(lambda x: losses.entropy_weights(x).sum())(logits)
    assert np.all(np.asarray(grad) == 0)
