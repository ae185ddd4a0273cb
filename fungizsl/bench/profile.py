"""Where a compiled step's time goes: a jax.profiler trace of a few steps, each executed XLA
operation (thunk) mapped back to the model code that produced it through the HLO metadata, and
summed into buckets (attention matmuls, softmax, layer norms, MLP, patch embedding, loss,
optimizer, layout copies, ...).

The XLA CPU runtime emits one trace event per thunk; on GPU the trace holds the kernels of the
same HLO instructions. Bucket shares, not absolute times, are what to read on a shared machine.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')

# (bucket, regex over "<instruction name> <op_name>"), first match wins.
BUCKETS = (
    ("layout copies/transposes", r"^(transpose|copy)[\w.]*\s+(?!.*(attn|mlp|norm|embed))"),
    ("patch embedding", r"patch_embedding|embeddings/projection|embeddings/dot_general"),
    ("attention q.k / a.v matmuls", r"attn/bh\w*,bh\w*->|attn/dot_product_attention|attn/.*dot_general(?!.*(query|key|value|out|qkv))"),
    ("attention softmax + mask + scale", r"attn/(reduce_max|reduce_sum|exp|sub|div|mul|select|softmax|max|stop_gradient|where|integer_pow|add_any|neg|convert)"),
    ("attention q/k/v/out projections", r"attn/(query|key|value|out|qkv)"),
    ("attention other (reshapes, heads transposes)", r"attn/"),
    ("MLP matmuls", r"mlp/(fc1|fc2|weights_in|weights_out)/"),
    ("MLP activation", r"mlp/"),
    ("layer norms", r"norm"),
    ("embeddings (tokens, positions, class)", r"embed|position|token"),
    ("loss + projections + normalise", r"projection|contrastive|loss|l2_normalize|log_softmax|logit_scale|one_hot|argmax"),
    ("model (other)", r"jvp\("),
    ("optimizer + metrics", r"jit\(train_step\)"),
)


def instruction_op_names(hlo_text: str) -> dict[str, str]:
    names = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            op = _OP_NAME.search(line)
            names[match.group(1)] = op.group(1) if op else ""
    return names


def bucket_of(name: str, op_name: str) -> str:
    key = f"{name} {op_name}"
    for bucket, pattern in BUCKETS:
        if re.search(pattern, key):
            return bucket
    return "other (constants, broadcasts, untagged)"


def trace_events(run, steps: int) -> list[dict]:
    """Complete ('X') events of `steps` calls of run() under jax.profiler."""
    folder = tempfile.mkdtemp(prefix="fungizsl_trace_")
    jax.profiler.start_trace(folder, create_perfetto_trace=True)
    try:
        for _ in range(steps):
            jax.block_until_ready(run())
    finally:
        jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise RuntimeError(f"jax.profiler wrote no perfetto trace under {folder}")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def profile_step(compiled, run, steps: int = 3, top: int = 12) -> dict:
    """Buckets (ms per step and share) and the `top` costliest HLO instructions of `compiled`."""
    op_names = instruction_op_names(compiled.as_text())
    per_bucket = collections.Counter()
    per_instruction = collections.Counter()
    for event in trace_events(run, steps):
        name = event["name"]
        if name not in op_names:  # runtime bookkeeping (executor, waits), python frames
            continue
        micros = event.get("dur", 0)
        per_bucket[bucket_of(name, op_names[name])] += micros
        per_instruction[name] += micros
    total = sum(per_bucket.values()) or 1
    return {
        "ops_ms_per_step": total / steps / 1e3,
        "buckets": [{"bucket": b, "ms_per_step": us / steps / 1e3, "share": us / total}
                    for b, us in per_bucket.most_common()],
        "top_instructions": [{"name": n, "op_name": op_names[n][-110:], "ms_per_step": us / steps / 1e3}
                             for n, us in per_instruction.most_common(top)],
    }


def format_profile(profile: dict) -> str:
    lines = [f"  sum of op times {profile['ops_ms_per_step']:.1f} ms/step (ops on several threads overlap)"]
    lines += [f"  {b['share']:6.1%} {b['ms_per_step']:9.2f} ms  {b['bucket']}" for b in profile["buckets"]]
    lines.append("  costliest instructions:")
    lines += [f"    {t['ms_per_step']:9.2f} ms  {t['name']:<28} {t['op_name']}" for t in profile["top_instructions"]]
    return "\n".join(lines)
