"""The dense layers' matmul (fungizsl/models/matmul.py): bf16 on CPU accumulates in fp32, forward
and backward, with the arithmetic of its rounded inputs; fp32 is `nn.Dense` exactly."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from fungizsl.models import matmul, vit

BF16 = jnp.bfloat16


def _operands(seed=0, batch=(3, 5), k=24, n=40):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(batch + (k,)).astype(np.float32)
    kernel = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    cotangent = rng.standard_normal(batch + (n,)).astype(np.float32)
    return x, kernel, bias, cotangent


def _to_bf16_and_back(a):
    return np.asarray(jnp.asarray(a, BF16).astype(jnp.float32))


def test_bf16_dense_is_the_fp32_arithmetic_of_its_rounded_operands():
    """Forward: bf16(x_r @ k_r + b) with x_r, k_r the operands rounded to bf16 and everything after
    in fp32 (numpy float64 here, then rounded once); the gradients likewise: dx = bf16(g_r k_r^T),
    dk = bf16(x_r^T g_r) summed over both leading axes, db = sum of g (fp32: the bias is added
    before the cast)."""
    assert matmul.accumulates_in_fp32(BF16, backend="cpu") and not matmul.accumulates_in_fp32(BF16, backend="gpu")
    x, kernel, bias, g = _operands()
    xr, kr, gr = (_to_bf16_and_back(a).astype(np.float64) for a in (x, kernel, g))

    def f(x, kernel, bias):
        return matmul.dense(x.astype(BF16), kernel, bias)

    out, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
    assert out.dtype == BF16 and out.shape == (3, 5, 40)
    want = _to_bf16_and_back(xr @ kr + bias)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), want, rtol=2 ** -8, atol=1e-6)

    dx, dk, db = vjp(jnp.asarray(g, BF16))
    np.testing.assert_allclose(np.asarray(dx), _to_bf16_and_back(gr @ kr.T), rtol=2 ** -8, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dk), _to_bf16_and_back(np.einsum("abk,abn->kn", xr, gr)),
                               rtol=2 ** -8, atol=1e-6)
    np.testing.assert_allclose(np.asarray(db), gr.sum((0, 1)), rtol=1e-6, atol=1e-5)


def test_fp32_dense_is_nn_dense_bit_for_bit():
    x, kernel, bias, g = _operands(1)
    params = {"params": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
    ours, flax_dense = matmul.Dense(40), nn.Dense(40)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    out_ours, vjp_ours = jax.vjp(lambda p: ours.apply(p, x), params)
    out_flax, vjp_flax = jax.vjp(lambda p: flax_dense.apply(p, x), params)
    np.testing.assert_array_equal(np.asarray(out_ours), np.asarray(out_flax))
    for a, b in zip(jax.tree.leaves(vjp_ours(jnp.asarray(g))), jax.tree.leaves(vjp_flax(jnp.asarray(g)))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _dot_generals(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield tuple(v.aval.dtype for v in eqn.invars), eqn.params["preferred_element_type"]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _dot_generals(sub)


def test_bf16_vit_gradient_has_no_bf16_by_bf16_matmul_with_a_bf16_result():
    """What makes a bf16 step fast on AMX (matmul.py's docstring): no matmul of the ViT's
    gradient multiplies two bf16 operands into a bf16 result. With nn.Dense every dense layer's
    forward and both transposes would (3 per layer: qkv, out, fc1, fc2 in each of 2 blocks)."""
    model = vit.VisionTransformer(vit.vit_config("clip_tiny", dtype=BF16))
    images = jnp.ones((2, 32, 32, 3))
    params = model.init(jax.random.key(0), images)

    def loss(p):
        return jnp.sum(model.apply(p, images)["pooled"].astype(jnp.float32) ** 2)

    dots = list(_dot_generals(jax.make_jaxpr(jax.grad(loss))(params).jaxpr))
    both_bf16 = [preferred for dtypes, preferred in dots if dtypes == (jnp.dtype(BF16),) * 2]
    assert len(both_bf16) >= 3 * 4 * 2, dots
    assert all(preferred == jnp.float32 for preferred in both_bf16), dots
