"""The XLA:CPU options of the project's jitted steps (`fungizsl.xla_options`): convolutions leave
YNNPACK for XLA's multi-threaded Eigen kernels, only on CPU, and a user's XLA_FLAGS wins."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from fungizsl import xla_options

DN = ("NHWC", "HWIO", "NHWC")


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def _weight_grad(x, w, g):
    return jax.vjp(_conv, x, w)[1](g)[1]


def _conv_in_ynn_fusion(compiled_text: str) -> bool:
    """Whether a convolution sits in a fused computation that a YNNPACK fusion calls."""
    ynn_calls = set(re.findall(r"calls=%([\w.]+), [^\n]*__ynn_fusion", compiled_text))
    bodies = re.split(r"\n(?=%|ENTRY)", compiled_text)
    return any(body.split(" ", 1)[0].lstrip("%") in ynn_calls and " convolution(" in body for body in bodies)


def test_options_only_on_cpu_and_never_over_the_users_flags():
    assert xla_options.compiler_options("gpu", "") is None
    assert xla_options.compiler_options("tpu", "") is None
    assert xla_options.compiler_options("cpu", "") == {
        "xla_cpu_experimental_ynn_fusion_type":
            "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    assert xla_options.compiler_options("cpu", "--xla_cpu_experimental_ynn_fusion_type=") is None
    assert xla_options.compiler_options(
        "cpu", "--xla_force_host_platform_device_count=2") == xla_options.compiler_options("cpu", "")


def test_the_weight_gradient_of_a_convolution_leaves_ynnpack_with_the_same_values():
    rng = np.random.default_rng(0)
    # cnn_tiny's second layer (48x48, 32 -> 32 channels) on 8 images: large enough for YNNPACK to
    # take the convolution by default (it leaves small ones to XLA already)
    x = jnp.asarray(rng.standard_normal((8, 48, 48, 32), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 32), np.float32))
    g = jnp.asarray(rng.standard_normal((8, 48, 48, 32), np.float32))
    plain = jax.jit(_weight_grad).lower(x, w, g).compile()
    ours = xla_options.jit(_weight_grad).lower(x, w, g).compile()
    assert _conv_in_ynn_fusion(plain.as_text())  # jaxlib's default: YNNPACK, one thread
    assert not _conv_in_ynn_fusion(ours.as_text())
    # the direct sum over pixels, in float64, is what both must give
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.stack([np.stack([np.einsum("bhwc,bhwf->cf", xp[:, i:i + 48, j:j + 48], np.asarray(g, np.float64))
                               for j in range(3)]) for i in range(3)])
    np.testing.assert_allclose(np.asarray(ours(x, w, g)), want, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(np.asarray(plain(x, w, g)), want, rtol=1e-4, atol=2e-3)


def test_a_function_from_jit_traces_inside_other_transformations_through_unwrapped():
    fn = xla_options.jit(lambda x: jnp.sin(x) * 2)
    jaxpr = jax.make_jaxpr(xla_options.unwrapped(fn))(jnp.ones(3))
    assert [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns] == ["sin", "mul"]
    assert float(jax.jit(lambda x: xla_options.unwrapped(fn)(x) + 1)(jnp.zeros(()))) == 1.0
