"""The matmul kernels under the train step: XLA:CPU's against PyTorch's, on ViT-B/32's shapes.

    python benchmarks/matmul_kernels.py [--threads 2] [--rounds 5] [--calls 6] [--out matmul.json]

For each shape (M x K x N: batch*tokens x in x out of the B/32 towers at batch 32, and a square
2048^3) it times the forward matmul and the backward forms (dW = x^T g with x 2-D and with x as
[32, M/32, K], dX = g W^T), jitted with the project's CPU compiler options
(`fungizsl.xla_options.jit`) and in torch eager on the same arrays and thread count. The two
sides alternate in rounds watched for other processes as `python -m fungizsl.bench` watches them
(`fungizsl.bench.measure.timed_rounds`): the ratio (torch time / JAX time, below 1: XLA's kernel
is slower) is taken over clean rounds only, and a pair with none prints "contended" instead.
Rows: fp32; bf16 with an fp32 result (what `models/matmul.py` computes); bf16 with a bf16 result
(what a bf16 `nn.Dense` computes). PyTorch's bf16 matmul returns bf16 (accumulating in fp32
inside oneDNN) in both bf16 rows. On a CPU without AMX or AVX512-BF16 the bf16 rows say little.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import torch

from fungizsl import xla_options
from fungizsl.bench import measure

SHAPES = ((1600, 768, 2304), (1600, 768, 3072), (1600, 3072, 768), (2464, 512, 2048), (2048, 2048, 2048))
FORMS = {  # name: (JAX function of (a [M,K], b [K,N], g [M,N], result dtype), torch function)
    "fwd": (lambda a, b, g, t: jnp.dot(a, b, preferred_element_type=t), lambda a, b, g: a @ b),
    # The backward forms as autodiff and models/matmul.py write them: dimension numbers, not a
    # transpose op (XLA:CPU upcast `jnp.dot(g, b.T)` in bf16 to fp32 operands: 268 vs 1,226 GFLOP/s).
    "dW": (lambda a, b, g, t: lax.dot_general(a, g, (((0,), (0,)), ((), ())), preferred_element_type=t),
           lambda a, b, g: a.T @ g),
    # dW over [batch, tokens, width] activations, as the towers have them (contracting two axes)
    "dW3": (lambda a, b, g, t: lax.dot_general(a.reshape(32, -1, a.shape[1]), g.reshape(32, -1, g.shape[1]),
                                               (((0, 1), (0, 1)), ((), ())), preferred_element_type=t),
            lambda a, b, g: a.T @ g),
    "dX": (lambda a, b, g, t: lax.dot_general(g, b, (((1,), (1,)), ((), ())), preferred_element_type=t),
           lambda a, b, g: g @ b.T),
}
KINDS = {  # name: (operand dtype, JAX result dtype)
    "fp32": (jnp.float32, jnp.float32),
    "bf16->fp32": (jnp.bfloat16, jnp.float32),
    "bf16->bf16": (jnp.bfloat16, jnp.bfloat16),
}


def pair(jax_fn, jax_ops, torch_fn, torch_ops, rounds: int, calls: int) -> dict:
    """One form timed in watched rounds, each side making `calls` back-to-back calls per round (a
    lone call of a few ms after the rounds' settling pause measures waking thread pools and AMX
    units, not the kernel): seconds per call, median over clean rounds (all rounds if none is
    clean), and the clean-round torch/JAX ratio (None, with `note`, if none is clean)."""
    def jax_calls():
        for _ in range(calls):
            jax_fn(*jax_ops).block_until_ready()

    def torch_calls():
        for _ in range(calls):
            torch_fn(*torch_ops)

    timing = measure.timed_rounds({"jax": jax_calls, "torch": torch_calls}, rounds)
    ratio = measure.clean_ratio(timing, "torch", "jax")
    times = {name: (c["clean"] or c)["median_s"] / calls for name, c in timing["contenders"].items()}
    return dict(jax_s=times["jax"], torch_s=times["torch"], ratio=ratio["median"], note=ratio["note"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=6, help="back-to-back calls per side and round")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("NPROC", str(args.threads))  # XLA:CPU's pool, read when the backend starts
    if jax.default_backend() != "cpu":
        sys.exit(f"matmul_kernels: JAX's backend is {jax.default_backend()}; run with JAX_PLATFORMS=cpu")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    print(f"threads {args.threads} (XLA intra-op via NPROC={os.environ.get('NPROC', 'unset')}); GFLOP/s, torch/JAX")
    for m, k, n in SHAPES:
        a, b, g = (rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, n), (m, n)))
        for kind, (dtype, result) in KINDS.items():
            jax_ops = tuple(jnp.asarray(x, dtype) for x in (a, b, g))
            torch_ops = tuple(torch.from_numpy(x).to(torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32)
                              for x in (a, b, g))
            line = []
            for form, (jax_fn, torch_fn) in FORMS.items():
                jitted = xla_options.jit(lambda a, b, g, f=jax_fn, t=result: f(a, b, g, t))
                timed = pair(jitted, jax_ops, torch_fn, torch_ops, args.rounds, args.calls)
                gflop = 2 * m * k * n / 1e9
                rows.append(dict(shape=[m, k, n], kind=kind, form=form, jax_gflops=gflop / timed["jax_s"],
                                 torch_gflops=gflop / timed["torch_s"], ratio=timed["ratio"], note=timed["note"]))
                ratio = "contended" if timed["ratio"] is None else f"{timed['ratio']:.2f}x"
                line.append(f"{form} {gflop / timed['jax_s']:6.0f} vs {gflop / timed['torch_s']:6.0f} ({ratio})")
            print(f"{m}x{k}x{n} {kind:10s} " + " | ".join(line), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(threads=args.threads, rounds=args.rounds, calls=args.calls, jax=jax.__version__, torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
